"""The statsd_exporter-compatible scrape: state.py keeps what it shows up to date from every
flush, families.py groups it into Prometheus families, exposition.py renders them as text
(0.0.4 or OpenMetrics) and protobuf.py as delimited MetricFamily messages (with native
histograms, native_histogram.py; wire.py the wire format), app.py serves it at GET /metrics
on `exporter.listen`."""
