"""Mapping rules in the real daemon (a subprocess, on whichever ingest path the suite runs):
StatsD lines over UDP are stored and queried under the names and tags the rules make, a drop
rule's lines are counted by reason, a SIGHUP maps the lines after it by the changed file and
keeps the rules on a broken one, and a file that cannot be used stops a start and check-config.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.daemon import (
    Daemon,
    fresh_config,
    generated_key,
    poll_until,
    poll_value,
    wait_for_log,
)
from tests.test_e2e import run_cli

RULES = """
mappings:
- match: "test.dispatcher.*.*.*"
  name: "dispatcher_events_total"
  labels: {processor: "$1", action: "$2", outcome: "$3"}
- match: "noisy.*"
  action: drop
- match: 'api\\.(\\w+)\\.latency'
  match_type: regex
  match_metric_type: observer
  name: "api_latency"
  labels: {method: "$1", env: "default"}
  observer_type: histogram
"""
DISPATCH = b"test.dispatcher.FooProcessor.send.success:1|c"


def config_with_rules(tmp_path: Path, rules: str) -> tuple[Path, Path, Path]:
    path, state = fresh_config(tmp_path)
    mapping = tmp_path / "rules.yaml"
    mapping.write_text(rules, encoding="utf-8")
    path.write_text(path.read_text() + f"statsd:\n  mapping_file: {mapping}\n")
    return path, state, mapping


def dropped(d: Daemon) -> float:
    return d.self_metric(
        "statsd_gateway_rejects_total", transport="udp", reason="dropped_by_mapping"
    )


def test_lines_are_stored_and_queried_as_the_rules_map_them(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    path, state, _ = config_with_rules(tmp_path, RULES)
    d = Daemon(path)
    daemons.append(d)
    assert any("3 mapping rules from" in line for line in d.lines), d.stderr
    key = generated_key(state)
    d.send_udp(
        DISPATCH + b"\nnoisy.debug:1|c\nnoisy.trace:5|ms",
        b"api.get.latency:12|ms|#env:prod,host:h1\napi.get.latency:30|ms|#env:prod,host:h1",
        b"plain.name:4|c",
    )
    body = poll_value(d, key, 1, name="dispatcher_events_total", agg="sum",
                      tags="processor:FooProcessor,action:send,outcome:success")  # fmt: skip
    assert body["type"] == "counter"
    # The rule's label replaces the line's tag of the same key; the line's other tags stay.
    poll_value(d, key, 30, name="api_latency", agg="max", tags="env:default,host:h1,method:get")
    status, body = d.query(key, name="api_latency", agg="count", group_by="env,host,method")
    assert status == 200, body
    tags = [s["tags"] for s in body["series"]]
    assert tags == [{"env": "default", "host": "h1", "method": "get"}], body
    poll_value(d, key, 4, name="plain.name", agg="sum")  # no rule: as sent
    poll_until(lambda: True if dropped(d) == 2 else None, lambda: f"dropped {dropped(d)}")
    for raw in ("noisy.debug", "noisy.trace", "test.dispatcher.FooProcessor.send.success"):
        status, body = d.query(key, name=raw, agg="count")
        assert status == 404, body
    status, body, _ = d.request("GET", "/v1/metrics", key)
    assert status == 200, body
    assert sorted(m["name"] for m in body["metrics"]) == [
        "api_latency",
        "dispatcher_events_total",
        "plain.name",
    ]
    assert d.terminate() == 0


def test_sighup_maps_new_lines_by_the_changed_file_and_keeps_the_rules_on_a_broken_one(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    path, state, mapping = config_with_rules(tmp_path, RULES)
    d = Daemon(path)
    daemons.append(d)
    key = generated_key(state)
    d.send_udp(DISPATCH, b"noisy.debug:1|c")
    poll_value(d, key, 1, name="dispatcher_events_total", agg="sum")
    poll_until(lambda: True if dropped(d) == 1 else None, lambda: f"dropped {dropped(d)}")

    mapping.write_text(
        'mappings:\n- {match: "test.dispatcher.*.*.*", name: "dispatch_$3", labels: {by: "$1"}}\n'
    )
    mark = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "reloaded", mark)
    assert any("1 mapping rules from" in line for line in d.lines[mark:]), d.stderr
    d.send_udp(DISPATCH, b"noisy.debug:1|c")
    poll_value(d, key, 1, name="dispatch_success", agg="sum", tags="by:FooProcessor")
    poll_value(d, key, 1, name="noisy.debug", agg="sum")  # no drop rule any more
    # The series stored before keep their names.
    poll_value(d, key, 1, name="dispatcher_events_total", agg="sum")

    mapping.write_text(
        'mappings:\n- {match: "a.*", name: b}\n- {match: "c", name: d, lables: {}}\n'
    )
    mark = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "keeping the running config", mark)
    assert any("mappings[1].lables: unknown key" in line for line in d.lines[mark:]), d.stderr
    d.send_udp(DISPATCH)
    poll_value(d, key, 2, name="dispatch_success", agg="sum")  # the rules in use stay
    assert dropped(d) == 1
    assert d.terminate() == 0


def test_a_file_that_cannot_be_used_stops_a_start_and_check_config(tmp_path: Path) -> None:
    path, _, mapping = config_with_rules(tmp_path, RULES + "- {match: 'x', name: y, bogus: 1}\n")
    for args, code in ((("check-config", str(path)), 1), (("serve", "--config", str(path)), 2)):
        r = run_cli(*args, cwd=tmp_path)
        assert r.returncode == code, r.stderr
        assert f"statsd.mapping_file: {mapping}: mappings[3].bogus: unknown key" in r.stderr
    mapping.write_text("mappings:\n- {match: 'a(', match_type: regex, name: b}\n")
    r = run_cli("check-config", str(path), cwd=tmp_path)
    assert "mappings[0].match: not a valid regex" in r.stderr, r.stderr
    mapping.unlink()
    r = run_cli("check-config", str(path), cwd=tmp_path)
    assert r.returncode == 1 and f"cannot read {mapping}" in r.stderr, r.stderr
