"""Mapping rules (statsd_exporter's schema): the file is parsed strictly, rules match as
statsd_exporter's do, a matching rule's name and labels become the series the parser gives, and
a running gateway's reload maps the lines after it by the new rules (a bad file keeps them).

The parser is the pure-Python path's; the native core asks the same parser (key_or_reason), so
tests/test_native_parity.py holds the native path to these answers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.errors import ConfigError
from statsd_gateway.mapping import (
    DROPPED_BY_MAPPING,
    INVALID_MAPPED_NAME,
    Mapper,
    load_rules,
    parse_rules,
)
from statsd_gateway.mapping_file import DEFAULT_BUCKETS, parse_go_duration
from statsd_gateway.model import MetricType, Tags
from statsd_gateway.protocol import INVALID_TAGS, StatsdParser
from statsd_gateway.series_registry import SeriesRegistry
from tests.conftest import T0, Api, ManualClock, make_config, running, send_udp, wait_until

SINCE, UNTIL = int(T0 - 3600), int(T0 + 60)

README = """
mappings:
- match: "test.dispatcher.*.*.*"
  name: "dispatcher_events_total"
  labels:
    processor: "$1"
    action: "$2"
    outcome: "$3"
    job: "test_dispatcher"
- match: "*.signup.*.*"
  name: "signup_events_total"
  labels:
    provider: "$2"
    outcome: "$3"
    job: "${1}_server"
"""


def parser(text: str, sanitise: str = "statsd") -> StatsdParser:
    p = StatsdParser(sanitise=sanitise)
    p.set_mapper(Mapper(parse_rules(text), p.sanitise))
    return p


def series(p: StatsdParser, line: str) -> tuple[str, Tags] | str:
    """The series a line's samples land in, or the reason the line is refused."""
    res = p.parse(line.encode())
    if res.rejects:
        return res.rejects[0][0]
    assert len({(s.name, s.tags) for s in res.samples}) == 1, res.samples
    return res.samples[0].name, res.samples[0].tags


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_rules(text)
    return str(e.value)


# ---- globs


def test_the_readme_globs_map_names_to_names_and_labels() -> None:
    p = parser(README)
    assert series(p, "test.dispatcher.FooProcessor.send.success:1|c") == (
        "dispatcher_events_total",
        (("action", "send"), ("job", "test_dispatcher"), ("outcome", "success"),
         ("processor", "FooProcessor")),
    )  # fmt: skip
    assert series(p, "foo_product.signup.facebook.failure:1|c") == (
        "signup_events_total",
        (("job", "foo_product_server"), ("outcome", "failure"), ("provider", "facebook")),
    )
    # No rule matches: the name is kept as it is without rules.
    assert series(p, "test.web-server.foo.bar:1|c") == ("test.web-server.foo.bar", ())


def test_a_star_is_one_whole_component() -> None:
    p = parser("mappings:\n- {match: 'a.*.c', name: 'x_$1'}\n")
    assert series(p, "a.b.c:1|c") == ("x_b", ())
    assert series(p, "a.b.b.c:1|c") == ("a.b.b.c", ())  # two components: no match
    assert series(p, "a.c:1|c") == ("a.c", ())
    assert series(p, "a..c:1|c") == ("x_", ())  # an empty component is one too
    assert "stands for a whole component" in config_error("mappings:\n- {match: 'a.b*', name: x}")
    assert "empty component" in config_error("mappings:\n- {match: 'a..b', name: x}")


def test_the_first_matching_glob_in_the_file_wins() -> None:
    text = """
mappings:
- {match: 'a.*.*', name: first}
- {match: 'a.b.c', name: second}
- {match: 'a.b.*', name: third}
"""
    p = parser(text)
    assert series(p, "a.b.c:1|c") == ("first", ())
    # ... and with ordering disabled, the most specific one: literals before `*`, from the left.
    p = parser(text + "defaults: {glob_disable_ordering: true}\n")
    assert series(p, "a.b.c:1|c") == ("second", ())
    assert series(p, "a.b.d:1|c") == ("third", ())
    assert series(p, "a.x.d:1|c") == ("first", ())


def test_globs_are_tried_before_regexes_whatever_the_order() -> None:
    text = """
mappings:
- {match: '.*', match_type: regex, name: by_regex}
- {match: 'a.*', name: by_glob}
"""
    p = parser(text)
    assert series(p, "a.b:1|c") == ("by_glob", ())
    assert series(p, "z.b:1|c") == ("by_regex", ())


# ---- regexes


def test_regex_captures_numbered_named_whole_and_dollar() -> None:
    text = r"""
mappings:
- match: 'test\.(\w+)\.(?P<kind>\w+)\.counter'
  match_type: regex
  name: '${2}_total'
  labels: {provider: '$1', kind: '${kind}', whole: '$0', price: '$$5'}
"""
    p = parser(text)
    assert series(p, "test.aws.hits.counter:1|c") == (
        "hits_total",
        (("kind", "hits"), ("price", "$5"), ("provider", "aws"),
         ("whole", "test.aws.hits.counter")),
    )  # fmt: skip


def test_a_regex_is_searched_not_anchored_and_tried_in_file_order() -> None:
    text = """
defaults: {match_type: regex}
mappings:
- {match: 'b', name: has_b}
- {match: '.', name: anything}
"""
    p = parser(text)
    assert series(p, "abc:1|c") == ("has_b", ())
    assert series(p, "xyz:1|c") == ("anything", ())


def test_bad_regexes_and_references_name_the_mapping() -> None:
    msg = config_error("mappings:\n- {match: 'a(', match_type: regex, name: x}\n")
    assert msg.startswith("mappings[0].match: not a valid regex")
    msg = config_error("mappings:\n- {match: 'a', name: ok}\n- {match: 'a.*', name: '$2'}\n")
    assert msg.startswith("mappings[1].name: $2: the match has 1 capture")
    msg = config_error("mappings:\n- {match: 'a.*', name: '$0'}\n")  # a glob has no $0
    assert msg.startswith("mappings[0].name: $0")
    msg = config_error("mappings:\n- {match: '(a)', match_type: regex, name: x, labels: {k: $z}}")
    assert msg.startswith("mappings[0].labels.k: $z: the match has no capture of that name")


# ---- what a rule applies to, and what it makes


def test_match_metric_type_selects_lines_by_type() -> None:
    text = """
mappings:
- {match: 'm.*', match_metric_type: counter, name: m_counter}
- {match: 'm.*', match_metric_type: gauge, name: m_gauge}
- {match: 'm.*', match_metric_type: observer, name: m_observer}
- {match: 't.*', match_metric_type: timer, name: t_observer}
- {match: 'm.*', match_metric_type: set, name: m_set}
"""
    p = parser(text)
    assert series(p, "m.a:1|c") == ("m_counter", ())
    assert series(p, "m.a:1|g") == ("m_gauge", ())
    for kind in ("ms", "h", "d"):
        assert series(p, f"m.a:1|{kind}") == ("m_observer", ())
    assert series(p, "t.a:1|ms") == ("t_observer", ())
    assert series(p, "t.a:1|c") == ("t.a", ())
    assert series(p, "m.a:x|s") == ("m_set", ())
    msg = config_error("mappings:\n- {match: a, match_metric_type: summary, name: x}\n")
    assert msg.startswith("mappings[0].match_metric_type: expected one of counter, gauge")


def test_drop_refuses_the_line_by_its_own_reason() -> None:
    p = parser("mappings:\n- {match: 'noisy.*', action: drop}\n- {match: 'k.*', name: kept}\n")
    res = p.parse(b"noisy.a:1|c\nk.a:1|c\nnoisy.b:2|ms")
    assert [s.name for s in res.samples] == ["kept"]
    assert [r for r, _ in res.rejects] == [DROPPED_BY_MAPPING, DROPPED_BY_MAPPING]


def test_a_label_replaces_the_line_tag_unless_honor_labels() -> None:
    text = """
mappings:
- {match: 'a.*', name: a, labels: {env: '$1', team: core}}
- {match: 'b.*', name: b, labels: {env: '$1', team: core}, honor_labels: true}
"""
    p = parser(text)
    assert series(p, "a.dev:1|c|#env:prod,host:h1") == (
        "a",
        (("env", "dev"), ("host", "h1"), ("team", "core")),
    )
    assert series(p, "b.dev:1|c|#env:prod,host:h1") == (
        "b",
        (("env", "prod"), ("host", "h1"), ("team", "core")),
    )
    assert series(p, "b.dev,host=h2:1|c") == (
        "b",
        (("env", "dev"), ("host", "h2"), ("team", "core")),
    )


def test_rules_see_the_name_as_sent_and_what_they_make_is_cleaned() -> None:
    # With prometheus sanitising a.b is a_b: the rules still see the dots the client sent.
    p = parser("mappings:\n- {match: 'api.*.latency', name: 'api.$1 latency'}\n", "prometheus")
    assert series(p, "api.get.latency:1|ms") == ("api_get_latency", ())
    p = parser("mappings:\n- {match: 'api.*.latency', name: 'api.$1 latency'}\n")
    assert series(p, "api.get.latency:1|ms") == ("api.get_latency", ())


def test_an_invalid_result_is_a_counted_reject_never_an_error() -> None:
    text = """
mappings:
- {match: 'e.*', name: '$1'}
- {match: 'long.*', name: l, labels: {v: '$1$1$1$1$1$1$1$1$1$1$1'}}
"""
    p = parser(text)
    assert series(p, "e.:1|c") == INVALID_MAPPED_NAME  # empty after substitution
    assert series(p, "e.---:1|c") == INVALID_MAPPED_NAME  # no letter or digit
    assert series(p, f"long.{'x' * 19}:1|c") == INVALID_TAGS  # 209 > 200 characters
    assert series(p, "long.x:1|c|#" + ",".join(f"t{i}:v" for i in range(32))) == INVALID_TAGS


def test_a_line_refused_before_its_name_is_mapped_keeps_its_reason() -> None:
    p = parser("mappings:\n- {match: 'a', action: drop}\n")
    assert series(p, "a:1|c|@2") == "invalid_sample_rate"
    assert series(p, "a,x=1:1|c|#y:2") == "mixed_tag_styles"
    assert series(p, "a:abc|c") == DROPPED_BY_MAPPING  # the name is judged before the value


def test_a_new_mapper_maps_the_lines_after_it() -> None:
    p = parser("mappings:\n- {match: 'a', name: one}\n")
    assert series(p, "a:1|c") == ("one", ())
    p.set_mapper(Mapper(parse_rules("mappings:\n- {match: 'a', name: two}\n"), p.sanitise))
    assert series(p, "a:1|c") == ("two", ())
    p.set_mapper(None)
    assert series(p, "a:1|c") == ("a", ())
    assert p.key_or_reason("a", "", MetricType.COUNTER) == ("a", ())


# ---- the file


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("mappings:\n- {match: a, name: x}\n- {match: b, name: y, lables: {}}\n",
         "mappings[1].lables"),
        ("defaults: {bogus: 1}\n", "defaults.bogus"),
        ("mapping: []\n", "mapping"),
        ("mappings:\n- {match: a, name: x, summary_options: {quantile: []}}\n",
         "mappings[0].summary_options.quantile"),
        ("mappings:\n- {match: a, name: x, summary_options: {quantiles: [{q: 1}]}}\n",
         "mappings[0].summary_options.quantiles[0].q"),
    ],
)  # fmt: skip
def test_an_unknown_key_is_an_error_naming_it_and_its_mapping(text: str, where: str) -> None:
    msg = config_error(text)
    assert msg.startswith(f"{where}: unknown key (known: "), msg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mappings:\n- {name: x}\n", "mappings[0].match: required"),
        ("mappings:\n- {match: a}\n", "mappings[0].name: required"),
        ("mappings:\n- {match: a, name: x, labels: {'0k': v}}\n", "mappings[0].labels.0k: a label"),
        ("mappings:\n- {match: a, name: x, labels: {k: [1]}}\n",
         "mappings[0].labels[...]: Expected `str`"),
        ("mappings:\n- {match: a, name: x, action: keep}\n", "mappings[0].action: expected one of"),
        ("mappings:\n- {match: a, name: x, scale: 0.001}\n", "mappings[0].scale: not supported"),
        ("mappings:\n- {match: a, name: x, ttl: 10}\n", "mappings[0].ttl: 10 is not a duration"),
        ("mappings:\n- {match: a, name: x, observer_type: histogram, summary_options: {}}\n",
         "mappings[0].summary_options: not with observer_type histogram"),
        ("mappings:\n- {match: a, name: x, histogram_options: {buckets: [1, 1]}}\n",
         "mappings[0].histogram_options.buckets: must increase"),
        ("mappings:\n- {match: a, name: x, buckets: [1], histogram_options: {buckets: [2]}}\n",
         "mappings[0].buckets: the old place of histogram_options.buckets"),
        ("mappings:\n- {match: a, name: x, observer_type: summary, timer_type: histogram}\n",
         "mappings[0].timer_type: the old name of observer_type"),
        ("mappings: [1]\n", "mappings[0]: Expected `object`"),
        ("mappings: [\n", "not valid YAML"),
    ],
)  # fmt: skip
def test_bad_values_name_their_place(text: str, message: str) -> None:
    assert message in config_error(text)


def test_a_migrating_users_file_loads_with_every_key() -> None:
    rules = parse_rules("""
defaults:
  observer_type: histogram
  match_type: glob
  glob_disable_ordering: false
  ttl: 1m30s
  histogram_options: {buckets: [0.1, 1, 10], native_histogram_bucket_factor: 1.5,
                      native_histogram_max_buckets: 100}
  summary_options: {quantiles: [{quantile: 0.9, error: 0.01}], max_age: 30s, age_buckets: 3,
                    buf_cap: 1000}
mappings:
- match: a.*
  name: a_total
  help: All the a's.
  labels: {kind: $1}
  honor_labels: false
- match: b.*
  name: b
  timer_type: summary
  quantiles: [{quantile: 0.5, error: 0.05}]
  ttl: 0
- match: c.*
  name: c
  buckets: [1, 2]
  action: map
  match_metric_type: observer
- match: d.*
  name: d
  observer_type: summary
  summary_options: {max_age: 1h}
""")
    a, b, c, d = rules.file.options
    assert (a.observer_type, a.buckets, a.ttl, a.help) == (
        "histogram",
        (0.1, 1, 10),
        90,
        "All the a's.",
    )
    assert (a.native_histogram_bucket_factor, a.native_histogram_max_buckets) == (1.5, 100)
    assert (b.observer_type, b.quantiles, b.ttl) == ("summary", ((0.5, 0.05),), 90)
    assert c.buckets == (1, 2)
    # Options a rule leaves unset are the defaults' own.
    assert (d.quantiles, d.max_age, d.age_buckets, d.buf_cap) == (((0.9, 0.01),), 3600, 3, 1000)


def test_empty_sections_and_scalar_label_values_read_as_statsd_exporter_reads_them() -> None:
    p = parser("defaults:\nmappings:\n- {match: a, name: b, labels: {code: 200, ok: true}}\n")
    assert series(p, "a:1|c") == ("b", (("code", "200"), ("ok", "true")))
    assert parse_rules("mappings:\n").count == 0
    assert parse_rules("mappings:\n- {match: a, name: b, labels: }\n").count == 1


def test_statsd_exporters_defaults_where_the_file_sets_none() -> None:
    options = parse_rules("mappings:\n- {match: a, name: b}\n").file.options[0]
    assert options.observer_type == "summary"
    assert options.quantiles == ((0.5, 0.05), (0.9, 0.01), (0.99, 0.001))
    assert options.buckets == DEFAULT_BUCKETS
    assert options.ttl is None
    assert parse_rules("").count == 0


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0), (0, 0), ("1.5h", 5400), ("1m30s", 90), ("250ms", 0.25)]
)
def test_go_durations(text: str | int, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


def test_a_file_that_cannot_be_read_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mappings:\n- {match: a, name: x, bogus: 1}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: mappings\[0\]\.bogus: unknown key"):
        load_rules(bad)


# ---- the options kept per series


def test_the_registry_keeps_the_options_of_the_rule_that_made_a_series() -> None:
    p = parser("mappings:\n- {match: 'h.*', name: h, labels: {k: $1}, observer_type: histogram}\n")
    registry = SeriesRegistry()
    registry.describe = p.mapped_options
    agg = IntervalAggregator(interval=10.0, clock=ManualClock(), registry=registry,
                             max_series_per_tenant=10, max_backdate=60.0)  # fmt: skip
    assert agg.add_samples("default", p.parse(b"h.x:1|ms\nother:1|ms").samples) == []
    mapped = registry.id_of(("default", "h", (("k", "x"),)))
    plain = registry.id_of(("default", "other", ()))
    assert mapped is not None and plain is not None
    found = registry.options_of(mapped)
    assert found is not None and found.observer_type == "histogram" and found.rule == 0
    assert registry.options_of(plain) is None
    registry.forget([("default", "h", (("k", "x"),))])
    assert registry.options_of(mapped) is None


# ---- a running gateway, on whichever ingest path the suite runs


async def value(api: Api, name: str, **params: Any) -> Any:
    status, body = await api.query(name=name, agg="sum", since=SINCE, until=UNTIL, **params)
    assert status == 200, body
    return body["points"][0]["value"]


async def test_a_reload_maps_new_lines_by_the_new_rules_and_a_bad_file_keeps_them(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("mappings:\n- {match: 'svc.*.hits', name: hits, labels: {svc: $1}}\n")
    cfg = make_config(tmp_path, statsd={"mapping_file": str(rules)})
    async with running(cfg, clock) as (gw, api):
        accepted = gw.telemetry.accepted

        async def send(n: int) -> None:
            send_udp(gw, b"svc.api.hits:1|c")
            await wait_until(lambda: accepted["udp"] == n, lambda: f"{accepted} != {n}")

        await send(1)
        assert await value(api, "hits", tags="svc:api") == 1
        rules.write_text("mappings:\n- {match: 'svc.*.hits', name: 'hits_$1'}\n")
        assert gw.reload(cfg) == []
        await send(2)
        assert await value(api, "hits_api") == 1
        assert await value(api, "hits", tags="svc:api") == 1  # stored series keep their names
        # A file that can no longer be used (changed after the config was checked).
        rules.write_text("mappings:\n- {match: 'svc.*.hits', name: x, lables: {}}\n")
        with caplog.at_level(logging.ERROR, "statsd_gateway"):
            assert gw.reload(cfg) == []
        assert "mappings[0].lables: unknown key" in caplog.text
        assert "keeping the mapping rules in use" in caplog.text
        await send(3)
        assert await value(api, "hits_api") == 2
        # No file at all: names are as sent again.
        assert gw.reload(make_config(tmp_path)) == []
        await send(4)
        assert await value(api, "svc.api.hits") == 1


def test_a_parser_without_rules_is_unchanged_by_a_mapper_set_and_removed() -> None:
    p = StatsdParser()
    before = p.parse(b"a.b:1|c|#k:v").samples
    p.set_mapper(Mapper(parse_rules("mappings:\n- {match: 'a.b', name: c}\n"), p.sanitise))
    assert p.parse(b"a.b:1|c|#k:v").samples[0].name == "c"
    p.set_mapper(None)
    assert p.parse(b"a.b:1|c|#k:v").samples == before


def test_the_example_in_the_docs_loads_and_maps_as_it_says() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "STATSD.md").read_text()
    section = text[text.index("## Mapping rules") :]
    example = section[section.index("```yaml\n") + 8 : section.index("```\n", 10)]
    p = StatsdParser()
    p.set_mapper(Mapper(parse_rules(example), p.sanitise))
    assert series(p, "test.dispatcher.FooProcessor.send.success:1|c") == (
        "dispatcher_events_total",
        (("action", "send"), ("outcome", "success"), ("processor", "FooProcessor")),
    )
    assert series(p, "api.get.latency:3|ms") == ("api_latency", (("method", "get"),))
    assert series(p, "debug.x:1|g") == DROPPED_BY_MAPPING
