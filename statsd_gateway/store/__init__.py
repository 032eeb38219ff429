"""Storage of rolled-up buckets. `SqliteStore` is the embedded default."""

from statsd_gateway.store.sqlite import SeriesInfo, SqliteStore, StoreError

__all__ = ["SeriesInfo", "SqliteStore", "StoreError"]
