"""statsd-gateway: a StatsD-compatible metrics daemon.

Data flows protocol → ingest → aggregator → flusher → store → query → api; gateway.py builds them.
"""

__version__ = "0.1.0"
