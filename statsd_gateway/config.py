"""Configuration: frozen dataclasses parsed strictly from YAML text.

Every default lives in the dataclass fields below, and only there. Unknown keys and bad values
raise ConfigError naming the key's path (`udp.listen`, `auth.keys[0].sha256`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from statsd_gateway.errors import ConfigError
from statsd_gateway.protocol import GAUGE_SIGNS, SANITISERS
from statsd_gateway.tls import server_context

SCOPES = frozenset({"read", "write", "admin"})
LOG_LEVELS = ("debug", "info", "warning", "error")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
MAX_DURATION = 100 * 365 * 86400.0
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MODE_RE = re.compile(r"^0?[0-7]{3}$")


def parse_duration(text: str | int | float) -> float:
    """`10s`, `500ms`, `1m`, `1h`, `1d`, or a plain number of seconds → seconds."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as 10s, 500ms or 1m")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        m = _DURATION_RE.fullmatch(text.strip())
        if not m:
            raise ValueError(f"{text!r} is not a duration such as 10s, 500ms or 1m")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not 0 < seconds <= MAX_DURATION:
        raise ValueError("a duration must be positive and at most 100 years")
    return seconds


def parse_listen(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); port 0 means any free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not host:port (use [::1]:8125 for IPv6)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


@dataclass(frozen=True, kw_only=True)
class UdpConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:8125"
    tenant: str = "default"
    queue_size: int = (
        65536  # datagrams waiting to be parsed; beyond it they are dropped and counted
    )
    read_buffer: int = 8 * 1024 * 1024  # SO_RCVBUF asked of the kernel, in bytes


@dataclass(frozen=True, kw_only=True)
class TcpConfig:
    """StatsD lines over TCP, newline framed; off by default."""

    enabled: bool = False
    listen: str = "127.0.0.1:8125"
    tenant: str = "default"
    max_connections: int = 1024  # beyond it, new connections are closed at once and counted
    idle_timeout: float = 300.0  # a connection silent this long is closed


@dataclass(frozen=True, kw_only=True)
class UnixConfig:
    """StatsD datagrams over a Unix datagram socket (DogStatsD's default transport); off by
    default."""

    enabled: bool = False
    path: str = "./data/statsd.sock"
    tenant: str = "default"
    # Permissions of the socket file, octal. Senders need only the write bit; 0622 lets every
    # local user send, as UDP on loopback does (DogStatsD's 0722 without the meaningless x bit).
    mode: str = "0622"
    queue_size: int = 65536  # datagrams waiting to be parsed; beyond it dropped and counted


@dataclass(frozen=True, kw_only=True)
class StatsdConfig:
    """How StatsD text is read, whatever the transport."""

    gauge_sign: str = "delta"  # delta (Etsy) or absolute (DogStatsD)
    name_sanitising: str = "statsd"  # statsd (Etsy), none, or prometheus


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """HTTPS on the HTTP listener: both PEM files, or neither (plain HTTP). The files are read
    when the config is loaded, so a missing file or a key that does not match the certificate
    is a config error."""

    cert_file: str | None = None  # the server's certificate, then any intermediates
    key_file: str | None = None  # its private key, unencrypted

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True, kw_only=True)
class HttpConfig:
    listen: str = "127.0.0.1:8080"
    max_body_bytes: int = 5 * 1024 * 1024
    max_batch_points: int = 10_000
    # From a request's first byte, its headers and body must all arrive within this; a client
    # trickling bytes is closed (slow clients would otherwise hold a connection forever).
    read_timeout: float = 30.0
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True, kw_only=True)
class TierConfig:
    """One storage tier: buckets of `resolution` seconds kept `retention` seconds."""

    resolution: float
    retention: float


DEFAULT_TIERS = (
    TierConfig(resolution=10.0, retention=6 * 3600.0),
    TierConfig(resolution=60.0, retention=7 * 86400.0),
    TierConfig(resolution=3600.0, retention=400 * 86400.0),
)


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    path: str = "./data/metrics.db"
    # Finest first; each resolution a multiple of the one before (the finest a multiple of
    # aggregation.flush_interval), each retention at least the next tier's resolution.
    tiers: tuple[TierConfig, ...] = DEFAULT_TIERS
    # How often expired buckets are deleted.
    retention_check_interval: float = 60.0
    # Points accepted over HTTP are fsynced to a write-ahead log before the 200.
    wal: bool = True
    wal_dir: str | None = None  # default: <path>.http-wal
    # Bytes the points held in memory (and writing them) may take; past it they are flushed
    # early, and HTTP writes wait for that (backpressure.py).
    backfill_memory: int = 256 * 1024 * 1024

    @property
    def wal_directory(self) -> Path:
        return Path(self.wal_dir) if self.wal_dir else Path(self.path + ".http-wal")


@dataclass(frozen=True, kw_only=True)
class AggregationConfig:
    flush_interval: float = 10.0
    max_series_per_tenant: int = 100_000
    # Series-buckets kept in memory while the store cannot be written; beyond, the oldest
    # flushes are dropped and counted.
    max_pending_rows: int = 1_000_000


@dataclass(frozen=True, kw_only=True)
class QueryConfig:
    max_points: int = 10_000
    timeout: float = 10.0
    # Most bucket sketches one quantile query may merge (series x buckets read); beyond, the
    # query is refused with a message saying what would fit.
    max_sketches: int = 200_000


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    name: str
    sha256: str
    tenant: str = "default"
    scopes: tuple[str, ...] = ("read", "write")


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    keys: tuple[ApiKey, ...] = ()
    # Where the generated key goes when `keys` is empty; default: api-key beside the database.
    key_file: str | None = None


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True, kw_only=True)
class Config:
    udp: UdpConfig = field(default_factory=UdpConfig)
    tcp: TcpConfig = field(default_factory=TcpConfig)
    unix: UnixConfig = field(default_factory=UnixConfig)
    statsd: StatsdConfig = field(default_factory=StatsdConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def key_file(self) -> Path:
        if self.auth.key_file:
            return Path(self.auth.key_file)
        return Path(self.storage.path).parent / "api-key"


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(path, "expected a mapping")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(path, f"keys must be strings, got {k!r}")
    return value


def _check_keys(data: dict[str, Any], cls: type, path: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in known:
            where = f"{path}.{k}" if path else k
            raise ConfigError(where, f"unknown key (known: {', '.join(sorted(known))})")


def _str(v: Any, path: str, *, empty: bool = False) -> str:
    if not isinstance(v, str) or (not empty and not v):
        raise ConfigError(path, "expected a non-empty string")
    return v


def _int(v: Any, path: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(path, f"expected an integer >= {minimum}")
    return v


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(path, "expected true or false")
    return v


def _tiers(v: Any, path: str) -> tuple[TierConfig, ...]:
    if v is None:
        return DEFAULT_TIERS
    if not isinstance(v, list) or not v:
        raise ConfigError(path, "expected a non-empty list of {resolution, retention}")
    tiers: list[TierConfig] = []
    for i, item in enumerate(v):
        d = _mapping(item, f"{path}[{i}]")
        _check_keys(d, TierConfig, f"{path}[{i}]")
        for k in ("resolution", "retention"):
            if k not in d:
                raise ConfigError(f"{path}[{i}].{k}", "required")
        res = _duration(d["resolution"], f"{path}[{i}].resolution")
        ret = _duration(d["retention"], f"{path}[{i}].retention")
        if ret < res:
            raise ConfigError(f"{path}[{i}].retention", "must be at least the resolution")
        if tiers:
            prev = tiers[-1]
            if res <= prev.resolution or not _multiple(res, prev.resolution):
                raise ConfigError(
                    f"{path}[{i}].resolution",
                    f"must be a multiple of the previous tier's ({prev.resolution:g}s) and larger",
                )
            if prev.retention < res:
                raise ConfigError(
                    f"{path}[{i - 1}].retention",
                    f"must be at least the next tier's resolution ({res:g}s): the open bucket "
                    "of a tier is rebuilt from the tier below after a restart",
                )
        tiers.append(TierConfig(resolution=res, retention=ret))
    return tuple(tiers)


def _multiple(a: float, b: float) -> bool:
    q = a / b
    return abs(q - round(q)) < 1e-9


def _choice(v: Any, path: str, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise ConfigError(path, f"expected one of {', '.join(choices)}")
    return str(v)


def _duration(v: Any, path: str) -> float:
    try:
        return parse_duration(v)
    except (ValueError, TypeError) as e:
        raise ConfigError(path, str(e)) from None


def _listen(v: Any, path: str) -> str:
    s = _str(v, path)
    try:
        parse_listen(s)
    except ValueError as e:
        raise ConfigError(path, str(e)) from None
    return s


def _api_key(v: Any, path: str) -> ApiKey:
    d = _mapping(v, path)
    _check_keys(d, ApiKey, path)
    for required in ("name", "sha256"):
        if required not in d:
            raise ConfigError(f"{path}.{required}", "required")
    sha = _str(d["sha256"], f"{path}.sha256").lower()
    if not _SHA256_RE.match(sha):
        raise ConfigError(f"{path}.sha256", "expected 64 hex digits (statsd-gateway keygen)")
    scopes = d.get("scopes", ["read", "write"])
    if not isinstance(scopes, list) or not scopes:
        raise ConfigError(f"{path}.scopes", "expected a non-empty list of read, write, admin")
    for i, s in enumerate(scopes):
        if s not in SCOPES:
            raise ConfigError(f"{path}.scopes[{i}]", f"unknown scope {s!r} (read, write, admin)")
    return ApiKey(
        name=_str(d["name"], f"{path}.name"),
        sha256=sha,
        tenant=_str(d.get("tenant", "default"), f"{path}.tenant"),
        scopes=tuple(scopes),
    )


def _section(raw: dict[str, Any], name: str, cls: type, path: str = "") -> dict[str, Any]:
    d = _mapping(raw.get(name), path or name)
    _check_keys(d, cls, path or name)
    return d


def _tcp(d: dict[str, Any]) -> TcpConfig:
    df = TcpConfig()
    return TcpConfig(
        enabled=_bool(d.get("enabled", df.enabled), "tcp.enabled"),
        listen=_listen(d.get("listen", df.listen), "tcp.listen"),
        tenant=_str(d.get("tenant", df.tenant), "tcp.tenant"),
        max_connections=_int(
            d.get("max_connections", df.max_connections), "tcp.max_connections", 1
        ),
        idle_timeout=_duration(d.get("idle_timeout", df.idle_timeout), "tcp.idle_timeout"),
    )


def _unix(d: dict[str, Any]) -> UnixConfig:
    df = UnixConfig()
    return UnixConfig(
        enabled=_bool(d.get("enabled", df.enabled), "unix.enabled"),
        path=_str(d.get("path", df.path), "unix.path"),
        tenant=_str(d.get("tenant", df.tenant), "unix.tenant"),
        mode=_file_mode(d.get("mode", df.mode), "unix.mode"),
        queue_size=_int(d.get("queue_size", df.queue_size), "unix.queue_size", 1),
    )


def _tls(d: dict[str, Any]) -> TlsConfig:
    files = {
        k: None if d.get(k) is None else _str(d[k], f"http.tls.{k}")
        for k in ("cert_file", "key_file")
    }
    for k, other in (("cert_file", "key_file"), ("key_file", "cert_file")):
        if files[k] is None and files[other] is not None:
            raise ConfigError(f"http.tls.{k}", f"required with http.tls.{other}")
    tls = TlsConfig(**files)
    if tls.cert_file is not None and tls.key_file is not None:
        server_context(tls.cert_file, tls.key_file)  # ConfigError naming the file's key
    return tls


def _file_mode(v: Any, path: str) -> str:
    # YAML reads an unquoted 0660 as the integer 432, and 660 as 660: only a string is clear.
    if not isinstance(v, str) or not _MODE_RE.match(v):
        raise ConfigError(path, 'expected an octal mode as a quoted string, such as "0660"')
    return v


def parse_mode(text: str) -> int:
    """`"0660"` → 0o660."""
    return int(text, 8)


def config_from_dict(raw: dict[str, Any]) -> Config:
    raw = _mapping(raw, "")
    _check_keys(raw, Config, "")
    u = _section(raw, "udp", UdpConfig)
    tcp = _tcp(_section(raw, "tcp", TcpConfig))
    unix = _unix(_section(raw, "unix", UnixConfig))
    sd = _section(raw, "statsd", StatsdConfig)
    h = _section(raw, "http", HttpConfig)
    s = _section(raw, "storage", StorageConfig)
    a = _section(raw, "aggregation", AggregationConfig)
    q = _section(raw, "query", QueryConfig)
    au = _section(raw, "auth", AuthConfig)
    lg = _section(raw, "log", LogConfig)

    udp_d, http_d, agg_d, q_d = UdpConfig(), HttpConfig(), AggregationConfig(), QueryConfig()
    udp = UdpConfig(
        enabled=_bool(u.get("enabled", udp_d.enabled), "udp.enabled"),
        listen=_listen(u.get("listen", udp_d.listen), "udp.listen"),
        tenant=_str(u.get("tenant", udp_d.tenant), "udp.tenant"),
        queue_size=_int(u.get("queue_size", udp_d.queue_size), "udp.queue_size", 1),
        read_buffer=_int(u.get("read_buffer", udp_d.read_buffer), "udp.read_buffer", 0),
    )
    statsd = StatsdConfig(
        gauge_sign=_choice(sd.get("gauge_sign", "delta"), "statsd.gauge_sign", GAUGE_SIGNS),
        name_sanitising=_choice(
            sd.get("name_sanitising", "statsd"), "statsd.name_sanitising", SANITISERS
        ),
    )
    http = HttpConfig(
        listen=_listen(h.get("listen", http_d.listen), "http.listen"),
        max_body_bytes=_int(
            h.get("max_body_bytes", http_d.max_body_bytes), "http.max_body_bytes", 1024
        ),
        max_batch_points=_int(
            h.get("max_batch_points", http_d.max_batch_points), "http.max_batch_points", 1
        ),
        read_timeout=_duration(h.get("read_timeout", http_d.read_timeout), "http.read_timeout"),
        tls=_tls(_section(h, "tls", TlsConfig, "http.tls")),
    )
    wal_dir = s.get("wal_dir")
    storage = StorageConfig(
        path=_str(s.get("path", StorageConfig().path), "storage.path"),
        tiers=_tiers(s.get("tiers"), "storage.tiers"),
        retention_check_interval=_duration(
            s.get("retention_check_interval", StorageConfig().retention_check_interval),
            "storage.retention_check_interval",
        ),
        wal=_bool(s.get("wal", True), "storage.wal"),
        wal_dir=None if wal_dir is None else _str(wal_dir, "storage.wal_dir"),
        backfill_memory=_int(
            s.get("backfill_memory", StorageConfig().backfill_memory),
            "storage.backfill_memory",
            1024 * 1024,
        ),
    )
    aggregation = AggregationConfig(
        flush_interval=_duration(
            a.get("flush_interval", agg_d.flush_interval), "aggregation.flush_interval"
        ),
        max_series_per_tenant=_int(
            a.get("max_series_per_tenant", agg_d.max_series_per_tenant),
            "aggregation.max_series_per_tenant",
            1,
        ),
        max_pending_rows=_int(
            a.get("max_pending_rows", agg_d.max_pending_rows), "aggregation.max_pending_rows", 1
        ),
    )
    query = QueryConfig(
        max_points=_int(q.get("max_points", q_d.max_points), "query.max_points", 1),
        timeout=_duration(q.get("timeout", q_d.timeout), "query.timeout"),
        max_sketches=_int(q.get("max_sketches", q_d.max_sketches), "query.max_sketches", 1),
    )
    keys_raw = au.get("keys", [])
    if keys_raw is None:
        keys_raw = []
    if not isinstance(keys_raw, list):
        raise ConfigError("auth.keys", "expected a list")
    keys = tuple(_api_key(k, f"auth.keys[{i}]") for i, k in enumerate(keys_raw))
    seen: set[str] = set()
    for i, k in enumerate(keys):
        if k.sha256 in seen:
            raise ConfigError(f"auth.keys[{i}].sha256", "the same key is listed twice")
        seen.add(k.sha256)
    key_file = au.get("key_file")
    auth = AuthConfig(
        keys=keys, key_file=None if key_file is None else _str(key_file, "auth.key_file")
    )
    level = lg.get("level", LogConfig().level)
    if level not in LOG_LEVELS:
        raise ConfigError("log.level", f"expected one of {', '.join(LOG_LEVELS)}")
    finest = storage.tiers[0].resolution
    if not _multiple(finest, aggregation.flush_interval) or finest < aggregation.flush_interval:
        raise ConfigError(
            "storage.tiers[0].resolution",
            f"must be a multiple of aggregation.flush_interval ({aggregation.flush_interval:g}s)",
        )
    return Config(
        udp=udp,
        tcp=tcp,
        unix=unix,
        statsd=statsd,
        http=http,
        storage=storage,
        aggregation=aggregation,
        query=query,
        auth=auth,
        log=LogConfig(level=level),
    )


def _parse_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("", f"not valid YAML: {e}") from None


def parse_config(text: str) -> Config:
    raw = _parse_yaml(text)
    return config_from_dict(raw if raw is not None else {})


def _read_config_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("", f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError("", f"not UTF-8 text (byte {e.start}: {e.reason})") from None


def load_config(path: str | Path) -> Config:
    return parse_config(_read_config_text(path))


def _sets_nothing(raw: Any) -> bool:
    """True for a document with no setting in it: empty, comments only, or empty sections."""
    if raw is None:
        return True
    return isinstance(raw, dict) and all(v is None or v == {} for v in raw.values())


def load_reload_config(path: str | Path, running: Config) -> Config:
    """The config a reload of `path` may switch to from `running`, or ConfigError.

    On top of what load_config refuses, a reload refuses what is most likely a file caught half
    written or truncated rather than meant: a file that sets nothing, and a file that drops every
    API key while keys are configured (that would turn every client away at once). Starting
    with such a file is still allowed: a restart is a deliberate act, a SIGHUP often is not."""
    raw = _parse_yaml(_read_config_text(path))
    if _sets_nothing(raw):
        raise ConfigError("", "the file sets nothing (empty or truncated?)")
    new = config_from_dict(raw)
    if running.auth.keys and not new.auth.keys:
        raise ConfigError(
            "auth.keys",
            f"the file lists no key while {len(running.auth.keys)} are configured; a reload "
            "never removes every key (restart to run with none)",
        )
    return new


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
