"""The mapping file (`statsd.mapping_file`): statsd_exporter's mapping schema, parsed strictly,
resolved into the rules mapping.py applies and the record each rule gives its series.

Contract:
- `load_mapping_file(path)` reads YAML text into the Structs below with msgspec; an unknown key,
  a wrong type or a value out of range is a ConfigError naming its place in the file
  (`mappings[2].lables: unknown key (known: …)`), and so is what no single key says: summary
  options on a histogram rule, legacy and current options both set, buckets that do not
  increase, a rule without a name, `scale` (not supported). What compiling the rules finds (a
  bad regex or glob, a capture a template refers to that its match does not have) is
  mapping.py's to say, in the same form.
- Every key of statsd_exporter's schema is accepted (the legacy `timer_type`, top-level
  `buckets` and `quantiles`, `timer` as a metric type, included), so a migrating user's file
  loads unchanged unless it scales values.
- Defaults are resolved here, as statsd_exporter resolves them, into one `SeriesOptions` per
  rule: what the Prometheus scrape reads of each series (observer type, quantiles, buckets,
  TTL, help). Nothing in this module matches a name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec
import yaml
from msgspec import Meta

from statsd_gateway.errors import ConfigError
from statsd_gateway.model import TAG_KEY_MAX, MetricType
from statsd_gateway.shape_errors import Violation

ObserverType = Literal["summary", "histogram"]
MetricTypeName = Literal["counter", "gauge", "observer", "timer", "set"]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]

# What match_metric_type selects: statsd_exporter's observers are our three sketch types;
# `timer` is its old name for them, `set` ours (statsd_exporter has no sets).
_OBSERVERS = frozenset({MetricType.TIMING, MetricType.HISTOGRAM, MetricType.DISTRIBUTION})
METRIC_TYPES: dict[str, frozenset[MetricType]] = {
    "counter": frozenset({MetricType.COUNTER}),
    "gauge": frozenset({MetricType.GAUGE}),
    "observer": _OBSERVERS,
    "timer": _OBSERVERS,
    "set": frozenset({MetricType.SET}),
}
# The Prometheus client's defaults, which statsd_exporter falls back on.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEFAULT_QUANTILES = ((0.5, 0.05), (0.9, 0.01), (0.99, 0.001))
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GO_DURATION = re.compile(r"(?:[0-9]*\.?[0-9]+(?:ns|us|µs|μs|ms|s|m|h))+")
_GO_UNIT = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
             "h": 3600.0}  # fmt: skip


class GoDuration(float):
    """A duration as Go writes it (`30s`, `1m30s`, `1.5h`, `0`), in seconds."""

    __slots__ = ()


def parse_go_duration(obj: Any) -> GoDuration:
    """Go's time.ParseDuration, non-negative: a number needs a unit, but for 0."""
    if obj in (0, "0") and not isinstance(obj, bool):
        return GoDuration(0.0)
    if not isinstance(obj, str) or not _GO_DURATION.fullmatch(obj):
        raise ValueError(f"{obj!r} is not a duration such as 30s, 1m30s or 1.5h")
    return GoDuration(sum(float(n) * _GO_UNITS[u] for n, u in _GO_UNIT.findall(obj)))


def _decode(cls: type, obj: Any) -> Any:
    if cls is GoDuration:
        return parse_go_duration(obj)
    raise NotImplementedError(cls.__name__)


class _Shape(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A mapping of the file: strict keys."""


class Objective(_Shape, frozen=True):
    quantile: Fraction
    error: Fraction = 0.0


class SummaryOptionsShape(_Shape, frozen=True):
    quantiles: tuple[Objective, ...] | None = None
    max_age: GoDuration | None = None
    age_buckets: Annotated[int, Meta(ge=0)] | None = None
    buf_cap: Annotated[int, Meta(ge=0)] | None = None


class HistogramOptionsShape(_Shape, frozen=True):
    buckets: tuple[float, ...] | None = None
    native_histogram_bucket_factor: Annotated[float, Meta(ge=1.0)] | None = None
    native_histogram_max_buckets: Annotated[int, Meta(ge=0)] | None = None


class _Observed(_Shape, frozen=True):
    """The keys a rule and the defaults share: how the scrape shows a series."""

    observer_type: ObserverType | None = None
    timer_type: ObserverType | None = None  # the old name of observer_type
    ttl: GoDuration | None = None
    summary_options: SummaryOptionsShape | None = None
    histogram_options: HistogramOptionsShape | None = None
    buckets: tuple[float, ...] | None = None  # the old place of histogram_options.buckets
    quantiles: tuple[Objective, ...] | None = None  # ... of summary_options.quantiles


class DefaultsShape(_Observed, frozen=True):
    match_type: Literal["glob", "regex"] = "glob"
    glob_disable_ordering: bool = False


class MappingShape(_Observed, frozen=True, kw_only=True):
    match: Annotated[str, Meta(min_length=1)]
    name: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    honor_labels: bool = False
    match_type: Literal["glob", "regex"] | None = None
    match_metric_type: MetricTypeName | None = None
    action: Literal["map", "drop"] = "map"
    help: str | None = None
    scale: float | None = None  # refused: values are stored as sent


class MappingFileShape(_Shape, frozen=True):
    defaults: DefaultsShape = DefaultsShape()
    mappings: tuple[MappingShape, ...] = ()


@dataclass(frozen=True, slots=True)
class SeriesOptions:
    """What the Prometheus scrape will read of a series a rule mapped (`rule`: its index in
    the file, -1 for the defaults that series no rule matched take): how an observer is shown
    (a summary of `quantiles` (quantile, error) over `max_age` in `age_buckets`, or a histogram
    of `buckets`), after how long without a point it leaves the scrape (`ttl`; None: never),
    and its HELP text. Shared by every series of a rule; never changed."""

    rule: int
    observer_type: ObserverType
    quantiles: tuple[tuple[float, float], ...]
    max_age: float
    age_buckets: int
    buf_cap: int
    buckets: tuple[float, ...]
    native_histogram_bucket_factor: float
    native_histogram_max_buckets: int
    ttl: float | None
    help: str | None


@dataclass(frozen=True, slots=True)
class MappingFile:
    """A loaded file: its text (a reload of the same text changes nothing), the defaults that
    apply where no rule matches, and its rules in file order with their options."""

    text: str
    shape: MappingFileShape
    defaults: SeriesOptions
    options: tuple[SeriesOptions, ...]


def load_mapping_file(path: str | Path) -> MappingFile:
    """The file at `path`, or ConfigError naming the place in it that is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("", f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError("", f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    try:
        return parse_mapping_file(text)
    except ConfigError as e:
        raise ConfigError("", f"{path}: {e}") from None


def parse_mapping_file(text: str) -> MappingFile:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("", f"not valid YAML: {e}") from None
    try:
        shape = msgspec.convert(_as_go_reads(raw), MappingFileShape, dec_hook=_decode)
    except msgspec.ValidationError as e:
        raise _file_error(e) from None
    base = _options(shape.defaults, None, None, "defaults", -1)
    kind = _one(shape.defaults, "observer_type", "timer_type", "defaults")
    options = []
    for i, m in enumerate(shape.mappings):
        _check_rule(m, f"mappings[{i}]")
        options.append(_options(m, base, kind, f"mappings[{i}]", i))
    return MappingFile(text, shape, base, tuple(options))


def _as_go_reads(raw: Any) -> Any:
    """The document as statsd_exporter's YAML decoder reads it where PyYAML's types differ: an
    empty `mappings:`, `defaults:` or `labels:` is none, and a label value YAML reads as a
    number or a boolean (`code: 200`) is its text."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        return raw
    out = {k: v for k, v in raw.items() if not (k in ("mappings", "defaults") and v is None)}
    if isinstance(out.get("mappings"), list):
        out["mappings"] = [_rule_as_go_reads(m) for m in out["mappings"]]
    return out


def _rule_as_go_reads(m: Any) -> Any:
    if not isinstance(m, dict) or "labels" not in m:
        return m
    labels = m["labels"]
    if labels is None:
        return {k: v for k, v in m.items() if k != "labels"}
    if isinstance(labels, dict):
        text = {True: "true", False: "false"}
        labels = {
            k: text[v] if isinstance(v, bool) else str(v) if isinstance(v, int | float) else v
            for k, v in labels.items()
        }
    return {**m, "labels": labels}


def _check_rule(m: MappingShape, where: str) -> None:
    if m.scale is not None:
        raise ConfigError(f"{where}.scale", "not supported: values are stored as they are sent")
    if m.action == "map" and not m.name:
        raise ConfigError(f"{where}.name", "required (the series' new name)")
    for key in m.labels:
        if not _LABEL_NAME.fullmatch(key) or len(key) > TAG_KEY_MAX:
            raise ConfigError(
                f"{where}.labels.{key}", "a label name is [A-Za-z_][A-Za-z0-9_]*, at most 100"
            )


def _options(
    own: _Observed,
    base: SeriesOptions | None,
    default_kind: ObserverType | None,
    where: str,
    index: int,
) -> SeriesOptions:
    """The options of a rule (`base`: the defaults' options) or of the defaults (`base` None):
    each unset one is the defaults', or else statsd_exporter's own default."""
    kind = _one(own, "observer_type", "timer_type", where) or default_kind
    if base is not None and kind == "histogram" and own.summary_options is not None:
        raise ConfigError(f"{where}.summary_options", "not with observer_type histogram")
    if base is not None and kind == "summary" and own.histogram_options is not None:
        raise ConfigError(f"{where}.histogram_options", "not with observer_type summary")
    s, h = own.summary_options, own.histogram_options
    quantiles = _one_of(s, "summary_options", "quantiles", own.quantiles, where)
    buckets = _one_of(h, "histogram_options", "buckets", own.buckets, where)
    if buckets is not None and any(b <= a for a, b in pairwise(buckets)):
        raise ConfigError(f"{where}.histogram_options.buckets", "must increase")

    def pick(mine: Any, field: str, fallback: Any) -> Any:
        if mine is not None:
            return mine
        return fallback if base is None else getattr(base, field)

    objectives = None if quantiles is None else tuple((q.quantile, q.error) for q in quantiles)
    return SeriesOptions(
        rule=index,
        observer_type=kind or "summary",
        quantiles=pick(objectives, "quantiles", DEFAULT_QUANTILES),
        max_age=pick(s and s.max_age, "max_age", 600.0),
        age_buckets=pick(s and s.age_buckets, "age_buckets", 5),
        buf_cap=pick(s and s.buf_cap, "buf_cap", 500),
        buckets=pick(buckets, "buckets", DEFAULT_BUCKETS),
        native_histogram_bucket_factor=pick(
            h and h.native_histogram_bucket_factor, "native_histogram_bucket_factor", 1.1
        ),
        native_histogram_max_buckets=pick(
            h and h.native_histogram_max_buckets, "native_histogram_max_buckets", 256
        ),
        # 0 is "never"; a rule's 0 (or none) takes the defaults' TTL, as statsd_exporter's does.
        ttl=pick(own.ttl or None, "ttl", None),
        help=own.help if isinstance(own, MappingShape) else None,
    )


def _one(own: _Observed, key: str, legacy: str, where: str) -> ObserverType | None:
    new, old = getattr(own, key), getattr(own, legacy)
    if new is not None and old is not None and new != old:
        raise ConfigError(f"{where}.{legacy}", f"the old name of {key}, which says {new}")
    result: ObserverType | None = new if new is not None else old
    return result


def _one_of(options: Any, section: str, key: str, legacy: Any, where: str) -> Any:
    """`summary_options.quantiles` or the old top-level `quantiles` (likewise buckets)."""
    current = getattr(options, key) if options is not None else None
    if current is not None and legacy is not None:
        raise ConfigError(f"{where}.{key}", f"the old place of {section}.{key}, set as well")
    return current if current is not None else legacy


def _file_error(error: msgspec.ValidationError) -> ConfigError:
    v = Violation.of(error)
    if v.in_key:
        return ConfigError(v.path, "keys must be strings")
    if v.missing:
        return ConfigError(v.path, "required")
    if v.unknown:
        shape = _type_at(v.path.rpartition(".")[0])
        known = sorted(f.name for f in msgspec.structs.fields(shape))
        return ConfigError(v.path, f"unknown key (known: {', '.join(known)})")
    hint = _type_at(v.path)
    if get_origin(hint) is Literal:
        return ConfigError(v.path, f"expected one of {', '.join(get_args(hint))}")
    return ConfigError(v.path, v.what)


def _type_at(path: str) -> Any:
    """The declared type at a dotted path of the file (`mappings[0].summary_options`), bare."""
    hint: Any = MappingFileShape
    for name, index in re.findall(r"\.?([^.\[]+)|\[(\d+)\]", path):
        if index:
            hint = get_args(hint)[0]
        elif isinstance(hint, type) and issubclass(hint, msgspec.Struct):
            hint = next(f.type for f in msgspec.structs.fields(hint) if f.name == name)
        hint = _bare(hint)
    return hint


def _bare(hint: Any) -> Any:
    while True:
        args = [a for a in get_args(hint) if a is not type(None)]
        if get_origin(hint) is Annotated:
            hint = args[0]
        elif get_origin(hint) not in (Literal, tuple, dict, None) and len(args) == 1:
            hint = args[0]  # X | None
        else:
            return hint
