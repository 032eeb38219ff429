"""Storage of rolled-up buckets. `SqliteStore` is the embedded default."""

from statsd_gateway.store.sqlite import SqliteStore, StoreError
from statsd_gateway.store.sqlite_reads import SeriesInfo

__all__ = ["SeriesInfo", "SqliteStore", "StoreError"]
