"""The shape of the config file: one frozen msgspec Struct per section, and nothing else.

Every key's name, type, limits (`Meta(ge=...)`) and default are declared here, and only here;
loading.py converts the YAML document into `Config` with msgspec (unknown keys are errors) and
then checks what one key alone cannot say (tiers against each other, TLS files in pairs, the
mapping file's rules).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta

from statsd_gateway.config.values import FileMode, KeyDigest, ListenAddress, PeerAddress, Seconds

NonEmpty = Annotated[str, Meta(min_length=1)]
Count = Annotated[int, Meta(ge=1)]
GaugeSign = Literal["delta", "absolute"]  # the values of protocol.GAUGE_SIGNS
Sanitising = Literal["statsd", "none", "prometheus"]  # the values of protocol.SANITISERS
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
Scope = Literal["read", "write", "admin"]
SCOPES = frozenset(get_args(Scope))


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A mapping of the config file: strict keys, immutable once loaded. (Subclasses inherit
    these options; they repeat frozen=True only for mypy, which does not see it inherited.)"""


class UdpConfig(Section, frozen=True):
    enabled: bool = True
    listen: ListenAddress = ListenAddress("127.0.0.1:8125")
    tenant: NonEmpty = "default"
    queue_size: Count = 65536  # datagrams waiting to be parsed; beyond it dropped and counted
    read_buffer: Annotated[int, Meta(ge=0)] = 8 * 1024 * 1024  # SO_RCVBUF asked, in bytes
    # Native core only: sockets on the port (SO_REUSEPORT), each read by a thread of its own.
    readers: Annotated[int, Meta(ge=1, le=64)] = 1


class TcpConfig(Section, frozen=True):
    """StatsD lines over TCP, newline framed; off by default."""

    enabled: bool = False
    listen: ListenAddress = ListenAddress("127.0.0.1:8125")
    tenant: NonEmpty = "default"
    max_connections: Count = 1024  # beyond it, new connections are closed at once and counted
    idle_timeout: Seconds = Seconds(300.0)  # a connection silent this long is closed


class UnixConfig(Section, frozen=True):
    """StatsD datagrams over a Unix datagram socket (DogStatsD's default transport); off by
    default."""

    enabled: bool = False
    path: NonEmpty = "./data/statsd.sock"
    tenant: NonEmpty = "default"
    # Senders need only the write bit; 0622 lets every local user send, as UDP on loopback
    # does (DogStatsD's 0722 without the meaningless x bit).
    mode: FileMode = FileMode("0622")
    queue_size: Count = 65536


class StatsdConfig(Section, frozen=True):
    """How StatsD text is read, whatever the transport."""

    gauge_sign: GaugeSign = "delta"  # delta (Etsy) or absolute (DogStatsD)
    name_sanitising: Sanitising = "statsd"
    # statsd_exporter's mapping rules (mapping_file.py), read at load and on every reload.
    mapping_file: NonEmpty | None = None


class RelayConfig(Section, frozen=True):
    """Every StatsD line received on UDP, TCP and the Unix datagram socket forwarded, as
    received, over UDP to `address` (relay.py); off while `address` is unset."""

    address: PeerAddress | None = None
    # The most bytes a datagram to the peer holds (one line longer than this goes alone): 512,
    # what every IPv4 path carries whole, to 65507, the most a UDP datagram over IPv4 holds.
    packet_bytes: Annotated[int, Meta(ge=512, le=65507)] = 1400


class TlsConfig(Section, frozen=True):
    """HTTPS on the HTTP listener: both PEM files, or neither (plain HTTP). The files are read
    when the config is loaded, so a missing file or a key that does not match the certificate
    is a config error."""

    cert_file: NonEmpty | None = None  # the server's certificate, then any intermediates
    key_file: NonEmpty | None = None  # its private key, unencrypted

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class HttpConfig(Section, frozen=True):
    listen: ListenAddress = ListenAddress("127.0.0.1:8080")
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 5 * 1024 * 1024
    max_batch_points: Count = 10_000
    # From a request's first byte, its headers and body must all arrive within this; a client
    # trickling bytes is closed (slow clients would otherwise hold a connection forever).
    read_timeout: Seconds = Seconds(30.0)
    tls: TlsConfig = TlsConfig()


class TierConfig(Section, frozen=True):
    """One storage tier: buckets of `resolution` seconds kept `retention` seconds."""

    resolution: Seconds
    retention: Seconds


DEFAULT_TIERS = (
    TierConfig(resolution=Seconds(10.0), retention=Seconds(6 * 3600.0)),
    TierConfig(resolution=Seconds(60.0), retention=Seconds(7 * 86400.0)),
    TierConfig(resolution=Seconds(3600.0), retention=Seconds(400 * 86400.0)),
)


StorageBackend = Literal["sqlite", "postgresql"]


class PostgresqlConfig(Section, frozen=True):
    """The shared PostgreSQL store (store/postgresql.py), used when storage.backend is
    postgresql. The password is never in this file: libpq's PGPASSWORD or PGPASSFILE in the
    environment, or `password_file`; no DSN is logged with its password."""

    dsn: NonEmpty = "postgresql://localhost/statsd"  # a libpq URI or key=value string
    password_file: NonEmpty | None = None  # a file holding the password alone (a secret)
    # This gateway's name in the shared store: its buckets, seq and rollups are kept under it,
    # so gateways never write the same row. Default: the host's name. Unique per gateway.
    source: NonEmpty | None = None
    pool_size: Annotated[int, Meta(ge=1, le=100)] = 4  # connections to the server, at most
    statement_timeout: Seconds = Seconds(30.0)  # a statement running longer is cancelled
    connect_timeout: Seconds = Seconds(10.0)


class StorageConfig(Section, frozen=True):
    backend: StorageBackend = "sqlite"
    # The SQLite file (backend sqlite); with postgresql, the HTTP write-ahead log's default
    # directory (`wal_dir`) still derives from it.
    path: NonEmpty = "./data/metrics.db"
    postgresql: PostgresqlConfig = PostgresqlConfig()
    # Finest first; each resolution a multiple of the one before (the finest a multiple of
    # aggregation.flush_interval), each retention at least the next tier's resolution.
    tiers: Annotated[tuple[TierConfig, ...], Meta(min_length=1)] = DEFAULT_TIERS
    # How often expired buckets are deleted.
    retention_check_interval: Seconds = Seconds(60.0)
    # Points accepted over HTTP are fsynced to a write-ahead log before the 200.
    wal: bool = True
    wal_dir: NonEmpty | None = None  # default: <path>.http-wal
    # Bytes the points held in memory (and writing them) may take; past it they are flushed
    # early, and HTTP writes wait for that (backpressure.py).
    backfill_memory: Annotated[int, Meta(ge=1024 * 1024)] = 256 * 1024 * 1024

    @property
    def wal_directory(self) -> Path:
        return Path(self.wal_dir) if self.wal_dir else Path(self.path + ".http-wal")


class AggregationConfig(Section, frozen=True):
    flush_interval: Seconds = Seconds(10.0)
    max_series_per_tenant: Count = 100_000
    # Series-buckets kept in memory while the store cannot be written; beyond, the oldest
    # flushes are dropped and counted.
    max_pending_rows: Count = 1_000_000


class QueryConfig(Section, frozen=True):
    max_points: Count = 10_000
    timeout: Seconds = Seconds(10.0)
    # Most bucket sketches one quantile query may merge (series x buckets read); beyond, the
    # query is refused with a message saying what would fit.
    max_sketches: Count = 200_000


class ExporterConfig(Section, frozen=True):
    """A scrape of one tenant's ingested metrics in the Prometheus exposition format, for
    statsd_exporter users (docs/PROMETHEUS.md, "The scrape"); off by default."""

    enabled: bool = False
    listen: ListenAddress = ListenAddress("127.0.0.1:9102")  # statsd_exporter's web port
    tenant: NonEmpty = "default"
    # OpenMetrics to a scraper that asks for it (Prometheus does, first): its counters then
    # end in _total. Off, the text format (or protobuf, to a scraper that prefers it), as
    # statsd_exporter serves it, so Prometheus stores the names statsd_exporter users'
    # queries have.
    openmetrics: bool = False


class ApiKey(Section, frozen=True):
    name: NonEmpty
    sha256: KeyDigest
    tenant: NonEmpty = "default"
    scopes: Annotated[tuple[Scope, ...], Meta(min_length=1)] = ("read", "write")


class AuthConfig(Section, frozen=True):
    keys: tuple[ApiKey, ...] = ()
    # Where the generated key goes when `keys` is empty; default: api-key beside the database.
    key_file: NonEmpty | None = None


class LogConfig(Section, frozen=True):
    level: LogLevel = "info"


class Config(Section, frozen=True):
    udp: UdpConfig = UdpConfig()
    tcp: TcpConfig = TcpConfig()
    unix: UnixConfig = UnixConfig()
    statsd: StatsdConfig = StatsdConfig()
    relay: RelayConfig = RelayConfig()
    http: HttpConfig = HttpConfig()
    storage: StorageConfig = StorageConfig()
    aggregation: AggregationConfig = AggregationConfig()
    query: QueryConfig = QueryConfig()
    exporter: ExporterConfig = ExporterConfig()
    auth: AuthConfig = AuthConfig()
    log: LogConfig = LogConfig()

    @property
    def key_file(self) -> Path:
        if self.auth.key_file:
            return Path(self.auth.key_file)
        return Path(self.storage.path).parent / "api-key"
