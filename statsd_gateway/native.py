"""The native ingest core (statsd_gateway/native/, built by `pip install -e .`), when it is built
and not turned off, and what joins it to the Python pipeline.

Contract:
- `native_module()` is the compiled module, or None: not built, or STATSD_GATEWAY_PURE_PYTHON=1
  (the pure-Python parser and aggregator, protocol.py and aggregator.py, stay the reference and
  the fallback). `implementation()` says which one runs; the daemon logs it at start.
- `NativeLive` owns the native cores (one per UDP reader thread, one per tenant for what the
  event loop feeds: TCP and the Unix datagram socket) and is, to the aggregator, a live source
  (aggregator.LiveSource): it hands over their live intervals at swap, copies a metric's
  entries for a query, says which series it holds and drops deleted ones.
- A core enters Python only through `NativeLive`'s resolver, the first time it sees a
  (type, name section, tag text): the name is cleaned and the series admitted exactly as the
  Python path does (StatsdParser.key_or_reason, with the mapping rules if any, and
  SeriesRegistry.admit); the core caches the answer until a series is forgotten, the limits
  change or the mapping rules are reloaded (`forget()`).
- HTTP points (`resolve_points()` then `apply_points()`): a batch's typed points are judged in
  C against a cache of the points' keys (type, raw name, tags as sent) already admitted, and
  handed one by one to a Python fallback (the reference's checks) for anything else: a new
  key, a set, an ISO timestamp, a value or time out of range; the fallback caches what it
  admits. What was accepted is packed, to be added to the live interval once it is logged.
- A core reading StatsD text (`new_core(relayed=True)`) hands every datagram to `relay` too.
- The cores count by transport and reason; `sync_counts()` adds what they counted since the
  last call to the Telemetry counters (after every fed batch, and when a reader thread says it
  parsed one).
"""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from statsd_gateway import accumulator, protocol, sketch
from statsd_gateway.accumulator import NativeEntry
from statsd_gateway.aggregator import TIMESTAMP_IN_FUTURE, TIMESTAMP_TOO_OLD, IntervalAggregator
from statsd_gateway.mapping import DROPPED_BY_MAPPING, INVALID_MAPPED_NAME
from statsd_gateway.model import FUTURE_MAX_SECONDS, VALUE_ABS_MAX, MetricType, Sample
from statsd_gateway.protocol import StatsdParser
from statsd_gateway.series_registry import CARDINALITY_LIMIT, TYPE_CONFLICT
from statsd_gateway.snapshot import HeldInterval
from statsd_gateway.telemetry import Telemetry

PURE_PYTHON_ENV = "STATSD_GATEWAY_PURE_PYTHON"
INTERNAL_ERROR = "internal_error"

# The core's reason codes, in sg_core.h's order (code 0 is "no reject").
REASONS: tuple[str, ...] = (
    "",
    protocol.MALFORMED_LINE,
    protocol.EMPTY_NAME,
    protocol.NAME_TOO_LONG,
    protocol.NAME_WITHOUT_ALNUM,
    protocol.EMPTY_VALUE,
    protocol.INVALID_VALUE,
    protocol.NON_FINITE_VALUE,
    protocol.UNKNOWN_TYPE,
    protocol.INVALID_SAMPLE_RATE,
    protocol.INVALID_TIMESTAMP,
    protocol.INVALID_TAGS,
    protocol.INVALID_UTF8,
    protocol.LINE_TOO_LONG,
    protocol.MIXED_TAG_STYLES,
    TYPE_CONFLICT,
    CARDINALITY_LIMIT,
    TIMESTAMP_TOO_OLD,
    TIMESTAMP_IN_FUTURE,
    INTERNAL_ERROR,
    DROPPED_BY_MAPPING,
    INVALID_MAPPED_NAME,
)
_CODES = {reason: code for code, reason in enumerate(REASONS) if reason}
# The core's type codes are MetricType's members in order.
_TYPES = tuple(MetricType)
_GAUGE = MetricType.GAUGE
TRANSPORTS = ("udp", "tcp", "unixgram")
# The most point keys cached per tenant (past it the cache starts again: a flood of new series
# costs the fallback, never memory).
POINT_KEYS_MAX = 100_000
# The resolver's answer: (series id, current gauge value, its time), (0, …) for a valid name not
# admitted yet, or (-reason code, …).
Resolved = tuple[int, float, float]

try:
    from statsd_gateway import _native as _compiled  # type: ignore[attr-defined]
except ImportError as e:  # not built: the pure-Python path runs
    _compiled = None
    _import_error = str(e)
else:
    _import_error = ""
    assert len(REASONS) == _compiled.REASONS, "sg_core.h and native.REASONS disagree"
    # The values the core buffers (array('d'), only ever made by it) are binned by it too, off
    # the loop, with exactly the mapping bin_flat uses (sg_bins.h).
    _compiled.set_mapping(*sketch.KEY_CONSTANTS)
    accumulator.native_binning = _compiled.bin_values


# Every core with a reader thread, stopped at exit before the interpreter frees what those
# threads use (a daemon stops them itself; this is for a program that never called stop()).
# A relay's sender thread uses no Python: it needs no such stop.
_readers: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _stop_readers() -> None:
    for core in list(_readers):
        core.stop()


def native_module() -> ModuleType | None:
    """The compiled core, or None where it is not built or turned off."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    module: ModuleType | None = _compiled
    return module


def implementation() -> str:
    """Which ingest core runs, for the log at start."""
    if native_module() is not None:
        return "native (compiled core)"
    if _compiled is not None:
        return f"pure Python ({PURE_PYTHON_ENV} is set)"
    return f"pure Python (the native core is not built: {_import_error})"


def point_key(point: Any) -> tuple[Any, ...]:
    """The cache key resolve_points() builds for a MetricPoint: (type code, name, k1, v1, …),
    the tags in the order they came."""
    key: list[Any] = [_TYPE_CODES[point.type], point.name]
    for item in point.tags.items():
        key.extend(item)
    return tuple(key)


# A point the fallback accepted: (series id, type code, value, set member, rate, timestamp).
PackedPoint = tuple[int, int, float, str | None, float, float | None]


def packed_point(sid: int, sample: Sample) -> PackedPoint:
    """An accepted sample as the fallback of resolve_points() answers it."""
    if sample.type is MetricType.SET:
        return sid, _TYPE_CODES[sample.type], 0.0, str(sample.value), 1.0, sample.timestamp
    value = float(sample.value)
    return sid, _TYPE_CODES[sample.type], value, None, sample.sample_rate, sample.timestamp


_TYPE_CODES = {t: i for i, t in enumerate(_TYPES)}


class ResolvedPoints:
    """What resolve_points() accepted of a batch, packed, for apply_points()."""

    __slots__ = ("gauges", "members", "packed")

    def __init__(self, packed: bytes, members: list[str], gauges: set[int]) -> None:
        self.packed, self.members, self.gauges = packed, members, gauges


class NativeLive:
    """The native cores of one daemon, joined to its aggregator (see the module's contract)."""

    def __init__(
        self,
        module: ModuleType,
        aggregator: IntervalAggregator,
        parser: StatsdParser,
        telemetry: Telemetry,
        *,
        gauge_delta: bool,
        clock: Callable[[], float] | None,
        point_type: type | None = None,
    ) -> None:
        self._module = module
        self.aggregator = aggregator
        self.parser = parser
        self.telemetry = telemetry
        self.gauge_delta = gauge_delta
        self.clock = clock  # None: the cores read the system's wall clock themselves
        self.gauges = module.Gauges()
        self.cores: list[Any] = []
        self._fed: dict[str, Any] = {}  # tenant -> the core the event loop feeds
        self._seen: dict[int, list[tuple[int, ...]]] = {}  # id(core) -> counts last synced
        self._sync_pending: set[int] = set()
        aggregator.sources.append(self)
        aggregator.sink = self
        aggregator.registry.on_forget.append(self._forgotten)
        module.set_types(_TYPES)
        if point_type is not None:  # the HTTP points' class: its fields are read from its slots
            module.set_point_type(point_type)
        self._points: Any = None  # the core HTTP points go into (no resolver: admitted already)
        # The native Relay every core reading StatsD text hands its datagrams, or None.
        self.relay: Any = None
        self._point_keys: dict[str, dict[tuple[Any, ...], int]] = {}  # tenant -> key -> sid

    def new_core(self, tenant: str, *, relayed: bool = False) -> Any:
        """A core whose new series are admitted for `tenant`; `relayed`: it reads StatsD text,
        which goes to the relay too."""
        registry, aggregator, parser = self.registry, self.aggregator, self.parser

        def resolve(
            type_code: int, head: bytes, tags: bytes, admit: int
        ) -> tuple[int, float, float]:
            mtype = _TYPES[type_code]
            key = parser.key_or_reason(head.decode(), tags.decode(), mtype)
            if isinstance(key, str):
                return -_CODES[key], 0.0, 0.0
            if not admit:
                return 0, 0.0, 0.0
            name, tag_set = key
            sid = registry.admit(tenant, name, tag_set, mtype, aggregator.max_series_per_tenant)
            if isinstance(sid, str):
                return -_CODES[sid], 0.0, 0.0
            if mtype is MetricType.GAUGE:
                return (sid, *aggregator.current_gauge((tenant, name, tag_set)))
            return sid, 0.0, -math.inf

        core = self._module.Core(self.gauges, resolve, **self._settings())
        if relayed and self.relay is not None:
            core.set_relay(self.relay)
        self.cores.append(core)
        _readers.add(core)
        self._seen[id(core)] = [(0,) * 7 + (0,) * len(REASONS)] * len(TRANSPORTS)
        return core

    @property
    def registry(self) -> Any:
        return self.aggregator.registry

    def _settings(self) -> dict[str, Any]:
        agg = self.aggregator
        return {
            "gauge_delta": self.gauge_delta,
            "interval": agg.interval,
            "max_backdate": agg.max_backdate,
            "future_max": FUTURE_MAX_SECONDS,
            "clock": self.clock,
        }

    def feed(self, tenant: str, data: bytes, transport: str) -> None:
        """StatsD text received on the event loop (TCP, the Unix datagram socket)."""
        core = self._fed.get(tenant)
        if core is None:
            core = self._fed[tenant] = self.new_core(tenant, relayed=True)
        core.feed(data, TRANSPORTS.index(transport), self.aggregator.clock())
        self._sync_soon(core)

    def _sync_soon(self, core: Any) -> None:
        """sync_counts once per loop iteration, however many batches it fed (a sync costs
        about what parsing a hundred lines does)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, a benchmark): at once
            self.sync_counts(core)
            return
        if id(core) not in self._sync_pending:
            self._sync_pending.add(id(core))
            loop.call_soon(self._sync_now, core)

    def _sync_now(self, core: Any) -> None:
        self._sync_pending.discard(id(core))
        self.sync_counts(core)

    def forget(self) -> None:
        """Every core forgets its cached answers (the limits or the mapping rules they were
        judged by changed). Safe while reader threads run: each core's forget takes its mutex,
        which a reader holds for a whole batch, resolver calls included; an answer a reader
        resolved by the old rules before is dropped with the rest."""
        for core in self.cores:
            core.forget()
        self._point_keys.clear()

    # ---- HTTP points

    def point_keys(self, tenant: str) -> dict[tuple[Any, ...], int]:
        """The tenant's cache of admitted point keys, for the fallback to add to (point_key)."""
        keys = self._point_keys.get(tenant)
        if keys is None or len(keys) >= POINT_KEYS_MAX:
            keys = self._point_keys[tenant] = {}
        return keys

    def resolve_points(
        self,
        tenant: str,
        points: list[Any],
        now: float,
        judge: Callable[[int, Any], tuple[int, Sample] | None],
    ) -> ResolvedPoints:
        """Judges a batch's MetricPoints received at `now` (see the module's contract);
        `judge(i, point)` answers for a point the cache does not: the series id and sample it
        accepted (cached here under the point's key), or None for a refusal it recorded."""
        keys = self.point_keys(tenant)

        def fallback(i: int, point: Any) -> PackedPoint | None:
            answer = judge(i, point)
            if answer is None:
                return None
            sid, sample = answer
            # A set's point always takes this path; a point msgspec did not type (a dict of a
            # batch that failed as a whole) is not one C reads.
            if sample.type is not MetricType.SET and not isinstance(point, dict):
                keys[point_key(point)] = sid
            return packed_point(sid, sample)

        packed, members, gauges = self._module.resolve_points(
            points,
            now,
            keys,
            fallback,
            self.aggregator.max_backdate,
            FUTURE_MAX_SECONDS,
            VALUE_ABS_MAX,
        )
        return ResolvedPoints(packed, members, gauges)

    def apply_points(self, resolved: ResolvedPoints, now: float) -> None:
        """Adds what resolve_points() accepted to the live interval, as received at `now`."""
        if self._points is None:
            self._points = self.new_core("")
        if resolved.gauges:  # the current value the Python side knows, where the cores have none
            key_of, current = self.registry.key_of, self.aggregator.current_gauge
            for sid in resolved.gauges:
                self.gauges.seed(sid, *current(key_of(sid)))
        self._points.apply_points(resolved.packed, resolved.members, now)

    def _forgotten(self, sids: list[int]) -> None:
        self.forget()
        self.gauges.forget(sids)

    def sync_counts(self, core: Any) -> None:
        """Adds what `core` counted since the last call to the Telemetry counters."""
        t = self.telemetry
        seen = self._seen[id(core)]
        now = core.counts()
        for i, transport in enumerate(TRANSPORTS):
            new = (*now[i][:7], *now[i][7])
            old = seen[i]
            if new == old:
                continue
            packets, nbytes, lines, accepted, events, checks, unknown = (
                a - b for a, b in zip(new[:7], old[:7], strict=True)
            )
            t.packets[transport] += packets
            t.bytes[transport] += nbytes
            t.lines[transport] += lines
            t.accepted[transport] += accepted
            if events:
                t.ignored["event"] += events
            if checks:
                t.ignored["service_check"] += checks
            if unknown:
                t.ignored["unknown_section"] += unknown
            for code in range(1, len(REASONS)):
                n = new[7 + code] - old[7 + code]
                if n:
                    t.rejects[(transport, REASONS[code])] += n
            seen[i] = new

    # ---- aggregator.LiveSink

    def add(self, tenant: str, samples: list[Sample], sids: list[int], now: float) -> None:
        if self._points is None:
            self._points = self.new_core("")
        gauges = {sid for s, sid in zip(samples, sids, strict=True) if s.type is _GAUGE}
        if gauges:  # the current value the Python side knows, where the cores have none yet
            key_of, current = self.registry.key_of, self.aggregator.current_gauge
            for sid in gauges:
                self.gauges.seed(sid, *current(key_of(sid)))
        self._points.add(samples, sids, now)

    # ---- aggregator.LiveSource

    def take(self) -> tuple[list[HeldInterval], list[tuple[int, float, float]]]:
        return [core.swap_interval() for core in self.cores], self.gauges.take_changed()

    def copy(self, sids: list[int]) -> list[NativeEntry]:
        entries: list[NativeEntry] = []
        for core in self.cores:
            entries.extend(core.copy(sids))
        return entries

    def sids(self) -> set[int]:
        out: set[int] = set()
        for core in self.cores:
            out |= core.sids()
        return out

    def discard(self, sids: Iterable[int]) -> int:
        wanted = list(sids)
        self.gauges.forget(wanted)
        return sum(core.discard(wanted) for core in self.cores)

    def memory(self) -> tuple[int, int]:
        entries = values = 0
        for core in self.cores:
            n, v, _ = core.memory()
            entries += n
            values += v
        return entries, values

    @contextmanager
    def held(self) -> Iterator[None]:
        held: list[Any] = []
        try:
            for core in self.cores:
                core.hold()
                held.append(core)
            yield
        finally:
            for core in reversed(held):
                core.release()
