"""The statsd_exporter-compatible scrape: state.py keeps what it shows up to date from every
flush, exposition.py renders it (text format 0.0.4 or OpenMetrics), app.py serves it at
GET /metrics on `exporter.listen`."""
