"""StatsD text → samples, plus rejects by reason. Pure: no I/O, no clock, no logging.

Grammar accepted (DESIGN.md §3), one line per metric, several lines per datagram:

    name[,k=v…]:value[:value…]|type[|@rate][|#tag,k:v…][|T<unix>][|c:…][|e:…][|card:…]

- type is one of c g ms h d s; a gauge value with a leading + or - is a change of the current value.
- DogStatsD packed values (`a:1:2:3|ms`) give one sample each; empty packed values are skipped.
- `#` sections (several merge) hold DogStatsD tags, split at the first `:`; a bare tag has value "".
  Influx/Telegraf tags ride on the name: `name,k=v,k2=v2`.
- `c:`, `e:`, `card:` sections are accepted and ignored; other unknown sections are ignored and
  counted. Events `_e{…}` and service checks `_sc|…` are counted, not stored.
- Names are sanitised as Etsy statsd does: whitespace runs → `_`, `/` → `-`, anything outside
  `A-Za-z0-9_.-` dropped.

Each observation becomes a `Sample` (model.py; re-exported here), a NamedTuple.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from statsd_gateway.model import (
    NAME_MAX,
    SAMPLE_RATE_MIN,
    STATSD_TYPES,
    TAG_KEY_MAX,
    TAG_VALUE_MAX,
    TAGS_MAX,
    VALUE_ABS_MAX,
    MetricType,
    Tags,
)
from statsd_gateway.model import Sample as Sample

if TYPE_CHECKING:
    from statsd_gateway.mapping import Answer, Mapper
    from statsd_gateway.mapping_file import SeriesOptions

# Builds a Sample from a tuple at C speed: calling the NamedTuple class runs a Python-level
# __new__ that costs about as much again, once per value on the hot path.
_new_sample = tuple.__new__

# Reject reasons (snake_case; each is a self-metric label).
MALFORMED_LINE = "malformed_line"
EMPTY_NAME = "empty_name"
NAME_TOO_LONG = "name_too_long"
EMPTY_VALUE = "empty_value"
INVALID_VALUE = "invalid_value"
NON_FINITE_VALUE = "non_finite_value"
UNKNOWN_TYPE = "unknown_type"
INVALID_SAMPLE_RATE = "invalid_sample_rate"
INVALID_TIMESTAMP = "invalid_timestamp"
INVALID_TAGS = "invalid_tags"
INVALID_UTF8 = "invalid_utf8"
LINE_TOO_LONG = "line_too_long"
MIXED_TAG_STYLES = "mixed_tag_styles"
NAME_WITHOUT_ALNUM = "name_without_letter_or_digit"
REJECT_REASONS = (
    MALFORMED_LINE,
    EMPTY_NAME,
    NAME_TOO_LONG,
    NAME_WITHOUT_ALNUM,
    EMPTY_VALUE,
    INVALID_VALUE,
    NON_FINITE_VALUE,
    UNKNOWN_TYPE,
    INVALID_SAMPLE_RATE,
    INVALID_TIMESTAMP,
    INVALID_TAGS,
    INVALID_UTF8,
    LINE_TOO_LONG,
    MIXED_TAG_STYLES,
)

GAUGE_SIGNS = ("delta", "absolute")
SANITISERS = ("statsd", "none", "prometheus")

MAX_LINE_BYTES = 8192
_SANITISE_WS = re.compile(r"\s+")
_SANITISE_DROP = re.compile(r"[^A-Za-z0-9_.\-]")
_IGNORED_SECTION_PREFIXES = ("c:", "e:", "card:")
_KEY_CACHE_MAX = 100_000
_UNCACHED_TYPES = frozenset({MetricType.TIMING, MetricType.HISTOGRAM, MetricType.DISTRIBUTION})
_LINE_CACHE_MAX = 50_000


class LineError(Exception):
    """Internal: a line is rejected for `reason`. Never leaves the parser (this module and the
    mapping rules it applies, mapping.py)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(slots=True)
class ParseResult:
    samples: list[Sample] = field(default_factory=list)
    rejects: list[tuple[str, str]] = field(default_factory=list)  # (reason, line)
    lines: int = 0
    events: int = 0
    service_checks: int = 0
    unknown_sections: int = 0


def sanitise_name(name: str) -> str:
    """Etsy statsd's rules."""
    if name.isascii() and name.replace(".", "").replace("_", "").replace("-", "").isalnum():
        return name
    return _SANITISE_DROP.sub("", _SANITISE_WS.sub("_", name).replace("/", "-"))


def sanitise_prometheus(name: str) -> str:
    """statsd_exporter's rules: anything outside [A-Za-z0-9_:] becomes `_`, no leading digit."""
    name = _PROM_INVALID.sub("_", name)
    return "_" + name if name[:1].isdigit() else name


_SANITISE_FUNCS: dict[str, Callable[[str], str]] = {
    "statsd": sanitise_name,
    "none": str.strip,
    "prometheus": sanitise_prometheus,
}
_PROM_INVALID = re.compile(r"[^A-Za-z0-9_:]")


def clean_name(raw: str, sanitise: Callable[[str], str]) -> tuple[str, str | None]:
    """The one rule for a metric name, whatever it came in by (StatsD or JSON): stripped,
    cleaned by the configured sanitiser, then at most NAME_MAX characters with at least one letter
    or digit left (a name of dots or dashes alone names nothing anyone could ask for). Returns
    the cleaned name and None, or the reject reason."""
    name = sanitise(raw.strip())
    if not name:
        return name, EMPTY_NAME
    if len(name) > NAME_MAX:
        return name, NAME_TOO_LONG
    if not any(c.isalnum() for c in name):
        return name, NAME_WITHOUT_ALNUM
    return name, None


def validated_tags(pairs: list[tuple[str, str]]) -> Tags:
    tags = tuple(sorted(dict(pairs).items()))
    if len(tags) > TAGS_MAX:
        raise LineError(INVALID_TAGS)
    for k, v in tags:
        if not k or len(k) > TAG_KEY_MAX or len(v) > TAG_VALUE_MAX:
            raise LineError(INVALID_TAGS)
    return tags


def _is_multi_metric(rest: str) -> bool:
    """Etsy's `v|t[|@r]:v|t…` (a:1|c|@0.5:2|c) as opposed to a DogStatsD line whose later
    sections hold colons (`|#env:prod`, `|c:container`): every colon-separated segment must
    itself be `value|type…`."""
    segments = rest.split(":")
    return all("|" in s and s.split("|", 2)[1] in STATSD_TYPES and "#" not in s for s in segments)


def _kv_pairs(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise LineError(INVALID_TAGS)
        pairs.append((k, v))
    return pairs


def _plain_number(text: str) -> bool:
    """Python's float() and int() also take `1_000`, ` 1 ` and non-ASCII digits (`１`);
    StatsD does not."""
    return text.isascii() and "_" not in text and text == text.strip()


def _parse_float(text: str) -> float:
    # Called once per value: _plain_number is inlined, and one chained comparison rejects NaN
    # (it compares false), the infinities and magnitudes past VALUE_ABS_MAX.
    if not text:
        raise LineError(EMPTY_VALUE)
    try:
        v = float(text)
    except ValueError:
        raise LineError(INVALID_VALUE) from None
    if not text.isascii() or "_" in text or text != text.strip():
        raise LineError(INVALID_VALUE)
    if not -VALUE_ABS_MAX <= v <= VALUE_ABS_MAX:
        raise LineError(NON_FINITE_VALUE)
    return v


class StatsdParser:
    """Parses datagrams.

    Clients repeat the same lines (`hits:1|c`) and the same few series millions of times, so two
    bounded caches skip the work already done: whole lines that gave one sample → that sample
    (samples are immutable tuples), and name/tag sections → the validated (name, tags).

    With mapping rules (`mapper`, mapping.py), a line's series is what the rules make of its
    name and tags, by its type; the answers, refusals included, are cached in the Mapper (keyed
    by type, name section and tag text), so a new Mapper (set_mapper, a reload) starts afresh.
    """

    def __init__(
        self, *, gauge_sign: str = "delta", sanitise: str = "statsd", mapper: Mapper | None = None
    ) -> None:
        """gauge_sign: `delta` (Etsy: `+3`/`-3` change the current value) or `absolute`
        (DogStatsD: a signed value is the value). sanitise: `statsd`, `none` or `prometheus`."""
        if gauge_sign not in GAUGE_SIGNS or sanitise not in SANITISERS:
            raise ValueError(f"gauge_sign {gauge_sign!r} / sanitise {sanitise!r}")
        self._gauge_delta = gauge_sign == "delta"
        self.sanitise = _SANITISE_FUNCS[sanitise]  # HTTP names are cleaned by it too
        self._keys: dict[tuple[str, str], tuple[str, Tags]] = {}
        self._lines: dict[str, Sample] = {}
        self.mapper = mapper

    def set_mapper(self, mapper: Mapper | None) -> None:
        """Lines parsed from now on are mapped by `mapper` (None: no rules). The cache of whole
        lines holds mapped samples, so it starts again; the native core's caches are the
        caller's to drop (native.NativeLive.forget)."""
        self.mapper = mapper
        self._lines = {}

    def mapped_options(self, name: str, tags: Tags) -> SeriesOptions | None:
        """The options of the rule that made the series (name, tags), if a rule did (for the
        series registry at admission)."""
        mapper = self.mapper
        return None if mapper is None else mapper.options_of(name, tags)

    def parse(self, data: bytes) -> ParseResult:
        result = ParseResult()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self._parse_lines_one_by_one(data, result)
            return result
        # Hot loop: the cache hit path is inlined on purpose.
        cached = self._lines.get
        append = result.samples.append
        for line in text.split("\n"):
            sample = cached(line)
            if sample is not None:
                result.lines += 1
                append(sample)
            elif line:
                self._parse_line(line, result)
        return result

    def _parse_lines_one_by_one(self, data: bytes, result: ParseResult) -> None:
        # Only the invalid lines are lost: decode line by line.
        for raw in data.split(b"\n"):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                result.lines += 1
                result.rejects.append((INVALID_UTF8, raw.decode("utf-8", "replace")))
                continue
            self._parse_line(line, result)

    def _parse_line(self, line: str, result: ParseResult) -> None:
        if not line:
            return
        raw = line
        if line.endswith("\r"):
            line = line[:-1]
            if not line:
                return
        result.lines += 1
        try:
            # A character is at most 4 bytes: only long lines need encoding to be measured.
            if len(line) > MAX_LINE_BYTES // 4 and len(line.encode("utf-8")) > MAX_LINE_BYTES:
                raise LineError(LINE_TOO_LONG)
            if line[0] == "_":
                if line.startswith("_e{"):
                    result.events += 1
                    return
                if line.startswith("_sc|"):
                    result.service_checks += 1
                    return
            before = len(result.samples)
            unknown = result.unknown_sections
            self._parse_metric(line, result)
            # Cache only lines whose whole outcome is their one sample, and not timings: their
            # values rarely repeat, so caching them would only churn the cache.
            if (
                len(result.samples) == before + 1
                and result.unknown_sections == unknown
                and result.samples[-1].type not in _UNCACHED_TYPES
            ):
                if len(self._lines) >= _LINE_CACHE_MAX:
                    self._lines.clear()
                self._lines[raw] = result.samples[-1]
        except LineError as e:
            result.rejects.append((e.reason, line))

    def _parse_metric(self, line: str, result: ParseResult) -> None:
        # Hot loop: kept in one function on purpose (a call per line costs ~10 % here).
        head, sep, rest = line.partition(":")
        if not sep:
            raise LineError(MALFORMED_LINE)
        # Etsy's multi-metric `1|c:2|c`: its first segment (up to the first colon) holds a pipe
        # and no `#`. Checked here before the whole line is (a call and a split), since a
        # DogStatsD line's tags hold colons too (`1:2|ms|#a:b`, `1|c|#a:b`).
        colon = rest.find(":")
        if colon > rest.find("|") and rest.find("#", 0, colon) < 0 and _is_multi_metric(rest):
            self._parse_multi(head, rest, result)
            return
        sections = rest.split("|")
        if len(sections) < 2:
            raise LineError(MALFORMED_LINE)
        mtype = STATSD_TYPES.get(sections[1])
        if mtype is None:
            raise LineError(UNKNOWN_TYPE if sections[1] else MALFORMED_LINE)
        rate = 1.0
        ts: float | None = None
        tag_text = ""
        unknown = 0  # counted only if the line is accepted
        if len(sections) > 2:
            tag_parts: list[str] = []
            for s in sections[2:]:
                if not s:
                    continue
                c = s[0]
                if c == "#":
                    tag_parts.append(s[1:])
                elif c == "@":
                    try:
                        rate = float(s[1:])
                    except ValueError:
                        raise LineError(INVALID_SAMPLE_RATE) from None
                    if not SAMPLE_RATE_MIN <= rate <= 1.0 or not _plain_number(s[1:]):
                        raise LineError(INVALID_SAMPLE_RATE)
                elif c == "T":
                    try:
                        ts = float(int(s[1:]))
                    except (ValueError, OverflowError):  # `T` + 400 digits: past a double
                        raise LineError(INVALID_TIMESTAMP) from None
                    if ts <= 0 or not _plain_number(s[1:]):
                        raise LineError(INVALID_TIMESTAMP)
                elif s.startswith(_IGNORED_SECTION_PREFIXES):
                    pass
                else:
                    unknown += 1
            tag_text = ",".join(tag_parts)
        mapper = self.mapper
        if mapper is None:
            key = self._keys.get((head, tag_text))
            if key is None:
                key = self._key(head, tag_text)
        else:
            mapped = mapper.keys.get((mtype, head, tag_text))
            if mapped is None:
                mapped = self._mapped_key(mapper, mtype, head, tag_text)
            if isinstance(mapped, str):
                raise LineError(mapped)
            key = mapped
        name, tags = key

        raw_value = sections[0]
        # A set member is kept whole (`user:1` is one member); other types may be packed.
        if ":" in raw_value and mtype is not MetricType.SET:
            values: list[str] | tuple[str] = raw_value.split(":")
        else:
            values = (raw_value,)
        append = result.samples.append
        present = values
        if "" in values:  # empty packed values are skipped (a comprehension costs, seldom needed)
            present = [v for v in values if v]
            if not present:
                raise LineError(EMPTY_VALUE)
        if mtype is MetricType.SET:
            parsed = None
        elif len(present) == 1:
            parsed = [_parse_float(present[0])]
        else:
            parsed = list(map(_parse_float, present))
        result.unknown_sections += unknown  # the line is accepted from here on
        if mtype is MetricType.SET:
            for member in present:
                append(_new_sample(Sample, (name, tags, mtype, member, 1.0, ts, False)))
            return
        assert parsed is not None
        if mtype is MetricType.GAUGE:
            delta = self._gauge_delta
            for vs, v in zip(present, parsed, strict=True):
                sample = (name, tags, mtype, v, 1.0, ts, delta and vs[0] in "+-")
                append(_new_sample(Sample, sample))
            return
        for v in parsed:
            append(_new_sample(Sample, (name, tags, mtype, v, rate, ts, False)))

    def _parse_multi(self, head: str, rest: str, result: ParseResult) -> None:
        """Etsy's `name:v|t[|@r]:v|t…`: every segment is a metric of the same name. All
        segments are checked before any is kept, so a bad segment rejects the whole line."""
        staged = ParseResult()
        for segment in rest.split(":"):
            self._parse_metric(f"{head}:{segment}", staged)
        result.samples.extend(staged.samples)
        result.unknown_sections += staged.unknown_sections

    def key_or_reason(self, head: str, tag_text: str, mtype: MetricType) -> tuple[str, Tags] | str:
        """The (name, tags) of a line's name section and tag text, or the reason they are
        refused: the native core asks this once per new series (native.py)."""
        mapper = self.mapper  # read once: a reload may set another meanwhile
        if mapper is not None:
            mapped = mapper.keys.get((mtype, head, tag_text))
            return self._mapped_key(mapper, mtype, head, tag_text) if mapped is None else mapped
        key = self._keys.get((head, tag_text))
        if key is not None:
            return key
        try:
            return self._key(head, tag_text)
        except LineError as e:
            return e.reason

    def _mapped_key(self, mapper: Mapper, mtype: MetricType, head: str, tag_text: str) -> Answer:
        """What the rules make of a line's name section and tag text (cached in the Mapper): a
        name no rule matches is taken as it is without rules."""
        try:
            name, pairs = self._split(head, tag_text)
            found = mapper.match(mtype, name.strip())
            answer = self._key(head, tag_text) if found is None else mapper.make(found, pairs)
        except LineError as e:
            answer = e.reason
        mapper.remember((mtype, head, tag_text), answer)
        return answer

    def _key(self, head: str, tag_text: str) -> tuple[str, Tags]:
        name, pairs = self._split(head, tag_text)
        name, reason = clean_name(name, self.sanitise)
        if reason is not None:
            raise LineError(reason)
        key = (name, validated_tags(pairs))
        if len(self._keys) >= _KEY_CACHE_MAX:
            self._keys.clear()
        self._keys[(head, tag_text)] = key
        return key

    def _split(self, head: str, tag_text: str) -> tuple[str, list[tuple[str, str]]]:
        """A line's name as sent (its tags taken off) and its tags as pairs, in order."""
        pairs: list[tuple[str, str]] = []
        name = head
        styles = 0
        if "#" in name:  # Librato: name#k=v,k2=v2
            name, _, text = name.partition("#")
            pairs.extend(_kv_pairs(text.split(",")))
            styles += 1
        if name.endswith("]") and "[" in name:  # SignalFx: name[k=v,k2=v2]
            name, _, text = name[:-1].partition("[")
            pairs.extend(_kv_pairs(text.split(",")))
            styles += 1
        if "," in name:  # Influx/Telegraf: name,k=v,k2=v2
            name, *items = name.split(",")
            pairs.extend(_kv_pairs(items))
            styles += 1
        if tag_text:
            styles += 1
        if styles > 1:
            raise LineError(MIXED_TAG_STYLES)
        if tag_text:
            for item in tag_text.split(","):
                if not item:
                    continue
                k, _, v = item.partition(":")
                pairs.append((k, v))
        return name, pairs
