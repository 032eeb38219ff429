"""Mapping rules (`statsd.mapping_file`, statsd_exporter's schema: mapping_file.py) applied to
the StatsD series a line names: which rule matches a name, and the name and tags it makes.

Contract:
- `load_rules(path)` is the file, checked and compiled (ConfigError naming the place in the
  file that is wrong); `Mapper(rules, sanitise)` applies it. A Mapper never changes: a reload
  makes a new one, with empty caches.
- Matching is statsd_exporter's. Globs are tried before regexes, whatever the file's order. A
  glob is dot-separated components, each a literal or `*`, which matches one whole component
  (an empty one too); of the globs that match, the first in the file wins (with
  `defaults.glob_disable_ordering`, the most specific one: a literal component before `*`,
  from the left). A regex is searched for anywhere in the name (not anchored: `.` matches every
  name), in file order. A rule with `match_metric_type` matches lines of that type only.
- `match(mtype, name)` runs on the name as the line gives it (stripped, its tags taken off,
  not yet sanitised), so rules see what the client sent; `make()` builds what a matching rule
  makes of it: its `name` with captures substituted (`$1`, `${1}`, `${group}`, `$$` for `$`),
  cleaned by the same rule as every StatsD name (protocol.clean_name), and the line's tags with
  the rule's labels added, a label replacing the line's tag of the same key unless
  `honor_labels` (then the line's tag wins). A name left invalid is INVALID_MAPPED_NAME; tags
  past the limits, INVALID_TAGS. A drop rule makes nothing: DROPPED_BY_MAPPING.
- `keys` is the parser's cache of the answers (protocol.StatsdParser fills and reads it),
  keyed as the native core keys its own: (type, name section, tag text). `options_of()` is the
  SeriesOptions of the rule that made a series, for the registry to keep at admission.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from statsd_gateway.errors import ConfigError
from statsd_gateway.mapping_file import (
    METRIC_TYPES,
    MappingFile,
    MappingShape,
    SeriesOptions,
    load_mapping_file,
    parse_mapping_file,
)
from statsd_gateway.model import TAG_VALUE_MAX, TAGS_MAX, MetricType, Tags
from statsd_gateway.protocol import INVALID_TAGS, LineError, clean_name, validated_tags

# Reject reasons (snake_case; each is a self-metric label).
DROPPED_BY_MAPPING = "dropped_by_mapping"
INVALID_MAPPED_NAME = "invalid_mapped_name"
MAPPING_REJECT_REASONS = (DROPPED_BY_MAPPING, INVALID_MAPPED_NAME)

# The most answers a Mapper caches, and series it remembers the rule of: past it they start
# again (a flood of new names costs matching again, never memory).
CACHE_MAX = 100_000
# A capture reference in a template: `$$`, `$1`, `${1}`, `${name}`, `$name`.
_REFERENCE = re.compile(r"\$(?:(\$)|(\d+)|\{(\w+)\}|([A-Za-z_]\w*))")

# A template: literal text and capture numbers, in order.
Template = tuple[str | int, ...]
Answer = tuple[str, Tags] | str


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled mapping: a glob's components (`*` a capture) or a regex."""

    index: int
    types: frozenset[MetricType] | None  # None: every type
    drop: bool
    name: Template
    labels: tuple[tuple[str, Template], ...]
    honor_labels: bool
    options: SeriesOptions
    glob: tuple[str, ...] | None = None
    regex: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    captures: tuple[str, ...]  # [0] the whole match (a regex's; a glob's is the name)


@dataclass(frozen=True, slots=True)
class Rules:
    """A loaded, compiled file: globs by component count, in the order they are tried, and
    the regexes in file order."""

    file: MappingFile
    globs: Mapping[int, tuple[Rule, ...]]
    regexes: tuple[Rule, ...]

    @property
    def count(self) -> int:
        return len(self.file.shape.mappings)


def load_rules(path: str | Path) -> Rules:
    """The mapping file at `path`, compiled, or ConfigError naming what is wrong in it."""
    file = load_mapping_file(path)
    try:
        return compile_rules(file)
    except ConfigError as e:
        raise ConfigError("", f"{path}: {e}") from None


def load_mapper(path: str | None, sanitise: Callable[[str], str]) -> Mapper | None:
    """The Mapper of `statsd.mapping_file` (None: no file), or ConfigError naming that key."""
    if path is None:
        return None
    try:
        return Mapper(load_rules(path), sanitise)
    except ConfigError as e:
        raise ConfigError("statsd.mapping_file", str(e)) from None


def parse_rules(text: str) -> Rules:
    """load_rules() of a file's text (tests)."""
    return compile_rules(parse_mapping_file(text))


def compile_rules(file: MappingFile) -> Rules:
    defaults = file.shape.defaults
    globs: dict[int, list[Rule]] = {}
    regexes: list[Rule] = []
    for i, m in enumerate(file.shape.mappings):
        where = f"mappings[{i}]"
        if (m.match_type or defaults.match_type) == "glob":
            parts = _glob(m.match, where)
            rule = _rule(i, m, file.options[i], parts.count("*"), None, where)
            globs.setdefault(len(parts), []).append(replace(rule, glob=parts))
        else:
            try:
                pattern = re.compile(m.match)
            except re.error as e:
                raise ConfigError(f"{where}.match", f"not a valid regex: {e}") from None
            rule = _rule(i, m, file.options[i], pattern.groups, pattern.groupindex, where)
            regexes.append(replace(rule, regex=pattern))
    if defaults.glob_disable_ordering:
        for rules in globs.values():
            rules.sort(key=lambda r: ([p == "*" for p in r.glob or ()], r.index))
    return Rules(file, {n: tuple(r) for n, r in globs.items()}, tuple(regexes))


def _glob(match: str, where: str) -> tuple[str, ...]:
    parts = tuple(match.split("."))
    for part in parts:
        if not part:
            raise ConfigError(f"{where}.match", f"{match!r} has an empty component")
        if "*" in part and part != "*":
            raise ConfigError(f"{where}.match", f"{match!r}: `*` stands for a whole component")
    return parts


def _rule(
    index: int,
    m: MappingShape,
    options: SeriesOptions,
    groups: int,
    names: Mapping[str, int] | None,
    where: str,
) -> Rule:
    """A mapping's templates, checked against the captures its match has: `groups` numbered
    (a glob's `*`s), `names` a regex's named groups (None for a glob, which has no $0)."""
    labels = tuple(
        (k, _template(v, f"{where}.labels.{k}", groups, names)) for k, v in m.labels.items()
    )
    return Rule(
        index=index,
        types=None if m.match_metric_type is None else METRIC_TYPES[m.match_metric_type],
        drop=m.action == "drop",
        name=_template(m.name or "", f"{where}.name", groups, names),
        labels=labels,
        honor_labels=m.honor_labels,
        options=options,
    )


def _template(text: str, where: str, groups: int, names: Mapping[str, int] | None) -> Template:
    parts: list[str | int] = []
    at = 0
    for ref in _REFERENCE.finditer(text):
        parts.append(text[at : ref.start()])
        at = ref.end()
        dollar, number, braced, bare = ref.groups()
        if dollar:
            parts.append("$")
            continue
        word = number or braced or bare
        if word.isdigit():
            n = int(word)
            lowest = 1 if names is None else 0
            if not lowest <= n <= groups:
                what = "`*`" if names is None else "group"
                raise ConfigError(where, f"${word}: the match has {groups} capture {what}(s)")
            parts.append(n)
        elif names is not None and word in names:
            parts.append(names[word])
        else:
            raise ConfigError(where, f"${word}: the match has no capture of that name")
    parts.append(text[at:])
    return tuple(p for p in parts if p != "")


def _expand(template: Template, captures: tuple[str, ...]) -> str:
    return "".join(p if isinstance(p, str) else captures[p] for p in template)


class Mapper:
    """The rules of one mapping file, applied (see the module's contract)."""

    def __init__(self, rules: Rules, sanitise: Callable[[str], str]) -> None:
        """`sanitise`: the configured name sanitiser (protocol.StatsdParser.sanitise)."""
        self.rules = rules
        self.sanitise = sanitise
        self.keys: dict[tuple[MetricType, str, str], Answer] = {}
        self._options: dict[tuple[str, Tags], SeriesOptions] = {}

    def same_rules(self, other: Mapper | None) -> bool:
        """Whether `other` was loaded from the same text (a reload of it changes nothing)."""
        return other is not None and other.rules.file.text == self.rules.file.text

    def remember(self, key: tuple[MetricType, str, str], answer: Answer) -> None:
        self._make_room()
        self.keys[key] = answer

    def _make_room(self) -> None:
        # Both start again together, so every series a cached answer names has its options.
        if len(self.keys) >= CACHE_MAX:
            self.keys.clear()
            self._options.clear()

    def match(self, mtype: MetricType, name: str) -> Match | None:
        """The rule that applies to a line of `mtype` named `name`, with its captures."""
        parts = name.split(".")
        for rule in self.rules.globs.get(len(parts), ()):
            if rule.types is not None and mtype not in rule.types:
                continue
            assert rule.glob is not None
            captures = [name]
            for want, part in zip(rule.glob, parts, strict=True):
                if want == "*":
                    captures.append(part)
                elif want != part:
                    break
            else:
                return Match(rule, tuple(captures))
        for rule in self.rules.regexes:
            if rule.types is not None and mtype not in rule.types:
                continue
            assert rule.regex is not None
            found = rule.regex.search(name)
            if found is not None:
                groups = (g or "" for g in found.groups())  # a group that took no part: ""
                return Match(rule, (found.group(0), *groups))
        return None

    def make(self, found: Match, pairs: list[tuple[str, str]]) -> Answer:
        """The series a matching rule makes of a line with tags `pairs` (as the line gives
        them), or the reason the line is refused."""
        rule = found.rule
        if rule.drop:
            return DROPPED_BY_MAPPING
        try:
            tags = validated_tags(pairs)  # the line's own, checked as they are without rules
        except LineError as e:
            return e.reason
        name, reason = clean_name(_expand(rule.name, found.captures), self.sanitise)
        if reason is not None:
            return INVALID_MAPPED_NAME
        merged = dict(tags)
        for key, template in rule.labels:
            if not (rule.honor_labels and key in merged):
                merged[key] = _expand(template, found.captures)
        if len(merged) > TAGS_MAX or any(len(v) > TAG_VALUE_MAX for v in merged.values()):
            return INVALID_TAGS
        made = tuple(sorted(merged.items()))
        self._make_room()  # before, not between this and the remember() that follows
        self._options[(name, made)] = rule.options
        return name, made

    def options_of(self, name: str, tags: Tags) -> SeriesOptions | None:
        """The options of the rule that made the series (name, tags) last; None if none did."""
        return self._options.get((name, tags))
