"""The /ui page: a self-contained chart page served from the package's own files.

The page holds no data, so its routes are public: it asks the person for an API key and calls the
JSON API with it from the browser. Every asset is package data (page_assets/), read once when the
app is built; nothing is fetched from another host, and the Content-Security-Policy says so to the
browser too. The HTML names each asset with a hash of its content (`ui/page.js?v=<hash>`), so the
assets can be cached for a year while the HTML is revalidated on every load (its ETag).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from statsd_gateway.errors import NotFound

ASSETS = ("page.js", "page.css")
_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
# connect-src 'self': the page may talk to this daemon only; no inline script or style.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _asset(name: str, body: bytes) -> Asset:
    suffix = name[name.rindex(".") :]
    return Asset(body, _CONTENT_TYPES[suffix], hashlib.sha256(body).hexdigest()[:16])


@functools.cache
def load_assets() -> dict[str, Asset]:
    """The page and its assets from the package, the HTML pointing at each by its hash."""
    folder = resources.files("statsd_gateway.api").joinpath("page_assets")
    assets = {name: _asset(name, folder.joinpath(name).read_bytes()) for name in ASSETS}
    html = folder.joinpath("index.html").read_text("utf-8")
    for name, asset in assets.items():
        # Relative, as the page's API calls are: a proxy may serve the daemon under a prefix.
        html = html.replace("{{" + name + "}}", f"ui/{name}?v={asset.etag}")
    assets["index.html"] = _asset("index.html", html.encode())
    return assets


def _serve(request: web.Request, asset: Asset, cache: str) -> web.StreamResponse:
    headers = {**_SECURITY_HEADERS, "Cache-Control": cache, "ETag": f'"{asset.etag}"'}
    if request.headers.get("If-None-Match") == f'"{asset.etag}"':
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers
    )


async def page(request: web.Request) -> web.StreamResponse:
    """GET /ui. no-cache: revalidated at each load, so an upgraded daemon's page shows at once."""
    return _serve(request, load_assets()["index.html"], "no-cache")


async def asset(request: web.Request) -> web.StreamResponse:
    """GET /ui/{asset}: cached for a year when asked for by the hash the page names."""
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise NotFound(f"no asset named {name!r} under /ui/")
    found = load_assets()[name]
    if request.query.get("v") == found.etag:
        return _serve(request, found, "public, max-age=31536000, immutable")
    return _serve(request, found, "no-cache")


async def slash(request: web.Request) -> web.StreamResponse:
    """GET /ui/: the page is /ui."""
    raise web.HTTPPermanentRedirect("/ui")
