"""Shared fixtures: a manual clock, a config on loopback ports 0, and a running Gateway."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, TypeVar

import pytest
from aiohttp import ClientSession
from hypothesis import HealthCheck, settings
from msgspec.structs import replace

from statsd_gateway import native
from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.config import ApiKey, Config, config_from_dict, hash_key
from statsd_gateway.gateway import Gateway
from statsd_gateway.model import BucketRow, RowBatch
from statsd_gateway.series_registry import SeriesRegistry
from statsd_gateway.store import SqliteStore
from statsd_gateway.store.base import FlushWrite, Store
from tests.daemon import Daemon
from tests.postgres import INSTALL as PG_INSTALL
from tests.postgres import PostgresCluster, running_cluster

T_ = TypeVar("T_")

KEY = "test-key-default"
OTHER_KEY = "test-key-other-tenant"
READ_ONLY_KEY = "test-key-read-only"
ADMIN_KEY = "test-key-admin"
T0 = 1_764_172_800.0  # 2025-11-26T16:00:00Z, a multiple of every window used in tests


class ManualClock:
    """The injected clock: time moves only when a test says so."""

    def __init__(self, t: float = T0 + 5.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Ticks:
    """An injected sleep (Flusher.run, TcpListener.reap_idle): moves the test's clock by what it
    is asked instead of waiting, records the requests and the times it woke at, and ends the
    loop (by cancelling it) at the sleep after the `n`th."""

    def __init__(self, clock: ManualClock, n: int) -> None:
        self.clock, self.n = clock, n
        self.asked: list[float] = []
        self.woke_at: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        if len(self.woke_at) == self.n:
            raise asyncio.CancelledError
        self.clock.advance(seconds)
        self.woke_at.append(self.clock())


def missing_prerequisite(what: str, *, module: bool = False) -> NoReturn:
    """A test needs something of the machine that is not here (a system package, root): it is
    skipped on a developer's machine, and fails under CI (CI=true), where .ci/run provides it.
    `module`: called at import, for a whole test module."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}: CI must provide it (see .ci/run)")
    pytest.skip(what, allow_module_level=module)


def require_native_core(*, module: bool = False) -> ModuleType:
    """For a test of the native module: skipped where the suite forces the pure-Python path
    (STATSD_GATEWAY_PURE_PYTHON), and where it is not built (failed under CI); else the module.
    `module`: called at import, for a whole test module."""
    if os.environ.get(native.PURE_PYTHON_ENV, "") not in ("", "0"):
        pytest.skip(
            f"{native.PURE_PYTHON_ENV} forces the pure-Python path", allow_module_level=module
        )
    found = native.native_module()
    if found is None:
        missing_prerequisite("the native module is not built (pip install -e .)", module=module)
    return found


# ---- Tests the pure-Python pass would only repeat
#
# scripts/test runs the suite twice: on the native core, then with STATSD_GATEWAY_PURE_PYTHON=1.
# All that differs between the two passes is what native.native_module() answers: every use of
# the compiled code (the ingest cores, the native UDP readers and relay, the HTTP points' checks,
# the chunk decoder, the window quantile kernel, through a Gateway or a daemon or directly) is
# behind that one call. A test marked `same_in_both_passes` runs the same code in both passes:
# nothing it runs asks native_module() with the pass's answer (it reaches none of that code, or
# sets STATSD_GATEWAY_PURE_PYTHON itself for what it starts, as the `pure` variants of the tests
# that run each ingest core in turn do). The pure-Python pass would only repeat it, so it skips
# it, reported as a skip with SAME_IN_BOTH_PASSES_REASON; scripts/test stays the whole suite.
#
# A mark must not go stale unnoticed: in the native pass, a marked test fails (at its teardown)
# if, while it runs, native_module() is asked with the environment as the pass set it, or a
# Python process is started without the variable set for it (of the daemon's commands, only
# `check-config`, `keygen` and `query` never ask: cli.py). A module-scoped fixture a marked test
# uses is made by whichever test needs it first: mark no test whose module-scoped fixtures start a
# Gateway or a daemon on the pass's path.
SAME_IN_BOTH_PASSES = "same_in_both_passes"
SAME_IN_BOTH_PASSES_REASON = (
    "the same code in both passes: run in the native one (tests/conftest.py)"
)
# The variable as the pass set it (absent in the native pass).
_PASS_SETTING = os.environ.get(native.PURE_PYTHON_ENV)
_CHILD_COMMANDS_THAT_NEVER_ASK = frozenset({"check-config", "keygen", "query"})


def _pure_pass() -> bool:
    return _PASS_SETTING not in (None, "", "0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{SAME_IN_BOTH_PASSES}: runs the same code on either ingest path; skipped in the "
        "pure-Python pass (tests/conftest.py)",
    )
    if not _pure_pass():
        _watch.install()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Only where the native pass runs them: without the native module, scripts/test has one
    # pass, on the pure-Python path, and it runs everything.
    if not _pure_pass() or importlib.util.find_spec("statsd_gateway._native") is None:
        return
    skip = pytest.mark.skip(reason=SAME_IN_BOTH_PASSES_REASON)
    for item in items:
        if item.get_closest_marker(SAME_IN_BOTH_PASSES) is not None:
            item.add_marker(skip)


class _Watch:
    """The native pass's check of the marked tests (see above)."""

    def __init__(self) -> None:
        self.test: str | None = None  # the marked test running (setup to teardown), if any
        self.found: list[str] = []
        self._lock = threading.Lock()

    def install(self) -> None:
        real = native.native_module
        watch = self

        def native_module() -> ModuleType | None:
            if watch.test is not None and os.environ.get(native.PURE_PYTHON_ENV) == _PASS_SETTING:
                watch.saw("native_module() asked:\n" + "".join(traceback.format_stack(limit=12)))
            return real()

        class Popen(subprocess.Popen):  # type: ignore[type-arg]
            def __init__(self, args: Any, *a: Any, **kw: Any) -> None:
                if watch.test is not None:
                    watch.check_child(args, kw.get("env"))
                super().__init__(args, *a, **kw)

        native.native_module = native_module  # type: ignore[assignment]
        subprocess.Popen = Popen  # type: ignore[misc]

    def saw(self, what: str) -> None:
        with self._lock:
            self.found.append(what)

    def check_child(self, args: Any, env: dict[str, str] | None) -> None:
        argv = [str(a) for a in ([args] if isinstance(args, str | bytes | os.PathLike) else args)]
        program = Path(argv[0]).name if argv else ""
        if not program.startswith("python") and program != "statsd-gateway":
            return  # not Python: openssl, chromium, systemd-analyze, promtool, node
        if program == "statsd-gateway":
            argv = [program, "-m", "statsd_gateway", *argv[1:]]
        setting = (os.environ if env is None else env).get(native.PURE_PYTHON_ENV)
        if setting != _PASS_SETTING:
            return  # its path is set for it, the same in both passes
        if argv[1:3] == ["-m", "statsd_gateway"] and (
            len(argv) > 3 and argv[3] in _CHILD_COMMANDS_THAT_NEVER_ASK
        ):
            return
        self.saw(f"a Python process on the pass's ingest path: {argv}")

    @contextlib.contextmanager
    def running(self, item: pytest.Item, *, first: bool = False) -> Iterator[None]:
        """Around each phase of a test (`first`: its setup)."""
        if _pure_pass() or item.get_closest_marker(SAME_IN_BOTH_PASSES) is None:
            yield
            return
        if first:
            self.found = []
        self.test = item.nodeid
        try:
            yield
        finally:
            self.test = None


_watch = _Watch()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _watch.running(item, first=True):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _watch.running(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with _watch.running(item):
        result = yield
    if _watch.found and item.get_closest_marker(SAME_IN_BOTH_PASSES) is not None:
        found, _watch.found = _watch.found, []
        raise AssertionError(
            f"{item.nodeid} is marked {SAME_IN_BOTH_PASSES} but its code depends on the pass "
            f"(tests/conftest.py): {found[0]}"
            + (f"\n(and {len(found) - 1} more)" if len(found) > 1 else "")
        )
    return result


# The differential tests' hypothesis settings (reproducible). Each test runs a share of
# PARITY_EXAMPLES by its cost, PARITY_EXAMPLES // 5 at most (2,000 by default, in each pass of
# scripts/test): the deep search is the fuzzers' (fuzz/run.sh, under AddressSanitizer), and
# PARITY_EXAMPLES=50000 runs every share five times over.
PARITY = settings(
    max_examples=int(os.environ.get("PARITY_EXAMPLES", "10000")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def stored_rows(
    config: Config, sql: str, *args: object, write: bool = False
) -> list[tuple[Any, ...]]:
    """The rows of a statement (`?` for parameters) on the store a config names: its SQLite
    file (read-only unless `write`), or its PostgreSQL database; committed. For tests that
    check, or change behind the daemon's back, what is stored, on both backends."""
    if config.storage.backend == "postgresql":
        import psycopg

        with psycopg.connect(config.storage.postgresql.dsn) as pg:
            # psycopg's markers: a literal % doubled, then each ? a %s.
            cur = pg.execute(sql.replace("%", "%%").replace("?", "%s"), args)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []
    mode = "rw" if write else "ro"
    conn = sqlite3.connect(f"file:{config.storage.path}?mode={mode}", uri=True)
    try:
        with conn:
            return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def sqlite_only(config: Config, why: str) -> None:
    """Skips a test of both backends on PostgreSQL where it checks what only SQLite has."""
    if config.storage.backend != "sqlite":
        pytest.skip(f"SQLite only: {why}")


# The PostgreSQL database the current test's gateways store into, when it runs on that backend
# (the `storage_backend` fixture sets it); None: SQLite. Tests run one at a time.
_postgres_database: str | None = None


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    storage: dict[str, Any] = {"path": str(tmp_path / "data" / "metrics.db")}
    if _postgres_database is not None:
        storage |= {
            "backend": "postgresql",
            "postgresql": {"dsn": _postgres_database, "source": "gw-test", "connect_timeout": "5s"},
        }
    raw: dict[str, Any] = {
        "udp": {"listen": "127.0.0.1:0", "read_buffer": 0},
        "http": {"listen": "127.0.0.1:0"},
        "storage": storage,
        "aggregation": {"flush_interval": "10s"},
        "log": {"level": "debug"},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    cfg = config_from_dict(raw)
    keys = (
        ApiKey(name="main", sha256=hash_key(KEY), tenant="default"),
        ApiKey(name="other", sha256=hash_key(OTHER_KEY), tenant="other"),
        ApiKey(name="reader", sha256=hash_key(READ_ONLY_KEY), tenant="default", scopes=("read",)),
        ApiKey(name="ops", sha256=hash_key(ADMIN_KEY), tenant="default", scopes=("read", "admin")),
    )
    return replace(cfg, auth=replace(cfg.auth, keys=keys))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module naming STORE_BACKENDS runs each of its tests that makes a config on each."""
    backends = getattr(metafunc.module, "STORE_BACKENDS", None)
    if backends and "tmp_path" in metafunc.fixturenames:
        metafunc.parametrize("storage_backend", backends, indirect=True)


@pytest.fixture(autouse=True)
def storage_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend make_config() names: SQLite, unless the test is parametrised with
    "postgresql" (STORE_BACKENDS), which gives it a database of its own."""
    global _postgres_database
    backend: str = getattr(request, "param", "sqlite")
    if backend == "postgresql":
        _postgres_database = request.getfixturevalue("postgres_dsn")
    try:
        yield backend
    finally:
        _postgres_database = None


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server for the session (tests/postgres.py)."""
    with running_cluster() as cluster:
        if cluster is None:
            missing_prerequisite(f"PostgreSQL's server is not installed ({PG_INSTALL})")
        yield cluster


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster) -> str:
    """A new, empty database on the session's server."""
    return postgres_cluster.fresh_database()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Every daemon (subprocess) a test starts; any still running at the end is killed."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def gateway(config: Config, clock: ManualClock) -> AsyncIterator[Gateway]:
    gw = Gateway(config, clock=clock, flush_on_ticks=False)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


class Api:
    """A real HTTP client against the running gateway."""

    def __init__(self, session: ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def request(
        self, method: str, path: str, *, key: str | None = KEY, **kw: Any
    ) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.session.request(method, self.base + path, headers=headers, **kw) as r:
            return r.status, await r.json(content_type=None)

    async def report(self, point: dict[str, Any], key: str = KEY) -> tuple[int, Any]:
        return await self.request("POST", "/v1/metrics/report", json=point, key=key)

    async def batch(self, points: list[Any], key: str = KEY) -> tuple[int, Any]:
        return await self.request("POST", "/v1/metrics/batch", json={"points": points}, key=key)

    async def query(self, key: str = KEY, **params: Any) -> tuple[int, Any]:
        return await self.request("GET", "/v1/metrics/query", params=params, key=key)


@contextlib.asynccontextmanager
async def running(config: Config, clock: ManualClock) -> AsyncIterator[tuple[Gateway, Api]]:
    """A Gateway on `config` (ticks off, the test's clock) and a client for its HTTP API."""
    gw = Gateway(config, clock=clock, flush_on_ticks=False)
    await gw.start()
    assert gw.http_address is not None
    try:
        async with ClientSession() as session:
            yield gw, Api(session, "http://{}:{}".format(*gw.http_address))
    finally:
        await gw.stop()


@pytest.fixture
async def api(gateway: Gateway) -> AsyncIterator[Api]:
    assert gateway.http_address is not None
    host, port = gateway.http_address
    async with ClientSession() as session:
        yield Api(session, f"http://{host}:{port}")


def send_udp(gateway: Gateway, *datagrams: bytes) -> None:
    assert gateway.udp_address is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, gateway.udp_address)


async def wait_until(
    done: Callable[[], bool], failure: Callable[[], str], timeout: float = 5.0
) -> None:
    """Waits for an event the gateway counts or does (read a datagram, closed a connection),
    never for time to pass: `timeout` only bounds a failure, reported as `failure()` says."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        if loop.time() > deadline:
            raise AssertionError(failure())
        await asyncio.sleep(0.002)


async def wait_for_udp(gateway: Gateway, packets: int, timeout: float = 5.0) -> None:
    """Waits until the gateway has read `packets` datagrams."""
    t = gateway.telemetry
    await wait_until(
        lambda: t.packets["udp"] >= packets,
        lambda: f"only {t.packets['udp']} of {packets} datagrams arrived",
        timeout,
    )


def run_sync(coro: Coroutine[Any, Any, T_]) -> T_:
    """A store coroutine run to its end from a synchronous test or fixture."""
    return asyncio.run(coro)


async def write_rows(store: Store, rows: Sequence[BucketRow], seq: int | None = None) -> None:
    """The finest tier's rows alone, as a flush of snapshot `seq` (None: not a flush)."""
    await store.write_flush(FlushWrite(seq, RowBatch.from_rows(rows)))


async def on_sqlite_writer(store: Store, fn: Callable[[sqlite3.Connection], object]) -> None:
    """Runs `fn` with the SQLite store's write connection on its writer thread, outside any
    transaction: how the fault tests of that backend inject a fault (a pragma, a lock)."""
    assert isinstance(store, SqliteStore)
    await store._write(lambda: fn(store._writer._conn()))


def make_aggregator(
    clock: Callable[[], float], registry: SeriesRegistry | None = None
) -> IntervalAggregator:
    """The aggregator as unit tests of the stages after it use it: 10 s intervals, points up to
    an hour back, room for 1,000 series a tenant."""
    return IntervalAggregator(
        interval=10.0,
        clock=clock,
        registry=SeriesRegistry() if registry is None else registry,
        max_series_per_tenant=1000,
        max_backdate=3600.0,
    )


def remove_tree(path: Path) -> None:
    """`rm -rf path`, as an operator runs it: a file the daemon deletes meanwhile (a log segment
    it releases) is no error."""

    def vanished(function: object, name: str, exc: object) -> None:
        # Python 3.12+ passes the exception (onexc), 3.11 its exc_info triple (onerror).
        error = exc[1] if isinstance(exc, tuple) else exc
        if not isinstance(error, FileNotFoundError):
            raise error  # type: ignore[misc]

    # The daemon may make a file again inside the tree while it is being removed (it heals a
    # log or database it sees gone), and rmtree then finds its last directory not empty: as an
    # operator would, run it again until the tree is gone.
    for _ in range(50):
        try:
            if sys.version_info >= (3, 12):
                shutil.rmtree(path, onexc=vanished)
            else:
                shutil.rmtree(path, onerror=vanished)
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:
                raise
        if not path.exists():
            return
    raise AssertionError(f"{path} kept coming back while it was removed")
