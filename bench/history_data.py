"""The history bench/history.py loads into each daemon: which points, the batch bodies that carry
them in each daemon's own write format, and the answers they must give.

One metric, `series` series tagged `host:h0000`…, one point per series every 10 s over `hours`
whole hours ending at least an hour before now (every bucket is history), oldest first. Values
are integers 1..997 as in bench/backfill.py, so every sum is exact in float64 on both sides, but
drawn from a hash of (point, series) instead of backfill's arithmetic progression: one series'
values there step by a constant 31, which a delta-of-delta encoding stores in almost nothing
(VictoriaMetrics: 0.06 bytes a value), flattering the disk figure of any such store.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

STEP = 10  # seconds between one series' points
MINUTE = 60
Answer = dict[int, float]  # bucket start (unix seconds) -> value
Body = tuple[int, bytes]  # (points in it, request body)


@dataclass(frozen=True)
class History:
    """The points of one run, and what any correct daemon answers about them."""

    series: int
    hours: int
    kind: str  # "timer" or "counter"
    start: int  # unix seconds, on an hour

    @classmethod
    def ending_an_hour_ago(cls, now: float, series: int, hours: int, kind: str) -> History:
        return cls(series, hours, kind, (int(now) // 3600 - 1 - hours) * 3600)

    @property
    def name(self) -> str:
        return "bench.history.latency" if self.kind == "timer" else "bench.history.requests"

    @property
    def per_series(self) -> int:
        return self.hours * 3600 // STEP

    @property
    def total(self) -> int:
        return self.per_series * self.series

    @property
    def end(self) -> int:
        return self.start + self.hours * 3600

    def host(self, s: int) -> str:
        return f"h{s:04d}"

    @functools.cached_property
    def values(self) -> npt.NDArray[np.int64]:
        """values[k, s]: series s's k-th point."""
        k = np.arange(self.per_series, dtype=np.uint64)[:, None]
        return value_of(k, np.arange(self.series, dtype=np.uint64)[None, :])

    def minute_sums(self, s: int | None) -> Answer:
        """Per minute, the sum of every series' points (s None) or of series s's."""
        v = self.values if s is None else self.values[:, s : s + 1]
        sums = v.reshape(-1, MINUTE // STEP, v.shape[1]).sum(axis=(1, 2))
        return {self.start + MINUTE * j: float(x) for j, x in enumerate(sums.tolist())}

    def quantile(self, q: float, since: int, until: int, window: int | None) -> Answer:
        """The exact lower-rank q-quantile of every series' points per window (or over
        [since, until) when window is None), the true value both daemons estimate."""
        width = window or until - since
        out: Answer = {}
        for lo in range(since, until, width):
            rows = self.values[(lo - self.start) // STEP : (lo + width - self.start) // STEP]
            out[lo] = float(np.quantile(rows, q, method="lower"))
        return out


def value_of(k: npt.NDArray[np.uint64], s: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """The k-th point of series s (broadcast): 1..997 from the bits of a 64-bit mix of (k, s)
    (splitmix64's finaliser; uint64 arithmetic wraps, as the hash means it to)."""
    x = k * np.uint64(0x9E3779B97F4A7C15) + s * np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(31)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(29)
    return (x % np.uint64(997)).astype(np.int64) + 1


def gateway_bodies(h: History, batch: int) -> Iterator[Body]:
    """`POST /v1/metrics/batch` bodies: {"points": [MetricPoint…]}."""
    mtype = "timing" if h.kind == "timer" else "counter"
    heads = [
        f'{{"name":"{h.name}","type":"{mtype}","tags":{{"host":"{h.host(s)}"}},"timestamp":'
        for s in range(h.series)
    ]
    yield from _bodies(
        h,
        batch,
        heads,
        lambda ts: (f'{ts},"value":', "}"),
        lambda parts: ('{"points":[' + ",".join(parts) + "]}").encode(),
    )


def influx_metric(h: History) -> str:
    """The name VictoriaMetrics gives the points of influx_bodies: measurement_field."""
    return h.name.replace(".", "_")


def influx_bodies(h: History, batch: int) -> Iterator[Body]:
    """InfluxDB line protocol bodies (`measurement,host=h0000 field=value ns`), one line a point,
    the measurement and field being the metric's name split at its last dot."""
    measurement, field = h.name.rsplit(".", 1)
    heads = [f"{measurement.replace('.', '_')},host={h.host(s)} {field}=" for s in range(h.series)]
    yield from _bodies(h, batch, heads, lambda ts: ("", f" {ts}000000000"), _lines)


def _lines(parts: list[str]) -> bytes:
    return "\n".join(parts).encode()


def _bodies(
    h: History,
    batch: int,
    heads: list[str],
    stamp: Callable[[int], tuple[str, str]],
    join: Callable[[list[str]], bytes],
) -> Iterator[Body]:
    """Each point is heads[series] + stamp's middle + value + stamp's tail. Built from strings
    made once (per series, per timestamp, per value): the load generator shares one core, and it
    must not be what limits the faster daemon."""
    text = [str(v) for v in range(998)]
    series = np.arange(h.series, dtype=np.uint64)
    parts: list[str] = []
    for k in range(h.per_series):
        middle, tail = stamp(h.start + k * STEP)
        values = value_of(np.full(1, k, dtype=np.uint64), series).tolist()
        parts.extend(
            [head + middle + text[v] + tail for head, v in zip(heads, values, strict=True)]
        )
        while len(parts) >= batch:
            yield batch, join(parts[:batch])
            del parts[:batch]
    if parts:
        yield len(parts), join(parts)
