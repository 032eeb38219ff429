"""The HTTP API: create_app() builds the aiohttp application."""
