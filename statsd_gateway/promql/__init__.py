"""PromQL over the gateway's data: the expression parsed by promql-parser (syntax.py), names
escaped as statsd_exporter escapes them (names.py), selectors read on a grid of cells
(selection.py, cells.py), evaluated at every step at once (evaluate.py, with aggregate.py,
binary.py, histograms.py for the operators and histogram functions), run off the loop within
a deadline (service.py). The HTTP side is api/prometheus.py. What each construct means on
StatsD data: docs/PROMETHEUS.md.
"""
