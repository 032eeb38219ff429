"""YAML text → Config: msgspec converts the document into the Structs of shapes.py, its errors
become ConfigErrors naming the key's path (`udp.queue_size: expected an integer >= 1`), and the
checks no single key can make run on the result.

The wording of an error comes from the definition of the key it names (an integer's lower
bound, a choice's values, a section's known keys), so no check is written twice.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeGuard, Union, get_args, get_origin

import msgspec
import psycopg
import yaml

from statsd_gateway.config.shapes import ApiKey, Config, StorageConfig, TierConfig, TlsConfig
from statsd_gateway.config.values import decode_value
from statsd_gateway.errors import ConfigError
from statsd_gateway.mapping import load_rules
from statsd_gateway.shape_errors import Violation
from statsd_gateway.tls import server_context

_STEP_RE = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def config_from_dict(raw: Any) -> Config:
    """A loaded YAML document → Config, or ConfigError naming the first bad key."""
    try:
        cfg = msgspec.convert(_defaults_for_empty(raw, Config), Config, dec_hook=decode_value)
    except msgspec.ValidationError as e:
        raise _config_error(e) from None
    _check_tiers(cfg)
    _check_tls(cfg.http.tls)
    _check_postgresql(cfg)
    _check_keys(cfg.auth.keys)
    if cfg.statsd.mapping_file is not None:  # read again by the gateway, as the TLS files are
        try:
            load_rules(cfg.statsd.mapping_file)
        except ConfigError as e:
            raise ConfigError("statsd.mapping_file", str(e)) from None
    return cfg


def _defaults_for_empty(raw: Any, section: type[msgspec.Struct]) -> Any:
    """YAML's empty value for a section or a list (`udp:` or `tiers:` with nothing under it)
    means its default, as it reads; a scalar key left empty is still an error."""
    if not isinstance(raw, dict):
        return raw
    hints = {f.name: _bare(f.type)[0] for f in msgspec.structs.fields(section)}
    out: dict[Any, Any] = {}
    for key, value in raw.items():
        hint = hints.get(key) if isinstance(key, str) else None
        item = _item_type(hint)
        # Only sections and lists of sections: an empty list of scalars (a key's `scopes:`)
        # is refused, never widened to the default.
        if value is None and (_is_section(hint) or _is_section(item)):
            continue
        if _is_section(hint):
            value = _defaults_for_empty(value, hint)
        elif _is_section(item) and isinstance(value, list):
            value = [_defaults_for_empty(v, item) for v in value]
        out[key] = value
    return out


def _is_section(hint: Any) -> TypeGuard[type[msgspec.Struct]]:
    return isinstance(hint, type) and issubclass(hint, msgspec.Struct)


def _item_type(hint: Any) -> Any:
    """X of tuple[X, ...]; None for any other type."""
    return get_args(hint)[0] if get_origin(hint) is tuple else None


def _bare(hint: Any) -> tuple[Any, list[msgspec.Meta]]:
    """The type under its Annotated and its `| None`, with the Metas found on the way."""
    metas: list[msgspec.Meta] = []
    while True:
        origin = get_origin(hint)
        if origin is Annotated:
            hint, *extras = get_args(hint)
            metas += [m for m in extras if isinstance(m, msgspec.Meta)]
        elif origin in (Union, UnionType):
            others = [a for a in get_args(hint) if a is not type(None)]
            if len(others) != 1:
                return hint, metas
            hint = others[0]
        else:
            return hint, metas


def _config_error(error: msgspec.ValidationError) -> ConfigError:
    v = Violation.of(error)
    if v.in_key:
        return ConfigError(v.path, "keys must be strings")
    if v.missing:
        return ConfigError(v.path, "required")
    if v.unknown:
        section = _type_at(v.path.rpartition(".")[0])[0]
        known = sorted(f.name for f in msgspec.structs.fields(section))
        return ConfigError(v.path, f"unknown key (known: {', '.join(known)})")
    return ConfigError(v.path, _expected(*_type_at(v.path)) or v.what)


def _type_at(path: str) -> tuple[Any, list[msgspec.Meta]]:
    """The declared type of the key at `path` (`storage.tiers[0].retention`), bare."""
    hint: Any = Config
    metas: list[msgspec.Meta] = []
    for name, index in _STEP_RE.findall("." + path if path else ""):
        if index:
            hint = _item_type(hint)
        else:
            hint = next(f.type for f in msgspec.structs.fields(hint) if f.name == name)
        hint, metas = _bare(hint)
    return hint, metas


def _expected(hint: Any, metas: list[msgspec.Meta]) -> str | None:
    """What a key of this type takes, in words; None for the value types of values.py, whose
    own message says it."""
    ge = next((m.ge for m in metas if m.ge is not None), None)
    le = next((m.le for m in metas if m.le is not None), None)
    non_empty = any(m.min_length for m in metas)
    item = _item_type(hint)
    if hint is bool:
        return "expected true or false"
    if hint is int and ge is not None and le is not None:
        return f"expected an integer from {ge} to {le}"
    if hint is int:
        return "expected an integer" + (f" >= {ge}" if ge is not None else "")
    if hint is str:
        return "expected a non-empty string" if non_empty else "expected a string"
    if get_origin(hint) is Literal:
        return f"expected one of {', '.join(map(str, get_args(hint)))}"
    if _is_section(hint):
        return "expected a mapping"
    if item is None:
        return None
    if _is_section(item):
        what = "{" + ", ".join(f.name for f in msgspec.structs.fields(item)) + "}"
    elif get_origin(item) is Literal:
        what = ", ".join(map(str, get_args(item)))
    else:
        return "expected a list"
    return f"expected a {'non-empty ' if non_empty else ''}list of {what}"


def _check_tiers(cfg: Config) -> None:
    tiers = cfg.storage.tiers
    prev: TierConfig | None = None
    for i, tier in enumerate(tiers):
        res, ret = tier.resolution, tier.retention
        if ret < res:
            raise ConfigError(f"storage.tiers[{i}].retention", "must be at least the resolution")
        if prev is not None:
            if res <= prev.resolution or not _multiple(res, prev.resolution):
                raise ConfigError(
                    f"storage.tiers[{i}].resolution",
                    f"must be a multiple of the previous tier's ({prev.resolution:g}s) and larger",
                )
            if prev.retention < res:
                raise ConfigError(
                    f"storage.tiers[{i - 1}].retention",
                    f"must be at least the next tier's resolution ({res:g}s): the open bucket "
                    "of a tier is rebuilt from the tier below after a restart",
                )
        prev = tier
    finest, flush = tiers[0].resolution, cfg.aggregation.flush_interval
    if not _multiple(finest, flush) or finest < flush:
        raise ConfigError(
            "storage.tiers[0].resolution",
            f"must be a multiple of aggregation.flush_interval ({flush:g}s)",
        )


def _multiple(a: float, b: float) -> bool:
    q = a / b
    return abs(q - round(q)) < 1e-9


def _check_postgresql(cfg: Config) -> None:
    """The DSN parses, and a password file is readable, when PostgreSQL is the backend."""
    if cfg.storage.backend != "postgresql":
        return
    pg = cfg.storage.postgresql
    try:
        psycopg.conninfo.conninfo_to_dict(pg.dsn)
    except psycopg.ProgrammingError:
        # The message could quote the DSN, password and all: say only what is wrong.
        raise ConfigError(
            "storage.postgresql.dsn", "is not a libpq URI or key=value string"
        ) from None
    if pg.password_file is not None:
        try:
            Path(pg.password_file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError("storage.postgresql.password_file", f"cannot be read: {e}") from None


def _check_tls(tls: TlsConfig) -> None:
    for k, other in (("cert_file", "key_file"), ("key_file", "cert_file")):
        if getattr(tls, k) is None and getattr(tls, other) is not None:
            raise ConfigError(f"http.tls.{k}", f"required with http.tls.{other}")
    if tls.cert_file is not None and tls.key_file is not None:
        server_context(tls.cert_file, tls.key_file)  # ConfigError naming the file's key


def _check_keys(keys: tuple[ApiKey, ...]) -> None:
    seen: set[str] = set()
    for i, k in enumerate(keys):
        if k.sha256 in seen:
            raise ConfigError(f"auth.keys[{i}].sha256", "the same key is listed twice")
        seen.add(k.sha256)


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


def settings_needing_restart(old: Config, new: Config) -> list[str]:
    """The settings a reload from `old` to `new` changed that take effect only after a restart
    (a reload applies the rest; Gateway.reload logs each of these)."""
    needs_restart = []
    for path, before, after in (
        ("udp", old.udp, new.udp),
        ("tcp", old.tcp, new.tcp),
        ("unix", old.unix, new.unix),
        ("statsd.gauge_sign", old.statsd.gauge_sign, new.statsd.gauge_sign),
        ("statsd.name_sanitising", old.statsd.name_sanitising, new.statsd.name_sanitising),
        ("exporter", old.exporter, new.exporter),
        ("relay", old.relay, new.relay),
        ("http.listen", old.http.listen, new.http.listen),
        ("http.max_body_bytes", old.http.max_body_bytes, new.http.max_body_bytes),
        ("http.tls", old.http.tls.enabled, new.http.tls.enabled),
        *(
            (f"storage.{f.name}", getattr(old.storage, f.name), getattr(new.storage, f.name))
            for f in msgspec.structs.fields(StorageConfig)
        ),
        (
            "aggregation.flush_interval",
            old.aggregation.flush_interval,
            new.aggregation.flush_interval,
        ),
    ):
        if before != after:
            needs_restart.append(path)
    return needs_restart
