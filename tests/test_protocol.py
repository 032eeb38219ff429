"""StatsD text → samples and rejects (DESIGN.md §3), as one table of named scenarios.

Every scenario is parsed twice by the same parser: the second pass goes through the parser's
caches of lines and names already seen, and must give exactly what the first pass gave.
"""

from __future__ import annotations

from typing import Any

import pytest

from statsd_gateway.model import STATSD_TYPES
from statsd_gateway.protocol import MAX_LINE_BYTES, ParseResult, Sample, StatsdParser

# The pure-Python parser (protocol.py) alone, which both passes run the same (the native
# core's parity with it is tests/test_native_parity.py's): skipped in the pure-Python pass
# (tests/conftest.py).
pytestmark = pytest.mark.same_in_both_passes

TS = 1_764_172_800


def s(
    name: str,
    value: float | str,
    type_: str = "c",
    *,
    tags: dict[str, str] | None = None,
    rate: float = 1.0,
    ts: float | None = None,
    delta: bool = False,
) -> Sample:
    """The sample a line should give."""
    pairs = tuple(sorted((tags or {}).items()))
    return Sample(name, pairs, STATSD_TYPES[type_], value, rate, ts, delta)


def many_tags(n: int) -> bytes:
    return b"|#" + b",".join(b"t%d:v" % i for i in range(n))


# (datagram, samples, reject reasons in order, counters other than samples/rejects)
SCENARIOS: list[Any] = [
    # --- types -------------------------------------------------------------------------------
    pytest.param(b"hits:1|c", [s("hits", 1.0)], [], {}, id="simple counter"),
    pytest.param(b"hits:3|c|@0.1", [s("hits", 3.0, rate=0.1)], [], {}, id="counter with rate"),
    pytest.param(b"temp:21.5|g", [s("temp", 21.5, "g")], [], {}, id="gauge absolute"),
    pytest.param(b"temp:+3|g", [s("temp", 3.0, "g", delta=True)], [], {}, id="gauge increment"),
    pytest.param(b"temp:-3|g", [s("temp", -3.0, "g", delta=True)], [], {}, id="gauge decrement"),
    pytest.param(b"lat:320|ms", [s("lat", 320.0, "ms")], [], {}, id="timer ms"),
    pytest.param(b"size:12|h", [s("size", 12.0, "h")], [], {}, id="histogram h"),
    pytest.param(b"lat:1.5|d", [s("lat", 1.5, "d")], [], {}, id="distribution d"),
    pytest.param(b"users:alice|s", [s("users", "alice", "s")], [], {}, id="set s"),
    pytest.param(
        b"users:user:1|s", [s("users", "user:1", "s")], [], {}, id="set member with a colon"
    ),
    pytest.param(
        b"ok:1|c\nbad:1|c|T" + b"9" * 400,
        [s("ok", 1.0)],
        ["invalid_timestamp"],
        {},
        id="timestamp past a double rejected, neighbour kept",
    ),
    pytest.param(b"lat:-4e2|ms", [s("lat", -400.0, "ms")], [], {}, id="negative exponent value"),
    # --- framing -----------------------------------------------------------------------------
    pytest.param(
        b"a:1|c\nb:2|g\nc:3|ms",
        [s("a", 1.0), s("b", 2.0, "g"), s("c", 3.0, "ms")],
        [],
        {},
        id="several lines per datagram",
    ),
    pytest.param(b"a:1|c\r\nb:2|c\r\n", [s("a", 1.0), s("b", 2.0)], [], {}, id="crlf line endings"),
    pytest.param(b"a:1|c\nb:2|c", [s("a", 1.0), s("b", 2.0)], [], {}, id="missing final newline"),
    pytest.param(b"a:1|c\n", [s("a", 1.0)], [], {}, id="final newline"),
    pytest.param(b"\n\r\na:1|c\n\n", [s("a", 1.0)], [], {}, id="empty lines skipped"),
    # --- tags --------------------------------------------------------------------------------
    pytest.param(
        b"req:1|c|#env:prod,canary",
        [s("req", 1.0, tags={"env": "prod", "canary": ""})],
        [],
        {},
        id="dogstatsd tags with a bare tag",
    ),
    pytest.param(
        b"req:1|c|#env:prod|#region:eu",
        [s("req", 1.0, tags={"env": "prod", "region": "eu"})],
        [],
        {},
        id="several tag sections merge",
    ),
    pytest.param(
        b"req:1|c|#url:http://x:80/",
        [s("req", 1.0, tags={"url": "http://x:80/"})],
        [],
        {},
        id="tag value containing colons",
    ),
    pytest.param(
        b"req:1|c|#env:a,env:b",
        [s("req", 1.0, tags={"env": "b"})],
        [],
        {},
        id="duplicate tag last wins",
    ),
    pytest.param(
        b"req:2|c|@0.5|#env:prod",
        [s("req", 2.0, rate=0.5, tags={"env": "prod"})],
        [],
        {},
        id="rate then tags",
    ),
    pytest.param(
        b"req:2|c|#env:prod|@0.5",
        [s("req", 2.0, rate=0.5, tags={"env": "prod"})],
        [],
        {},
        id="tags then rate",
    ),
    pytest.param(
        b"req,env=prod,region=eu:1|c",
        [s("req", 1.0, tags={"env": "prod", "region": "eu"})],
        [],
        {},
        id="influx tags",
    ),
    pytest.param(
        b"req,env=prod:1|c|#region:eu",
        [],
        ["mixed_tag_styles"],
        {},
        id="influx and dogstatsd tags in one line are refused",
    ),
    # --- other sections ----------------------------------------------------------------------
    pytest.param(b"g:5|g|T%d" % TS, [s("g", 5.0, "g", ts=float(TS))], [], {}, id="unix timestamp"),
    pytest.param(
        b"lat:5|ms|T%d|#a:b|@0.5" % TS,
        [s("lat", 5.0, "ms", tags={"a": "b"}, rate=0.5, ts=float(TS))],
        [],
        {},
        id="timestamp tags and rate in any order",
    ),
    pytest.param(
        b"req:1|c|c:83c0a99c0a54|e:it-false,cn-web|card:high",
        [s("req", 1.0)],
        [],
        {},
        id="container external-data and cardinality sections ignored",
    ),
    pytest.param(
        b"req:1|c|x:what",
        [s("req", 1.0)],
        [],
        {"unknown_sections": 1},
        id="unknown section counted",
    ),
    pytest.param(
        b"req:1|c|x:what|y|#env:prod",
        [s("req", 1.0, tags={"env": "prod"})],
        [],
        {"unknown_sections": 2},
        id="two unknown sections counted",
    ),
    # --- packed values -----------------------------------------------------------------------
    pytest.param(
        b"lat:1:2:3|ms",
        [s("lat", 1.0, "ms"), s("lat", 2.0, "ms"), s("lat", 3.0, "ms")],
        [],
        {},
        id="packed values",
    ),
    pytest.param(
        b"lat:1:2|ms|@0.5",
        [s("lat", 1.0, "ms", rate=0.5), s("lat", 2.0, "ms", rate=0.5)],
        [],
        {},
        id="packed values share the rate",
    ),
    pytest.param(
        b"lat:1::3:|ms",
        [s("lat", 1.0, "ms"), s("lat", 3.0, "ms")],
        [],
        {},
        id="empty packed values skipped",
    ),
    pytest.param(
        b"g:+1:-2:5|g",
        [s("g", 1.0, "g", delta=True), s("g", -2.0, "g", delta=True), s("g", 5.0, "g")],
        [],
        {},
        id="packed gauge values keep their own delta flag",
    ),
    # --- names -------------------------------------------------------------------------------
    pytest.param(b"my metric:1|c", [s("my_metric", 1.0)], [], {}, id="space becomes underscore"),
    pytest.param(
        b"a \t b:1|c", [s("a_b", 1.0)], [], {}, id="whitespace run becomes one underscore"
    ),
    pytest.param(b"api/v1/users:1|c", [s("api-v1-users", 1.0)], [], {}, id="slash becomes dash"),
    pytest.param(
        "a$b%c!é.d_e-f:1|c".encode(), [s("abc.d_e-f", 1.0)], [], {}, id="other characters dropped"
    ),
    # --- events and service checks -----------------------------------------------------------
    pytest.param(b"_e{5,4}:title|text", [], [], {"events": 1}, id="event counted not stored"),
    pytest.param(b"_sc|name|0", [], [], {"service_checks": 1}, id="service check counted"),
    pytest.param(
        b"a:1|c\n_e{5,4}:title|text|#env:prod\n_sc|db.up|2|m:down\nb:1|c",
        [s("a", 1.0), s("b", 1.0)],
        [],
        {"events": 1, "service_checks": 1},
        id="events and service checks between metrics",
    ),
    # --- rejects -----------------------------------------------------------------------------
    pytest.param(b"hits1|c", [], ["malformed_line"], {}, id="no colon"),
    pytest.param(b"hits:1", [], ["malformed_line"], {}, id="no type"),
    pytest.param(b"hits:1|", [], ["malformed_line"], {}, id="empty type"),
    pytest.param(b":1|c", [], ["empty_name"], {}, id="empty name"),
    pytest.param(b"$%!:1|c", [], ["empty_name"], {}, id="name of dropped characters only"),
    pytest.param(b"x" * 201 + b":1|c", [], ["name_too_long"], {}, id="name too long"),
    pytest.param(b"hits:|c", [], ["empty_value"], {}, id="empty value"),
    pytest.param(b"users:|s", [], ["empty_value"], {}, id="empty set member"),
    pytest.param(b"hits::|c", [], ["empty_value"], {}, id="only empty packed values"),
    pytest.param(b"hits:abc|c", [], ["invalid_value"], {}, id="value not a number"),
    pytest.param(b"hits:1_0|c", [], ["invalid_value"], {}, id="underscore in number"),
    pytest.param(b"hits:0x10|c", [], ["invalid_value"], {}, id="hex number"),
    pytest.param(b"g:nan|g", [], ["non_finite_value"], {}, id="nan"),
    pytest.param(b"g:inf|g", [], ["non_finite_value"], {}, id="inf"),
    pytest.param(b"lat:-inf|ms", [], ["non_finite_value"], {}, id="minus inf"),
    pytest.param(b"g:1e309|g", [], ["non_finite_value"], {}, id="overflows to inf"),
    pytest.param(b"lat:1:nan:3|ms", [], ["non_finite_value"], {}, id="nan among packed values"),
    pytest.param(b"a:1|x", [], ["unknown_type"], {}, id="unknown type"),
    pytest.param(b"a:1|C", [], ["unknown_type"], {}, id="type is case sensitive"),
    pytest.param(b"a:1|c|@0", [], ["invalid_sample_rate"], {}, id="sample rate zero"),
    pytest.param(b"a:1|c|@1.5", [], ["invalid_sample_rate"], {}, id="sample rate above one"),
    pytest.param(b"a:1|c|@-0.5", [], ["invalid_sample_rate"], {}, id="negative sample rate"),
    pytest.param(b"a:1|c|@abc", [], ["invalid_sample_rate"], {}, id="sample rate not a number"),
    pytest.param(b"a:1|c|@nan", [], ["invalid_sample_rate"], {}, id="sample rate nan"),
    pytest.param(b"a:1|c|Tsoon", [], ["invalid_timestamp"], {}, id="timestamp not a number"),
    pytest.param(b"a:1|c|T", [], ["invalid_timestamp"], {}, id="empty timestamp"),
    pytest.param(b"a:1|c|T-5", [], ["invalid_timestamp"], {}, id="negative timestamp"),
    pytest.param(
        b"a:1|c" + many_tags(32),
        [s("a", 1.0, tags={f"t{i}": "v" for i in range(32)})],
        [],
        {},
        id="32 tags accepted",
    ),
    pytest.param(b"a:1|c" + many_tags(33), [], ["invalid_tags"], {}, id="33 tags"),
    pytest.param(b"a:1|c|#:v", [], ["invalid_tags"], {}, id="empty tag key"),
    pytest.param(b"a:1|c|#k:" + b"v" * 201, [], ["invalid_tags"], {}, id="tag value too long"),
    pytest.param(b"a,env:1|c", [], ["invalid_tags"], {}, id="influx tag without equals"),
    pytest.param(
        b"a:1|c|#k:" + b"v" * MAX_LINE_BYTES, [], ["line_too_long"], {}, id="line too long"
    ),
    pytest.param(
        b"a:1|c\n\xff\xfe:1|c\nb:2|c",
        [s("a", 1.0), s("b", 2.0)],
        ["invalid_utf8"],
        {},
        id="invalid utf-8 loses only its line",
    ),
    pytest.param(
        b"a:1|c\nb\xc3:1|c\n",
        [s("a", 1.0)],
        ["invalid_utf8"],
        {},
        id="invalid utf-8 with final newline",
    ),
    pytest.param(
        b"a:1|c\r\n\xff:1|c\r\n\r\nb:2|c\r\n",
        [s("a", 1.0), s("b", 2.0)],
        ["invalid_utf8"],
        {},
        id="invalid utf-8 with crlf and an empty line",
    ),
    pytest.param(
        b"a:1|c\nbad line\nb:2|c",
        [s("a", 1.0), s("b", 2.0)],
        ["malformed_line"],
        {},
        id="bad line in the middle",
    ),
]

COUNTERS = ("events", "service_checks", "unknown_sections")


def outcome(r: ParseResult) -> tuple[list[Sample], list[str], dict[str, int]]:
    return r.samples, [reason for reason, _ in r.rejects], {c: getattr(r, c) for c in COUNTERS}


@pytest.mark.parametrize(("datagram", "samples", "rejects", "counts"), SCENARIOS)
def test_scenario(
    datagram: bytes, samples: list[Sample], rejects: list[str], counts: dict[str, int]
) -> None:
    expected = (samples, rejects, {c: counts.get(c, 0) for c in COUNTERS})
    parser = StatsdParser()
    assert outcome(parser.parse(datagram)) == expected
    # Same parser again: the line and name caches must not change the outcome.
    assert outcome(parser.parse(datagram)) == expected


def test_bad_lines_never_lose_their_neighbours() -> None:
    bad = [b"nocolon", b"a:1|x", b"a:abc|c", b"a:1|c|@0", b":1|c", b"a:nan|g", b"\xff:1|c"]
    good = [b"ok%d:%d|c" % (i, i) for i in range(len(bad) + 1)]
    lines = [good[0]]
    for b, g in zip(bad, good[1:], strict=True):
        lines += [b, g]
    result = StatsdParser().parse(b"\n".join(lines))
    assert [x[0] for x in result.samples] == [f"ok{i}" for i in range(len(good))]
    assert sorted(reason for reason, _ in result.rejects) == sorted(
        [
            "malformed_line",
            "unknown_type",
            "invalid_value",
            "invalid_sample_rate",
            "empty_name",
            "non_finite_value",
            "invalid_utf8",
        ]
    )
    assert result.lines == len(lines)


def test_reject_keeps_the_offending_line_for_the_debug_log() -> None:
    result = StatsdParser().parse(b"a:1|c\nhits:abc|c\r\n")
    assert result.rejects == [("invalid_value", "hits:abc|c")]


def test_lines_counts_metric_lines_and_events_but_not_empty_lines() -> None:
    result = StatsdParser().parse(b"a:1|c\n\n_e{1,1}:t|x\nbad\n")
    assert result.lines == 3


def test_unknown_sections_counted_on_every_datagram() -> None:
    parser = StatsdParser()
    totals = [parser.parse(b"req:1|c|x:what").unknown_sections for _ in range(3)]
    assert totals == [1, 1, 1]


def test_cached_name_does_not_hide_a_later_bad_line() -> None:
    parser = StatsdParser()
    parser.parse(b"req:1|c|#env:prod")
    result = parser.parse(b"req:1|c|#env:prod|@0\nreq:abc|c|#env:prod\nreq:2|g|#env:prod")
    assert [r for r, _ in result.rejects] == ["invalid_sample_rate", "invalid_value"]
    assert result.samples == [s("req", 2.0, "g", tags={"env": "prod"})]
