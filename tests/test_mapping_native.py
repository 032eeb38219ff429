"""Mapping rules on the native core: its answers are the pure-Python parser's (the same
datagrams give the same series, rows and reject counts), it asks Python once per new key and
not per line, and after new rules and forget() (what a reload does) the lines are mapped by the
new rules. tests/test_mapping.py runs a reload on whichever path the suite runs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_gateway.mapping import Mapper, parse_rules
from tests.conftest import PARITY, require_native_core

require_native_core(module=True)

from tests.test_native_parity import CASES, assert_same, both, datagram  # noqa: E402

RULES = r"""
mappings:
- {match: 'a', name: mapped_a, labels: {src: a}}
- {match: 'b.*', name: 'b_$1', match_metric_type: counter, labels: {env: '$1'}}
- {match: 'hits', action: drop}
- {match: 'x_y', name: '$$'}
- {match: 'g', name: gauge_g, labels: {env: fixed}, honor_labels: true}
- {match: 'lat', name: latency, match_metric_type: observer}
- {match: '^(u)$', match_type: regex, name: 'users_${1}', match_metric_type: set}
- {match: 'c$', match_type: regex, name: ends_in_c, labels: {whole: '$0'}}
"""


def test_mapped_datagrams_as_the_reference() -> None:
    ref, nat = both(rules=RULES)
    extra = (
        b"a:1|c\nb.prod:2|c\nb.prod:2|g\nhits:1|c\nx_y:1|c\ng:1|g|#env:e\nlat:3|ms\nu:z|s\nabc:1|c"
    )
    for data in [*CASES, extra, extra]:
        ref.send(data)
        nat.send(data)
    want = ref.outcome()
    assert nat.outcome() == want
    # Three `hits` lines in CASES, one in each `extra`.
    assert want["rejects"][("udp", "dropped_by_mapping")] == 3 + 2
    assert want["rejects"][("udp", "invalid_mapped_name")] == 2
    names = set(ref.registry.metrics_of("default"))
    assert {"mapped_a", "b_prod", "gauge_g", "latency", "users_u", "ends_in_c"} <= names


@pytest.mark.parametrize("sanitise", ["statsd", "none", "prometheus"])
def test_mapped_settings_as_the_reference(sanitise: str) -> None:
    assert_same(CASES, sanitise=sanitise, rules=RULES)


# The rules name the random datagrams' own names (a, b.c, hits, x_y, g, lat, u).
@settings(PARITY, max_examples=max(PARITY.max_examples // 20, 50))
@given(st.lists(datagram, min_size=1, max_size=4))
def test_random_mapped_datagrams_as_the_reference(datagrams: list[bytes]) -> None:
    assert_same(datagrams, rules=RULES)


def test_the_native_core_asks_once_per_new_key_not_per_line() -> None:
    _, nat = both(rules=RULES)
    calls: list[tuple[str, str]] = []
    asked = nat.parser.key_or_reason

    def counted(head: str, tags: str, mtype: Any) -> Any:
        calls.append((head, tags))
        return asked(head, tags, mtype)

    nat.parser.key_or_reason = counted  # the resolver reads it from the parser at each call
    nat.send(b"\n".join([b"a:1|c", b"hits:1|c", b"lat:2|ms"] * 500))
    nat.send(b"a:1|c\nhits:1|c\nlat:2|ms")
    # Once to name each key, once more to admit the two that are kept; the drop is cached.
    assert sorted(calls) == [("a", ""), ("a", ""), ("hits", ""), ("lat", ""), ("lat", "")]
    assert nat.telemetry.rejects[("udp", "dropped_by_mapping")] == 501


def test_new_rules_and_forget_map_the_lines_after_them_as_the_reference() -> None:
    ref, nat = both(rules=RULES)
    lines = b"a:1|c\nhits:1|c\nlat:2|ms"
    for path in (ref, nat):
        path.send(lines)
        path.parser.set_mapper(
            Mapper(parse_rules("mappings:\n- {match: hits, name: kept}\n"), path.parser.sanitise)
        )
    nat.live.forget()
    for path in (ref, nat):
        path.send(lines)
    want = ref.outcome()
    assert nat.outcome() == want
    names = set(ref.registry.metrics_of("default"))
    assert names == {"mapped_a", "latency", "a", "kept", "lat"}
