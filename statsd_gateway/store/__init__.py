"""Storage of rolled-up buckets: the Store contract (base.py) and its backends. `SqliteStore` is
the embedded default."""

from statsd_gateway.store.base import SeriesInfo, Store
from statsd_gateway.store.sqlite import SqliteStore, StoreError

__all__ = ["SeriesInfo", "SqliteStore", "Store", "StoreError"]
