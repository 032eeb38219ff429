"""A msgspec ValidationError, read: what is wrong and where, for the config (ConfigError) and the
API (InvalidArgument) to say in their own words.

msgspec ends a message with where it applies: ` - at `$.udp.queue_size`` for a value,
` - at `key` in `$.tags`` for a key of that mapping, nothing at the top level; an unknown or a
missing field is named in the message itself (``Object contains unknown field `lisen` ``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

_WHERE_RE = re.compile(r"^(?P<what>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?$", re.S)
_FIELD_RE = re.compile(r"^Object (?P<kind>contains unknown|missing required) field `(?P<f>.*)`$")


@dataclass(frozen=True, slots=True)
class Violation:
    """`path` is dotted from the top (`auth.keys[0].sha256`, "" for the document itself); for
    an unknown or a missing field it is the field's own path, and `unknown`/`missing` is set."""

    what: str
    path: str
    in_key: bool = False  # a key of the mapping at `path` is wrong, not a value
    unknown: bool = False
    missing: bool = False

    @classmethod
    def of(cls, error: msgspec.ValidationError) -> Violation:
        m = _WHERE_RE.match(str(error))
        assert m is not None  # the pattern matches any text
        what, path = m["what"], (m["path"] or "").removeprefix(".")
        field = _FIELD_RE.match(what)
        if field is None:
            return cls(what, path, in_key=m["key"] is not None)
        where = f"{path}.{field['f']}" if path else field["f"]
        unknown = field["kind"] == "contains unknown"
        return cls(what, where, unknown=unknown, missing=not unknown)
