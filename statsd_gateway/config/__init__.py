"""Configuration, parsed strictly from YAML text.

- shapes.py: the definitions: one frozen msgspec Struct per section, each key's type, limits
  and default (the only place defaults live).
- values.py: the text forms that are more than a YAML scalar (durations, listen and peer
  addresses, socket modes, key digests).
- loading.py: YAML → Config; unknown keys and bad values raise ConfigError naming the key's
  path (`udp.listen`, `auth.keys[0].sha256`); the checks across keys; what a reload refuses.
"""

from statsd_gateway.config.loading import (
    config_from_dict,
    load_config,
    load_reload_config,
    parse_config,
    settings_needing_restart,
)
from statsd_gateway.config.shapes import (
    DEFAULT_TIERS,
    LOG_LEVELS,
    SCOPES,
    AggregationConfig,
    ApiKey,
    AuthConfig,
    Config,
    ExporterConfig,
    HttpConfig,
    LogConfig,
    QueryConfig,
    RelayConfig,
    StatsdConfig,
    StorageConfig,
    TcpConfig,
    TierConfig,
    TlsConfig,
    UdpConfig,
    UnixConfig,
)
from statsd_gateway.config.values import (
    MAX_DURATION,
    Seconds,
    hash_key,
    parse_duration,
    parse_listen,
    parse_mode,
)
from statsd_gateway.errors import ConfigError

__all__ = [
    "DEFAULT_TIERS",
    "LOG_LEVELS",
    "MAX_DURATION",
    "SCOPES",
    "AggregationConfig",
    "ApiKey",
    "AuthConfig",
    "Config",
    "ConfigError",
    "ExporterConfig",
    "HttpConfig",
    "LogConfig",
    "QueryConfig",
    "RelayConfig",
    "Seconds",
    "StatsdConfig",
    "StorageConfig",
    "TcpConfig",
    "TierConfig",
    "TlsConfig",
    "UdpConfig",
    "UnixConfig",
    "config_from_dict",
    "hash_key",
    "load_config",
    "load_reload_config",
    "parse_config",
    "parse_duration",
    "parse_listen",
    "parse_mode",
    "settings_needing_restart",
]
