"""The composition root: builds every stage from a Config; start() binds, stop() drains.

stop() order: stop listening on every transport (datagram queues and what TCP connections still
hold drained into the aggregator, and into the relay), send what the relay holds, stop HTTP,
final flush of everything in memory, close the store. Nothing received before stop() is lost.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import Callable
from types import ModuleType

from aiohttp import web

from statsd_gateway import native
from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.api.app import create_app
from statsd_gateway.api.auth import KeyRing
from statsd_gateway.api.openapi_prometheus import PREFIX as PROMETHEUS_PREFIX
from statsd_gateway.api.prometheus import prometheus_api
from statsd_gateway.api.shapes import MetricPoint
from statsd_gateway.backpressure import MemoryBound
from statsd_gateway.catalog import MetricCatalog
from statsd_gateway.config import Config, parse_listen, settings_needing_restart
from statsd_gateway.errors import ConfigError
from statsd_gateway.exporter.app import exporter_app
from statsd_gateway.exporter.state import ScrapeState
from statsd_gateway.flusher import Flusher
from statsd_gateway.idempotency import IdempotencyLedger
from statsd_gateway.ingest import Ingest
from statsd_gateway.listeners import (
    format_address,
    listening,
    start_http,
    start_tcp,
    start_udp,
    start_unix,
)
from statsd_gateway.mapping import Mapper, load_mapper
from statsd_gateway.mapping_file import SeriesOptions
from statsd_gateway.model import SeriesKey
from statsd_gateway.native_relay import NativeRelay
from statsd_gateway.native_udp import NativeUdpListener
from statsd_gateway.promql.service import PromqlService
from statsd_gateway.protocol import StatsdParser
from statsd_gateway.query import QueryEngine
from statsd_gateway.relay import PythonRelay, Relay
from statsd_gateway.replay import LogReplay
from statsd_gateway.series_registry import SeriesRegistry
from statsd_gateway.store import SqliteStore, Store
from statsd_gateway.store.postgresql import PostgresStore
from statsd_gateway.store.retention import RetentionJob
from statsd_gateway.store.rollup import TierRollup
from statsd_gateway.store.sealing import SealJob
from statsd_gateway.tcp import TcpListener
from statsd_gateway.telemetry import Telemetry
from statsd_gateway.tls import ServerCertificate
from statsd_gateway.udp import UdpListener
from statsd_gateway.unixgram import UnixgramListener
from statsd_gateway.wal import WriteAheadLog

log = logging.getLogger(__name__)
# Bounds of each step of stop() that waits on a disk, so that a stop ends well within the
# service manager's stop timeout (systemd/statsd-gateway.service: TimeoutStopSec=60) whatever
# state the store is in. What a step could not finish is logged.
FINAL_FLUSH_TIMEOUT = 15.0
STORE_CLOSE_TIMEOUT = 5.0


def tune_gc() -> None:
    """The daemon holds millions of long-lived objects (accumulators, rollup rows) and allocates
    hundreds of thousands per flush; with CPython's default thresholds the cycle collector walks
    them over and over (measured: a 10k-series flush takes 156 ms with the defaults, 102 ms with
    these). Almost nothing here forms cycles, so collect young objects less often."""
    gc.set_threshold(100_000, 50, 100)


def _store_of(config: Config, resolutions: tuple[float, ...], clock: Callable[[], float]) -> Store:
    """The backend `storage.backend` names."""
    storage = config.storage
    if storage.backend == "postgresql":
        pg = storage.postgresql
        return PostgresStore(
            pg.dsn,
            source=pg.source,
            resolutions=resolutions,
            read_timeout=config.query.timeout,
            statement_timeout=pg.statement_timeout,
            connect_timeout=pg.connect_timeout,
            pool_size=pg.pool_size,
            password_file=pg.password_file,
            clock=clock,
        )
    return SqliteStore(
        storage.path, resolutions=resolutions, read_timeout=config.query.timeout, clock=clock
    )


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        flush_on_ticks: bool = True,
        store: Store | None = None,
    ) -> None:
        """`store`: a backend to use instead of the one the config names (tests)."""
        self.config = config
        self.clock = clock
        # Tests that own the clock turn the tick loop off and call flusher.flush() themselves.
        self.flush_on_ticks = flush_on_ticks
        self.telemetry = Telemetry()
        self.resolutions = tuple(t.resolution for t in config.storage.tiers)
        self.store: Store = store or _store_of(config, self.resolutions, clock)
        self.retention: RetentionJob | None = None
        self.sealing: SealJob | None = None
        self._pipeline = False  # aggregator, flusher and the rest are built
        self.promql: PromqlService | None = None
        self.scrape_state: ScrapeState | None = None
        self._exporter_runner: web.AppRunner | None = None
        self.exporter_address: tuple[str, int] | None = None
        self.registry = SeriesRegistry()
        self.max_body_bytes = config.http.max_body_bytes
        self.max_batch_points = config.http.max_batch_points
        self.max_query_points = config.query.max_points
        self.tiers = tuple((float(t.resolution), float(t.retention)) for t in config.storage.tiers)
        self.keyring = KeyRing(())
        self.udp: UdpListener | NativeUdpListener | None = None
        self.udp_address: tuple[str, int] | None = None
        self.tcp: TcpListener | None = None
        self.tcp_address: tuple[str, int] | None = None
        self.unix: UnixgramListener | None = None
        self.unix_path: str | None = None
        self.relay: Relay | None = None
        self.http_address: tuple[str, int] | None = None
        self.tls: ServerCertificate | None = None
        self._runner: web.AppRunner | None = None
        self._store_open = False
        self.wal: WriteAheadLog | None = None
        self.started_at = 0.0
        self._learned_at = -math.inf  # when the store was last asked for others' series

    async def _learn_series_of_others(self) -> None:
        """Series other gateways put in a shared store: listed and answered here too (from
        this gateway's next flush on; one of another type than this gateway's is left out);
        series they deleted: their open rollups dropped, forgotten unless points of them
        arrived here since."""
        now = self.clock()
        if now - self._learned_at < self.config.aggregation.flush_interval:
            return  # once per interval, not once per snapshot of a backlog
        others = await self.store.series_of_others()
        self._learned_at = now  # only once read: a failure asks again at the next write
        for info in others.added:
            self.registry.learn((info.tenant, info.name, info.tags), info.type)
        if others.deleted:  # deleted through another gateway: forgotten here too
            await self.flusher.discard_rollups(set(others.deleted))
            self._forget_series(others.deleted)
            # Off the scrape even with points here since: what it showed predates the delete
            # (the snapshot being written, still in memory, is added again after this).
            self._unscrape(set(others.deleted))

    def now(self) -> float:
        return self.clock()

    async def start(self) -> None:
        cfg = self.config
        self.started_at = self.clock()
        parser = StatsdParser(gauge_sign=cfg.statsd.gauge_sign, sanitise=cfg.statsd.name_sanitising)
        self.parser = parser
        self._use_mapper(load_mapper(cfg.statsd.mapping_file, parser.sanitise))
        self._setup_keys()
        stored = await self.store.open()
        for info in stored.series:
            self.registry.seed(info.id, (info.tenant, info.name, info.tags), info.type)
        self._store_open = True
        flushed_seq = stored.flushed_seq
        wal = WriteAheadLog(cfg.storage.wal_directory) if cfg.storage.wal else None
        replayed = await asyncio.to_thread(wal.replay, flushed_seq) if wal else []
        self.telemetry.wal_replay_dropped_bytes += wal.dropped_bytes if wal else 0
        # Replayed points go into the first new snapshot; its seq must be above every segment's.
        first_seq = max([flushed_seq, *(seq for seq, _, _ in replayed)]) + 1
        self.aggregator = IntervalAggregator(
            interval=cfg.aggregation.flush_interval,
            clock=self.clock,
            registry=self.registry,
            max_series_per_tenant=cfg.aggregation.max_series_per_tenant,
            # Points may be back-dated as far as the finest tier keeps (DESIGN.md §2).
            max_backdate=cfg.storage.tiers[0].retention,
            first_seq=first_seq,
        )
        self.ingest = Ingest(self.aggregator, self.telemetry, parser, wal)
        log.info("ingest core: %s", native.implementation())
        module = native.native_module()
        if module is not None:
            self.ingest.native = native.NativeLive(
                module,
                self.aggregator,
                parser,
                self.telemetry,
                gauge_delta=cfg.statsd.gauge_sign == "delta",
                # The system's clock is read by the core itself, without the GIL.
                clock=None if self.clock is time.time else self.clock,
                point_type=MetricPoint,
            )
        self.aggregator.restore_gauges(stored.gauges)
        self.idempotency = IdempotencyLedger(
            self.store, lambda: self.aggregator.next_seq, self.clock
        )
        LogReplay(self.ingest, self.idempotency, self.telemetry).replay(replayed, first_seq)
        if wal is not None:
            wal.start()
        self.wal = wal
        self.flusher = Flusher(
            self.aggregator,
            self.store,
            self.telemetry,
            clock=self.clock,
            ledger=self.idempotency,
            wal=wal,
            max_pending_rows=cfg.aggregation.max_pending_rows,
            rollup=TierRollup(self.resolutions, stored.complete_until),
            holds=self.ingest.holds,
        )
        await self.flusher.rebuild_rollups()
        self.ingest.bound = MemoryBound(
            self.aggregator, self.flusher, self.telemetry, limit=cfg.storage.backfill_memory
        )
        self.retention = RetentionJob(
            self.store,
            cfg.storage.tiers,
            self.telemetry,
            clock=self.clock,
            interval=cfg.storage.retention_check_interval,
            forget_series=self._forget_stale,
        )
        self.sealing = SealJob(self.store, self.telemetry, interval=cfg.aggregation.flush_interval)
        self._pipeline = True
        self.query_engine = QueryEngine(
            self.store, self.aggregator, max_sketches=cfg.query.max_sketches
        )
        self.catalog = MetricCatalog(
            self.registry, self.aggregator, self.store, self.flusher, on_deleted=self._unscrape
        )
        self.flusher.before_write = self._learn_series_of_others
        self.promql = PromqlService(self.query_engine, self.tiers, timeout=cfg.query.timeout)
        if cfg.exporter.enabled:
            self.scrape_state = ScrapeState(
                cfg.exporter.tenant, self.clock, options_of=self._scrape_options
            )
            self.flusher.on_written = self.scrape_state.add
        self.telemetry.pending_flushes = lambda: len(self.aggregator.pending)
        self.telemetry.memory_held_bytes = self.aggregator.memory_bytes
        self.telemetry.series_count = self.registry.series_count

        self._start_relay(module)
        if cfg.udp.enabled:
            self.udp, self.udp_address = await start_udp(cfg.udp, self.ingest, self.telemetry)
        await self._start_stream_transports()
        self.telemetry.kernel_drops = self._kernel_drops

        await self._start_http()
        await self._start_exporter()
        if self.flush_on_ticks:
            self.flusher.start()
            self.retention.start()
            self.sealing.start()

    def _scrape_options(self, key: SeriesKey) -> SeriesOptions | None:
        """The mapping options the scrape shows a series by: its rule's, else the mapping
        file's defaults (None without a file)."""
        sid = self.registry.id_of(key)
        got = None if sid is None else self.registry.options_of(sid)
        mapper = self.parser.mapper
        return got if got is not None or mapper is None else mapper.rules.file.defaults

    async def _start_exporter(self) -> None:
        cfg = self.config.exporter
        if self.scrape_state is None:
            return
        self._exporter_runner = web.AppRunner(
            exporter_app(self.scrape_state, self.telemetry, openmetrics_allowed=cfg.openmetrics),
            access_log=None,
            handle_signals=False,
        )
        await self._exporter_runner.setup()
        host, port = parse_listen(cfg.listen)
        site = web.TCPSite(self._exporter_runner, host, port)
        with listening("exporter", "exporter.listen", cfg.listen):
            await site.start()
        bound = self._exporter_runner.addresses[0]
        self.exporter_address = (str(bound[0]), int(bound[1]))
        log.info(
            "exporter: tenant %s at http://%s/metrics",
            cfg.tenant,
            format_address(self.exporter_address),
        )

    async def _start_http(self) -> None:
        cfg = self.config
        tls = cfg.http.tls
        if tls.cert_file is not None and tls.key_file is not None:
            self.tls = ServerCertificate(tls.cert_file, tls.key_file)
            log.info("http.tls: serving the certificate in %s", tls.cert_file)
        subapps = {PROMETHEUS_PREFIX: prometheus_api(self.promql)} if self.promql else {}
        app = create_app(self, max_body_bytes=cfg.http.max_body_bytes, subapps=subapps)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self.http_address = await start_http(
            self._runner,
            cfg.http,
            self.telemetry,
            read_timeout=lambda: self.config.http.read_timeout,
            tls=self.tls,
        )

    def _reload_certificate(self, new: Config) -> None:
        """On every reload with TLS on: the files may hold a renewed certificate under the same
        names. One that cannot be used leaves the running one served."""
        tls = new.http.tls
        if self.tls is None or tls.cert_file is None or tls.key_file is None:
            return
        try:
            self.tls.reload(tls.cert_file, tls.key_file)
        except ConfigError as e:
            log.error("reload: %s; keeping the certificate served so far", e)
        else:
            log.info("reload: http.tls: reloaded the certificate from %s", tls.cert_file)

    def _use_mapper(self, mapper: Mapper | None) -> None:
        """StatsD lines are mapped by `mapper` (None: no rules) from now on."""
        self.parser.set_mapper(mapper)
        self.registry.describe = None if mapper is None else self.parser.mapped_options
        if mapper is not None:
            rules, path = mapper.rules.count, self.config.statsd.mapping_file
            log.info("statsd.mapping_file: %d mapping rules from %s", rules, path)

    def _reload_mapping(self) -> None:
        """Reads the mapping file again; new rules map the lines parsed from now on (every
        cached answer dropped), a file that cannot be used leaves the rules in use."""
        try:
            mapper = load_mapper(self.config.statsd.mapping_file, self.parser.sanitise)
        except ConfigError as e:
            log.error("reload: %s; keeping the mapping rules in use", e)
            return
        if mapper is None and self.parser.mapper is None:
            return
        if mapper is not None and mapper.same_rules(self.parser.mapper):
            return  # the same text: the caches stay good
        self._use_mapper(mapper)
        if self.ingest.native is not None:
            self.ingest.native.forget()
        if mapper is None:
            log.info("reload: statsd.mapping_file unset; StatsD names are no longer mapped")

    def _start_relay(self, module: ModuleType | None) -> None:
        """relay.address set: every StatsD line goes there too, before any listener starts. On
        the native path the cores hand it over in C (the lines never enter Python)."""
        cfg = self.config.relay
        if cfg.address is None:
            return
        relay: Relay
        if module is not None and self.ingest.native is not None:
            relay = NativeRelay(module, cfg.address, packet_bytes=cfg.packet_bytes)
            self.ingest.native.relay = relay.handle
        else:
            relay = self.ingest.relay = PythonRelay(cfg.address, packet_bytes=cfg.packet_bytes)
        relay.start()
        self.relay = relay
        self.telemetry.relay_counts = relay.counts
        log.info(
            "relay: every StatsD line to %s, in datagrams of %d bytes at most",
            cfg.address,
            cfg.packet_bytes,
        )

    def _unscrape(self, keys: set[SeriesKey]) -> None:
        """Series gone from the store leave the exporter's scrape too: deleted (here, or by
        another gateway on a shared store), or forgotten as stale (no bucket left in any
        tier, by this gateway's retention or another's)."""
        if self.scrape_state is not None:
            self.scrape_state.forget(keys)

    def _forget_series(self, keys: list[SeriesKey]) -> list[SeriesKey]:
        """Series the store removed (stale, or deleted by another gateway); one with a point in
        memory since stays known (its next flush writes it again). Those forgotten."""
        with self.aggregator.live_held():  # no StatsD point lands in between
            in_memory = self.aggregator.keys_in_memory()
            gone = [k for k in keys if k not in in_memory]
            self.registry.forget(gone)
            self.aggregator.forget_gauges(gone)
        return gone

    def _forget_stale(self, keys: list[SeriesKey]) -> None:
        """Series retention forgot as stale: off the scrape too, but those with a point in
        memory since (they are being written again)."""
        self._unscrape(set(self._forget_series(keys)))

    async def _start_stream_transports(self) -> None:
        cfg = self.config
        if cfg.tcp.enabled:
            self.tcp, self.tcp_address = await start_tcp(
                cfg.tcp, self.ingest, self.telemetry, self.clock
            )
            tcp = self.tcp
            self.telemetry.tcp_connections_open = lambda: len(tcp.connections)
        if cfg.unix.enabled:
            self.unix, self.unix_path = await start_unix(cfg.unix, self.ingest, self.telemetry)

    def _kernel_drops(self) -> dict[str, int]:
        drops = self.udp.kernel_drops() if self.udp is not None else None
        return {} if drops is None else {"udp": drops}

    def reload(self, new: Config) -> list[str]:
        """Applies what can change while running (keys, limits, log level, the TLS certificate
        and the mapping rules, read again from their files); returns the changed settings that
        only take effect after a restart."""
        old = self.config
        self.config = new
        self._setup_keys()
        self.max_batch_points = new.http.max_batch_points
        self.max_query_points = new.query.max_points
        self.store.read_timeout = new.query.timeout
        if self._pipeline:
            limit = new.aggregation.max_series_per_tenant
            if self.ingest.native is not None and self.aggregator.max_series_per_tenant != limit:
                self.ingest.native.forget()  # its cached refusals were judged by the old limit
            self.aggregator.max_series_per_tenant = new.aggregation.max_series_per_tenant
            self.query_engine.max_sketches = new.query.max_sketches
            if self.promql is not None:
                self.promql.timeout = new.query.timeout
            self.flusher.max_pending_rows = new.aggregation.max_pending_rows
            self._reload_mapping()
        logging.getLogger("statsd_gateway").setLevel(new.log.level.upper())
        self._reload_certificate(new)
        return settings_needing_restart(old, new)

    def _setup_keys(self) -> None:
        self.keyring = KeyRing.from_config(self.config.auth.keys, self.config.key_file)

    async def stop(self) -> None:
        # Stop receiving everywhere first; what the listeners hold goes to the aggregator.
        if self.udp is not None:
            self.udp.close()
        if self.unix is not None:
            self.unix.close()
        if self.tcp is not None:
            await self.tcp.close()
        if self.relay is not None:  # after every listener: it sends what they handed it
            await self.relay.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.promql is not None:
            self.promql.close()
        if self._exporter_runner is not None:
            await self._exporter_runner.cleanup()
            self._exporter_runner = None
        if self.retention is not None:
            await self.retention.stop()
        if self.sealing is not None:
            await self.sealing.stop()
        if self._store_open and self._pipeline:
            if self.ingest.bound is not None:
                await self.ingest.bound.drain()
            await self.flusher.stop()
            await self._final_flush()
            await asyncio.to_thread(self.flusher.close)
        if self.wal is not None:
            await asyncio.to_thread(self.wal.stop)
            self.wal = None
        if self._store_open:
            try:
                await self.store.close(STORE_CLOSE_TIMEOUT)
            except TimeoutError:
                log.error("the store did not close within %gs", STORE_CLOSE_TIMEOUT)
            self._store_open = False

    async def _final_flush(self) -> None:
        """Writes everything in memory, within FINAL_FLUSH_TIMEOUT. A database removed while
        running is made again at its path for it (a restart would do the same): what is in
        memory is kept, not dropped with the directory."""
        try:
            ok = await asyncio.wait_for(self._recreate_and_flush(), FINAL_FLUSH_TIMEOUT)
        except TimeoutError:
            ok = False
            self.flusher.last_error = f"it did not finish within {FINAL_FLUSH_TIMEOUT:g}s"
        if ok:
            return
        series = sum(s.series_count() for s in self.aggregator.pending)
        log.error(
            "the final flush failed: %s; %d series in memory are lost (HTTP points among them "
            "stay in the write-ahead log and are replayed at start)",
            self.flusher.last_error,
            series,
        )

    async def _recreate_and_flush(self) -> bool:
        try:
            await self.store.ensure_in_place(recreate=True)
        except Exception as e:  # the flush below fails and says what it costs
            log.error("cannot make the database again at its path: %s", e)
        return await self.flusher.flush(force=True)

    # -- for the handlers ------------------------------------------------------------------

    def write_refusal(self) -> str | None:
        """Why HTTP writes are refused right now: the store's files or the log's directory were
        removed or replaced, or the log's writer died. Their points would be held in memory
        only, where a 200 promises they survive a crash."""
        if self.store.gone is not None:
            return self.store.gone
        if self.wal is not None:
            return self.wal.problem
        return None

    def readiness(self) -> list[str]:
        problems = []
        if not self._store_open:
            problems.append("store not open")
        refusal = self.write_refusal()
        if refusal is not None:
            problems.append(refusal)
        if self.flusher.stopped_by_itself:
            problems.append("the flusher's tick task has stopped")
        if self.sealing is not None and not self.sealing.alive:
            problems.append("the chunk sealing task has stopped")
        if self.flusher.last_error:
            problems.append(f"last flush failed: {self.flusher.last_error}")
        elif self.flush_on_ticks:
            # Ticks every interval: no success for 3 intervals means flushing is stuck.
            last = self.flusher.last_flush_ok or self.started_at
            if self.clock() - last > 3 * self.aggregator.interval + 5:
                problems.append("no successful flush recently")
        if self.config.udp.enabled and self.udp_address is None:
            problems.append("udp listener not bound")
        if isinstance(self.udp, NativeUdpListener) and self.udp.stopped_readers():
            problems.append("udp reader thread stopped")
        if self.config.tcp.enabled and self.tcp_address is None:
            problems.append("tcp listener not bound")
        if self.config.unix.enabled and self.unix_path is None:
            problems.append("unix socket not bound")
        relay = self.relay.problem() if self.relay is not None else None
        if relay is not None:
            problems.append(relay)
        return problems
