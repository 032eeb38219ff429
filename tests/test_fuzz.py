"""Property tests of the StatsD parser (hypothesis): whatever arrives, it never raises, every line
is accounted for exactly once, and a valid line is never lost to its neighbours."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statsd_gateway.model import STATSD_TYPES, MetricType
from statsd_gateway.protocol import REJECT_REASONS, ParseResult, StatsdParser

# The pure-Python parser (protocol.py) alone, which both passes run the same (the native
# core's parity with it is tests/test_native_parity.py's): skipped in the pure-Python pass
# (tests/conftest.py).
pytestmark = pytest.mark.same_in_both_passes

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Characters that mean something in StatsD text, so random text reaches deep into the parser.
STATSD_ALPHABET = ":|#@,=.[]{}_-+\r\n\t eETcgmshdx0123456789abkv/é\x00\uff11"


def lines_of(data: bytes) -> list[bytes]:
    """The lines the parser sees: split at \\n, one trailing \\r stripped, empty lines dropped."""
    out = []
    for raw in data.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if line:
            out.append(raw)
    return out


def check_accounting(data: bytes) -> ParseResult:
    """Parses `data` and checks that every line is exactly one of: the source of one or more
    samples, one counted reject, an event, or a service check; and that the datagram's result is
    the concatenation of its lines' results."""
    result = StatsdParser().parse(data)
    lines = lines_of(data)
    assert result.lines == len(lines)
    samples: list[Any] = []
    reasons: list[str] = []
    events = checks = unknown = 0
    for raw in lines:
        one = StatsdParser().parse(raw)
        assert one.lines == 1
        outcomes = [
            bool(one.samples),
            len(one.rejects) == 1,
            one.events == 1,
            one.service_checks == 1,
        ]
        assert sum(outcomes) == 1, (raw, one)
        assert len(one.rejects) + one.events + one.service_checks <= 1
        samples += one.samples
        reasons += [r for r, _ in one.rejects]
        events += one.events
        checks += one.service_checks
        unknown += one.unknown_sections
    assert result.samples == samples
    assert [r for r, _ in result.rejects] == reasons
    assert set(reasons) <= set(REJECT_REASONS)
    assert (result.events, result.service_checks, result.unknown_sections) == (
        events,
        checks,
        unknown,
    )
    for name, tags, mtype, value, rate, ts, delta in result.samples:
        assert name and isinstance(mtype, MetricType)
        assert tags == tuple(sorted(dict(tags).items()))
        assert 0 < rate <= 1
        assert ts is None or ts > 0
        if mtype is MetricType.SET:
            assert isinstance(value, str) and value
        else:
            assert isinstance(value, float) and math.isfinite(value)
        assert not delta or mtype is MetricType.GAUGE
    return result


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_never_raise_and_every_line_is_accounted_for(data: bytes) -> None:
    check_accounting(data)


@FUZZ
@given(st.text(alphabet=STATSD_ALPHABET, max_size=400))
def test_random_statsd_like_text_is_accounted_for(text: str) -> None:
    check_accounting(text.encode())


# --- lines generated from the grammar --------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_.\-]{0,30}", fullmatch=True)
tag_keys = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
tag_values = st.from_regex(r"[a-z0-9_.\-/]{0,12}", fullmatch=True)
numbers = st.one_of(
    st.integers(-(10**9), 10**9).map(str),
    st.floats(-1e12, 1e12, allow_nan=False).map(repr),
)
members = st.from_regex(r"[A-Za-z0-9_.\-]{1,12}", fullmatch=True)


@st.composite
def metric_lines(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid line and what it must parse to."""
    name = draw(names)
    code = draw(st.sampled_from(sorted(STATSD_TYPES)))
    mtype = STATSD_TYPES[code]
    if mtype is MetricType.SET:
        values = [draw(members)]
    else:
        values = draw(st.lists(numbers, min_size=1, max_size=4))
        if mtype is MetricType.GAUGE:
            values = [v.lstrip("+-") or "0" for v in values]  # absolute values only
    tags = draw(st.dictionaries(tag_keys, tag_values, max_size=5))
    sections = []
    if tags:
        sections.append("#" + ",".join(f"{k}:{v}" for k, v in tags.items()))
    rate = draw(st.sampled_from([None, 1.0, 0.5, 0.25, 0.1, 0.001]))
    if rate is not None:
        sections.append(f"@{rate}")
    ts = draw(st.none() | st.integers(1, 2**40))
    if ts is not None:
        sections.append(f"T{ts}")
    sections += draw(st.lists(st.sampled_from(["c:abc123", "e:it-false", "card:low"]), max_size=2))
    sections = draw(st.permutations(sections))
    line = f"{name}:{':'.join(values)}|{code}" + "".join("|" + s for s in sections)
    want = {
        "name": name,
        "type": mtype,
        "values": values,
        "tags": tuple(sorted(tags.items())),
        "rate": 1.0 if rate is None or mtype in (MetricType.GAUGE, MetricType.SET) else rate,
        "ts": None if ts is None else float(ts),
    }
    return line, want


@FUZZ
@given(metric_lines())
def test_grammar_lines_parse_to_their_samples(case: tuple[str, dict[str, Any]]) -> None:
    line, want = case
    result = StatsdParser().parse(line.encode())
    assert result.rejects == []
    assert [(s[0], s[1], s[2]) for s in result.samples] == [
        (want["name"], want["tags"], want["type"])
    ] * len(want["values"])
    if want["type"] is MetricType.SET:
        assert [s[3] for s in result.samples] == want["values"]
    else:
        assert [s[3] for s in result.samples] == [float(v) for v in want["values"]]
        if want["type"] is not MetricType.GAUGE:
            assert {s[4] for s in result.samples} == {want["rate"]}
    assert {s[5] for s in result.samples} == {want["ts"]}


@st.composite
def corrupted_lines(draw: st.DrawFn) -> bytes:
    """A valid line with a few random edits: bytes replaced, inserted or deleted."""
    line = bytearray(draw(metric_lines())[0].encode())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        i = draw(st.integers(0, len(line)))
        byte = draw(st.sampled_from(list(b":|#@,=.\r\n_T0e-+ \x00\xff\xc3")) | st.integers(0, 255))
        if op == "insert":
            line.insert(i, byte)
        elif i < len(line):
            if op == "replace":
                line[i] = byte
            else:
                del line[i]
    return bytes(line)


@FUZZ
@given(st.lists(corrupted_lines(), min_size=1, max_size=5))
def test_corrupted_grammar_lines_never_raise(lines: list[bytes]) -> None:
    check_accounting(b"\n".join(lines))


@FUZZ
@given(
    st.binary(max_size=300),
    metric_lines(),
    st.binary(max_size=300),
    st.sampled_from([b"\n", b"\r\n"]),
)
def test_a_valid_line_is_never_lost_to_its_neighbours(
    before: bytes, case: tuple[str, dict[str, Any]], after: bytes, sep: bytes
) -> None:
    line = case[0].encode()
    alone = StatsdParser().parse(line).samples
    assert alone
    result = check_accounting(before + sep + line + sep + after)
    got = result.samples
    assert any(got[i : i + len(alone)] == alone for i in range(len(got) - len(alone) + 1)), (
        alone,
        got,
    )


@FUZZ
@given(st.lists(st.one_of(corrupted_lines(), st.binary(max_size=80)), max_size=6))
def test_the_parser_caches_never_change_an_answer(lines: list[bytes]) -> None:
    """One long-lived parser (as the daemon has) answers as a fresh one does, line after line."""
    shared = StatsdParser()
    for data in [*lines, *lines]:
        a, b = shared.parse(data), StatsdParser().parse(data)
        assert (a.samples, a.rejects, a.lines, a.unknown_sections) == (
            b.samples,
            b.rejects,
            b.lines,
            b.unknown_sections,
        )
