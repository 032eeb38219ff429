"""StatsD conformance: one table of named scenarios, each the text a client sends → what a user
sees through the query API, and the reject reasons / ignored kinds the daemon counts.

Every scenario runs twice:

(a) through `StatsdParser` directly, its samples fed to a small reference model of DESIGN.md §2
    (first type wins, sample-rate weights, gauge deltas, timestamp limits, series limit) whose
    answers must be the table's;
(b) end to end: a real Gateway of its own, the text sent over UDP, TCP or a Unix datagram socket,
    the answers read through `GET /v1/metrics/query` — first from memory, then again after a flush;
    and, for each scenario with a JSON form (`json_form`), its points posted to
    `POST /v1/metrics/batch` instead, with the same answers. A scenario in StatsD-only syntax (a
    line the parser rejects, a gauge delta, an event) has none and is not run over HTTP.

Quantiles are DDSketch estimates (relative accuracy 1 %): they are compared with a 1 % tolerance.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from statsd_gateway.aggregator import AGGREGATOR_REJECT_REASONS
from statsd_gateway.api.schemas import parse_point
from statsd_gateway.errors import InvalidArgument
from statsd_gateway.gateway import Gateway
from statsd_gateway.model import MetricType
from statsd_gateway.protocol import (
    MAX_LINE_BYTES,
    REJECT_REASONS,
    ParseResult,
    Sample,
    StatsdParser,
)
from tests.conftest import T0, Api, ManualClock, make_config, wait_until

T = int(T0)
NOW = T0 + 5.0  # the ManualClock's start
SINCE = T - 7 * 3600
UNTIL = T + 700
MAX_BACKDATE = 6 * 3600.0
MAX_AHEAD = 600.0

NOT_FOUND = "METRIC_NOT_FOUND"  # the query answers 404
BAD_AGG = "INVALID_ARGUMENT"  # the aggregation does not exist for the type: 400


@dataclass(frozen=True)
class Q:
    """One query and its answer.

    value: a number (the one point over the whole range), None (no point), NOT_FOUND or
    BAD_AGG; with `window`, a list of (bucket timestamp, value).
    """

    name: str
    agg: str
    value: Any
    tags: str | None = None
    window: str | None = None


def q(name: str, agg: str, value: Any, tags: str | None = None, window: str | None = None) -> Q:
    return Q(name, agg, value, tags, window)


def sc(
    id_: str,
    text: str | bytes,
    *expect: Q,
    rejects: dict[str, int] | None = None,
    ignored: dict[str, int] | None = None,
    config: dict[str, dict[str, Any]] | None = None,
) -> Any:
    payload = text.encode() if isinstance(text, str) else text
    return pytest.param(payload, expect, rejects or {}, ignored or {}, config or {}, id=id_)


def _slug(id_: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", id_.lower()).strip("_")


def bad(
    id_: str,
    line: str | bytes,
    reason: str,
    *expect: Q,
    config: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """A reject scenario: the bad line between two good neighbours in one datagram; both
    neighbours must still count."""
    slug = _slug(id_)
    raw = line.encode() if isinstance(line, str) else line
    payload = b"nb.%s.before:1|c\n%s\nnb.%s.after:2|c" % (slug.encode(), raw, slug.encode())
    return sc(
        id_,
        payload,
        q(f"nb.{slug}.before", "sum", 1),
        q(f"nb.{slug}.after", "sum", 2),
        *expect,
        rejects={reason: 1},
        config=config,
    )


def many_tags(n: int) -> str:
    return "|#" + ",".join(f"t{i}:v" for i in range(n))


LONG_OK = "ll.ok:0." + "0" * (MAX_LINE_BYTES - len("ll.ok:0.1|c")) + "1|c"
assert len(LONG_OK) == MAX_LINE_BYTES
LONG_BAD = "ll.bad:0." + "0" * (MAX_LINE_BYTES - len("ll.bad:0.1|c") + 1) + "1|c"
assert len(LONG_BAD) == MAX_LINE_BYTES + 1
# 4,109 characters but 8,209 bytes: over the limit, which is in bytes.
LONG_MULTIBYTE = "ll.mb" + "é" * 4100 + ":1|c"
assert len(LONG_MULTIBYTE) <= MAX_LINE_BYTES < len(LONG_MULTIBYTE.encode())

ABSOLUTE = {"statsd": {"gauge_sign": "absolute"}}
PROMETHEUS = {"statsd": {"name_sanitising": "prometheus"}}
NO_SANITISING = {"statsd": {"name_sanitising": "none"}}

SCENARIOS: list[Any] = [
    # --- counters ----------------------------------------------------------------------------
    sc("simple counter", "hits:1|c", q("hits", "sum", 1), q("hits", "count", 1)),
    sc(
        "counter lines add up",
        "c.add:1|c\nc.add:2|c\nc.add:3|c",
        q("c.add", "sum", 6),
        q("c.add", "count", 3),
        q("c.add", "avg", 2),
        q("c.add", "min", 1),
        q("c.add", "max", 3),
    ),
    sc("negative counter value", "c.neg:-2|c\nc.neg:5|c", q("c.neg", "sum", 3)),
    sc("fractional counter", "c.frac:0.25|c\nc.frac:0.5|c", q("c.frac", "sum", 0.75)),
    sc(
        "counter with sample rate",
        "c.rate:1|c|@0.1",
        q("c.rate", "sum", 10),
        q("c.rate", "count", 10),
    ),
    sc(
        "counter rates sum value over rate",
        "c.rates:2|c|@0.5\nc.rates:3|c|@0.25\nc.rates:1|c",
        q("c.rates", "sum", 17),
        q("c.rates", "count", 7),
    ),
    sc(
        "sample rate one is unsampled", "c.one:4|c|@1", q("c.one", "sum", 4), q("c.one", "count", 1)
    ),
    sc("sample rate without leading zero", "c.dot:1|c|@.5", q("c.dot", "sum", 2)),
    sc("tiny sample rate", "c.tiny:1|c|@0.001", q("c.tiny", "sum", 1000)),
    sc(
        "counter min and max are raw values",
        "c.mm:2|c|@0.5\nc.mm:7|c",
        q("c.mm", "min", 2),
        q("c.mm", "max", 7),
        q("c.mm", "sum", 11),
    ),
    sc(
        "counter has no quantiles or last",
        "c.noq:1|c",
        q("c.noq", "p50", BAD_AGG),
        q("c.noq", "last", BAD_AGG),
        q("c.noq", "distinct", BAD_AGG),
    ),
    sc("counter exponent value", "c.exp:1e3|c\nc.exp:2E-1|c", q("c.exp", "sum", 1000.2)),
    sc("counter plus sign", "c.plus:+2|c", q("c.plus", "sum", 2)),
    sc("value with bare dot", "c.bare:.5|c\nc.bare:5.|c", q("c.bare", "sum", 5.5)),
    sc(
        "counter rate over a window",
        "c.win:30|c",
        q("c.win", "rate", [(T, 3)], window="10s"),
        q("c.win", "sum", [(T, 30)], window="10s"),
    ),
    sc(
        "etsy readme example",
        "gorets:1|c\nglork:320|ms\ngaugor:333|g\nuniques:765|s",
        q("gorets", "sum", 1),
        q("glork", "p50", 320),
        q("gaugor", "last", 333),
        q("uniques", "distinct", 1),
    ),
    sc(
        "a thousand lines in one datagram",
        "\n".join(["c.thousand:1|c"] * 1000),
        q("c.thousand", "sum", 1000),
        q("c.thousand", "count", 1000),
    ),
    sc("sample rate in exponent form", "c.rexp:1|c|@5e-1", q("c.rexp", "sum", 2)),
    sc("empty datagram stores nothing", ""),
    # --- gauges ------------------------------------------------------------------------------
    sc("gauge absolute", "g.abs:21.5|g", q("g.abs", "last", 21.5), q("g.abs", "count", 1)),
    sc(
        "gauge last value wins",
        "g.last:1|g\ng.last:5|g\ng.last:3|g",
        q("g.last", "last", 3),
        q("g.last", "max", 5),
        q("g.last", "min", 1),
        q("g.last", "count", 3),
        q("g.last", "avg", 3),
    ),
    sc("gauge increment", "g.inc:10|g\ng.inc:+5|g", q("g.inc", "last", 15), q("g.inc", "max", 15)),
    sc("gauge decrement", "g.dec:10|g\ng.dec:-3|g", q("g.dec", "last", 7), q("g.dec", "min", 7)),
    sc("gauge delta from nothing starts at zero", "g.zero:+4|g", q("g.zero", "last", 4)),
    sc(
        "gauge set negative via zero then delta",
        "g.setneg:0|g\ng.setneg:-5|g",
        q("g.setneg", "last", -5),
    ),
    sc(
        "gauge deltas accumulate",
        "g.acc:+1|g\ng.acc:+1|g\ng.acc:+1|g\ng.acc:-0.5|g",
        q("g.acc", "last", 2.5),
        q("g.acc", "max", 3),
    ),
    sc(
        "gauge sign absolute: minus is a value",
        "g.absneg:10|g\ng.absneg:-3|g",
        q("g.absneg", "last", -3),
        q("g.absneg", "min", -3),
        config=ABSOLUTE,
    ),
    sc(
        "gauge sign absolute: plus is a value",
        "g.abspos:10|g\ng.abspos:+3|g",
        q("g.abspos", "last", 3),
        config=ABSOLUTE,
    ),
    sc(
        "gauge ignores sample rate",
        "g.rate:8|g|@0.5",
        q("g.rate", "last", 8),
        q("g.rate", "count", 1),
        q("g.rate", "sum", 8),
    ),
    sc(
        "gauge packed values keep their own sign",
        "g.packed:+1:-2:5|g",
        q("g.packed", "last", 5),
        q("g.packed", "min", -1),
        q("g.packed", "count", 3),
    ),
    sc(
        "gauge deltas apply per series",
        "g.ser:10|g|#h:a\ng.ser:+1|g|#h:b\ng.ser:+2|g|#h:a",
        q("g.ser", "last", 12, tags="h:a"),
        q("g.ser", "last", 1, tags="h:b"),
    ),
    sc("gauge quantile", "g.q:1|g\ng.q:2|g\ng.q:30|g", q("g.q", "p50", 2)),
    sc("gauge has no distinct", "g.nod:1|g", q("g.nod", "distinct", BAD_AGG)),
    sc(
        "gauge late absolute value does not move last",
        f"g.late:5|g\ng.late:3|g|T{T - 60}",
        q("g.late", "last", 5),
        q("g.late", "min", 3),
    ),
    # --- timers, histograms, distributions ---------------------------------------------------
    sc(
        "timer ms",
        "t.one:320|ms",
        q("t.one", "count", 1),
        q("t.one", "sum", 320),
        q("t.one", "p50", 320),
    ),
    sc(
        "timer statistics",
        "t.stats:10|ms\nt.stats:20|ms\nt.stats:30|ms\nt.stats:40|ms\nt.stats:50|ms",
        q("t.stats", "count", 5),
        q("t.stats", "sum", 150),
        q("t.stats", "avg", 30),
        q("t.stats", "min", 10),
        q("t.stats", "max", 50),
        q("t.stats", "p50", 30),
        q("t.stats", "p0", 10),
        q("t.stats", "p100", 50),
    ),
    sc(
        "timer has no last or distinct",
        "t.nolast:1|ms",
        q("t.nolast", "last", BAD_AGG),
        q("t.nolast", "distinct", BAD_AGG),
    ),
    sc(
        "timer with sample rate",
        "t.rate:10|ms|@0.1",
        q("t.rate", "count", 10),
        q("t.rate", "sum", 100),
        q("t.rate", "avg", 10),
        q("t.rate", "p50", 10),
    ),
    sc(
        "timer sample rate weighs quantiles",
        "t.wq:1|ms|@0.1\nt.wq:100|ms\nt.wq:200|ms",
        q("t.wq", "count", 12),
        q("t.wq", "sum", 310),
        q("t.wq", "p50", 1),
        q("t.wq", "max", 200),
    ),
    sc(
        "histogram h",
        "h.one:12|h\nh.one:18|h\nh.one:30|h",
        q("h.one", "count", 3),
        q("h.one", "sum", 60),
        q("h.one", "p50", 18),
    ),
    sc(
        "histogram with sample rate",
        "h.rate:4|h|@0.25",
        q("h.rate", "count", 4),
        q("h.rate", "sum", 16),
    ),
    sc(
        "distribution d",
        "d.one:1.5|d\nd.one:2.5|d\nd.one:0.5|d",
        q("d.one", "p50", 1.5),
        q("d.one", "avg", 1.5),
        q("d.one", "count", 3),
    ),
    sc(
        "negative timer values",
        "t.neg:-4e2|ms\nt.neg:100|ms\nt.neg:-5|ms",
        q("t.neg", "min", -400),
        q("t.neg", "p50", -5),
        q("t.neg", "max", 100),
    ),
    sc(
        "timer zeros",
        "t.zero:0|ms\nt.zero:0|ms\nt.zero:0|ms",
        q("t.zero", "p50", 0),
        q("t.zero", "sum", 0),
    ),
    sc(
        "timer quantiles of 101 values",
        "t.hundred:" + ":".join(str(i) for i in range(101)) + "|ms",
        q("t.hundred", "p50", 50),
        q("t.hundred", "p90", 90),
        q("t.hundred", "p99", 99),
        q("t.hundred", "p100", 100),
        q("t.hundred", "count", 101),
    ),
    # --- DogStatsD packed values -------------------------------------------------------------
    sc(
        "dogstatsd packed timer",
        "p.timer:1:2:3|ms",
        q("p.timer", "count", 3),
        q("p.timer", "sum", 6),
        q("p.timer", "p50", 2),
    ),
    sc(
        "dogstatsd packed timer with rate",
        "p.rate:1:2:3|ms|@0.5",
        q("p.rate", "count", 6),
        q("p.rate", "sum", 12),
    ),
    sc(
        "dogstatsd empty packed values skipped",
        "p.empty:1::3:|ms",
        q("p.empty", "count", 2),
        q("p.empty", "sum", 4),
    ),
    sc("dogstatsd packed histogram", "p.hist:5:10:15|h", q("p.hist", "p50", 10)),
    sc(
        "dogstatsd packed distribution with tags",
        "p.dist:1:2:3|d|#env:prod",
        q("p.dist", "count", 3, tags="env:prod"),
        q("p.dist", "sum", 6, tags="env:prod"),
    ),
    sc(
        "dogstatsd packed counter",
        "p.count:1:2:3|c",
        q("p.count", "sum", 6),
        q("p.count", "count", 3),
    ),
    sc(
        "dogstatsd packed values with timestamp",
        f"p.ts:1:2|d|T{T - 120}",
        q("p.ts", "count", [(T - 120, 2)], window="10s"),
    ),
    # --- sets --------------------------------------------------------------------------------
    sc(
        "set distinct",
        "s.abc:a|s\ns.abc:b|s\ns.abc:a|s",
        q("s.abc", "distinct", 2),
        q("s.abc", "count", 3),
    ),
    sc(
        "set members are strings",
        "s.num:1|s\ns.num:1.0|s\ns.num:01|s\ns.num:1|s",
        q("s.num", "distinct", 3),
    ),
    sc(
        "set member with a colon", "s.colon:user:1|s\ns.colon:user:2|s", q("s.colon", "distinct", 2)
    ),
    sc(
        "set ignores sample rate",
        "s.rate:a|s|@0.5",
        q("s.rate", "count", 1),
        q("s.rate", "distinct", 1),
    ),
    sc(
        "set has only count and distinct",
        "s.aggs:a|s",
        q("s.aggs", "sum", BAD_AGG),
        q("s.aggs", "avg", BAD_AGG),
        q("s.aggs", "p50", BAD_AGG),
    ),
    sc(
        "set with tags",
        "s.tags:a|s|#env:prod\ns.tags:b|s|#env:dev\ns.tags:c|s|#env:prod",
        q("s.tags", "distinct", 2, tags="env:prod"),
        q("s.tags", "distinct", 3),
    ),
    sc("set unicode member", "s.uni:é|s\ns.uni:e|s", q("s.uni", "distinct", 2)),
    sc(
        "set hundred members",
        "\n".join(f"s.many:m{i}|s" for i in range(100)),
        q("s.many", "distinct", 100),
    ),
    # --- framing -----------------------------------------------------------------------------
    sc(
        "several lines per datagram",
        "f.a:1|c\nf.b:2|g\nf.c:3|ms",
        q("f.a", "sum", 1),
        q("f.b", "last", 2),
        q("f.c", "sum", 3),
    ),
    sc("crlf line endings", "f.crlf:1|c\r\nf.crlf:2|c\r\n", q("f.crlf", "sum", 3)),
    sc("missing final newline", "f.nofinal:1|c\nf.nofinal:2|c", q("f.nofinal", "sum", 3)),
    sc("final newline", "f.final:1|c\n", q("f.final", "sum", 1)),
    sc("empty lines skipped", "\n\r\nf.empty:1|c\n\n", q("f.empty", "sum", 1)),
    sc("crlf on some lines", "f.mix:1|c\r\nf.mix:2|c\nf.mix:3|c\r", q("f.mix", "sum", 6)),
    sc(
        "carriage return on a tagged line",
        "f.crtag:1|c|#env:prod\r\nf.crtag:1|c|#env:prod\r\n",
        q("f.crtag", "sum", 2, tags="env:prod"),
    ),
    # --- Etsy multi-metric lines -------------------------------------------------------------
    sc(
        "etsy multi-metric line",
        "m.same:1|c:2|c:3|c",
        q("m.same", "sum", 6),
        q("m.same", "count", 3),
    ),
    sc("etsy multi-metric line with rates", "m.rate:1|c|@0.5:2|c", q("m.rate", "sum", 4)),
    sc(
        "etsy multi-metric timers",
        "m.ms:10|ms:20|ms:30|ms",
        q("m.ms", "p50", 20),
        q("m.ms", "count", 3),
    ),
    sc(
        # Etsy keeps counters and timers apart; here a name has one type (DESIGN.md §2): the
        # first segment decides it and the timing segment is refused as a type conflict.
        "etsy multi-metric line of two types",
        "m.two:1|c:250|ms",
        q("m.two", "sum", 1),
        q("m.two", "count", 1),
        rejects={"type_conflict": 1},
    ),
    sc(
        "etsy multi-metric bad segment rejects the whole line",
        "m.bad:1|c:x|c\nm.bad.ok:1|c",
        q("m.bad", "sum", NOT_FOUND),
        q("m.bad.ok", "sum", 1),
        rejects={"invalid_value": 1},
    ),
    sc(
        "etsy multi-metric sets",
        "m.set:a|s:b|s:a|s",
        q("m.set", "distinct", 2),
        q("m.set", "count", 3),
    ),
    # --- DogStatsD tags ----------------------------------------------------------------------
    sc(
        "dogstatsd tags",
        "dt.basic:1|c|#env:prod,region:eu",
        q("dt.basic", "sum", 1, tags="env:prod"),
        q("dt.basic", "sum", 1, tags="region:eu"),
        q("dt.basic", "sum", 1, tags="env:prod,region:eu"),
        q("dt.basic", "sum", None, tags="env:dev"),
    ),
    sc("dogstatsd bare tag", "dt.bare:1|c|#canary", q("dt.bare", "sum", 1, tags="canary:")),
    sc(
        "dogstatsd tags with a bare tag",
        "dt.mixbare:1|c|#env:prod,canary",
        q("dt.mixbare", "sum", 1, tags="env:prod,canary:"),
    ),
    sc(
        "dogstatsd several tag sections merge",
        "dt.merge:1|c|#env:prod|#region:eu",
        q("dt.merge", "sum", 1, tags="env:prod,region:eu"),
    ),
    sc(
        "dogstatsd bare tag in a second section",
        "dt.merge2:2|c|#env:prod|#canary",
        q("dt.merge2", "sum", 2, tags="env:prod,canary:"),
    ),
    sc(
        "dogstatsd tag value containing colons",
        "dt.url:1|c|#url:http://x:80/",
        q("dt.url", "sum", 1, tags="url:http://x:80/"),
    ),
    sc(
        "dogstatsd duplicate tag key last wins",
        "dt.dup:1|c|#env:a,env:b",
        q("dt.dup", "sum", 1, tags="env:b"),
        q("dt.dup", "sum", None, tags="env:a"),
    ),
    sc(
        "dogstatsd duplicate tag key across sections last wins",
        "dt.dup2:1|c|#env:a|#env:b",
        q("dt.dup2", "sum", 1, tags="env:b"),
        q("dt.dup2", "sum", None, tags="env:a"),
    ),
    sc(
        "dogstatsd tag order makes one series",
        "dt.order:1|c|#a:1,b:2\ndt.order:2|c|#b:2,a:1",
        q("dt.order", "sum", 3, tags="a:1,b:2"),
        config={"aggregation": {"max_series_per_tenant": 1}},
    ),
    sc(
        "dogstatsd tag value containing equals",
        "dt.eq:1|c|#q:a=b",
        q("dt.eq", "sum", 1, tags="q:a=b"),
    ),
    sc("dogstatsd empty tag section", "dt.none:1|c|#", q("dt.none", "sum", 1)),
    sc(
        "dogstatsd empty tag items skipped",
        "dt.items:1|c|#env:prod,,region:eu,",
        q("dt.items", "sum", 1, tags="env:prod,region:eu"),
    ),
    sc(
        "dogstatsd tag with empty value",
        "dt.emptyv:1|c|#env:",
        q("dt.emptyv", "sum", 1, tags="env:"),
    ),
    sc(
        "dogstatsd 32 tags accepted",
        "dt.32:1|c" + many_tags(32),
        q("dt.32", "sum", 1, tags="t0:v,t31:v"),
    ),
    sc(
        "dogstatsd tags separate series",
        "dt.series:1|c|#env:prod\ndt.series:2|c|#env:dev\ndt.series:4|c",
        q("dt.series", "sum", 7),
        q("dt.series", "sum", 1, tags="env:prod"),
        q("dt.series", "sum", 2, tags="env:dev"),
    ),
    sc(
        "dogstatsd unicode tag value",
        "dt.uni:1|c|#city:Zürich",
        q("dt.uni", "sum", 1, tags="city:Zürich"),
    ),
    sc(
        "dogstatsd tags on a timer",
        "dt.timer:10|ms|#host:a\ndt.timer:30|ms|#host:b\ndt.timer:20|ms|#host:a",
        q("dt.timer", "p50", 20),
        q("dt.timer", "max", 20, tags="host:a"),
        q("dt.timer", "count", 3),
    ),
    # --- sections in any order ---------------------------------------------------------------
    sc("dogstatsd rate then tags", "o.rt:2|c|@0.5|#env:prod", q("o.rt", "sum", 4, tags="env:prod")),
    sc("dogstatsd tags then rate", "o.tr:2|c|#env:prod|@0.5", q("o.tr", "sum", 4, tags="env:prod")),
    sc(
        "dogstatsd rate between tag sections",
        "o.between:1|ms|#a:b|@0.25|#c:d",
        q("o.between", "count", 4, tags="a:b,c:d"),
    ),
    sc(
        "dogstatsd timestamp tags and rate in any order",
        f"o.any:5|ms|T{T - 60}|#a:b|@0.5",
        q("o.any", "count", 2, tags="a:b"),
        q("o.any", "sum", 10),
    ),
    sc(
        "dogstatsd container id after tags",
        "o.cid:1|c|#env:prod|c:83c0a99c0a54|@0.5",
        q("o.cid", "sum", 2, tags="env:prod"),
    ),
    # --- DogStatsD 1.3 timestamps ------------------------------------------------------------
    sc(
        "dogstatsd timestamp",
        f"ts.gauge:5|g|T{T - 60}",
        q("ts.gauge", "last", [(T - 60, 5)], window="10s"),
    ),
    sc(
        "dogstatsd timestamp lands in its own bucket",
        f"ts.own:1|c|T{T - 3600}\nts.own:2|c",
        q("ts.own", "sum", [(T - 3600, 1), (T, 2)], window="10s"),
        q("ts.own", "sum", 3),
    ),
    sc(
        "dogstatsd timestamp hours back accepted",
        f"ts.old:1|c|T{T - 5 * 3600}",
        q("ts.old", "sum", 1),
    ),
    sc(
        "dogstatsd timestamp minutes ahead accepted",
        f"ts.ahead:1|c|T{T + 540}",
        q("ts.ahead", "sum", [(T + 540, 1)], window="10s"),
    ),
    sc("dogstatsd timestamp on a set", f"ts.set:a|s|T{T - 30}", q("ts.set", "distinct", 1)),
    sc(
        "dogstatsd millisecond timestamp is far in the future",
        f"ts.ms:1|c|T{T * 1000}\nts.ms.ok:1|c",
        q("ts.ms", "sum", NOT_FOUND),
        q("ts.ms.ok", "sum", 1),
        rejects={"timestamp_in_future": 1},
    ),
    # --- ignored sections --------------------------------------------------------------------
    sc("dogstatsd container id ignored", "x.cid:1|c|c:83c0a99c0a54", q("x.cid", "sum", 1)),
    sc("dogstatsd external data ignored", "x.ext:1|c|e:it-false,cn-web", q("x.ext", "sum", 1)),
    sc("dogstatsd cardinality ignored", "x.card:1|c|card:high", q("x.card", "sum", 1)),
    sc(
        "dogstatsd all ignored sections with tags",
        "x.all:1|c|#env:prod|c:abc|e:x|card:low",
        q("x.all", "sum", 1, tags="env:prod"),
    ),
    sc(
        "unknown section ignored and counted",
        "x.unknown:1|c|x:what",
        q("x.unknown", "sum", 1),
        ignored={"unknown_section": 1},
    ),
    sc(
        "two unknown sections counted",
        "x.two:1|c|x:what|y|#env:prod",
        q("x.two", "sum", 1, tags="env:prod"),
        ignored={"unknown_section": 2},
    ),
    sc(
        "unknown sections counted on every line",
        "x.every:1|c|zz\nx.every:1|c|zz",
        q("x.every", "sum", 2),
        ignored={"unknown_section": 2},
    ),
    sc(
        # ignored_total counts what was accepted but not stored: a rejected line is not.
        "unknown section of a rejected line not counted as ignored",
        "x.rej:1|c|zz|@0\nx.rej.ok:1|c",
        q("x.rej", "sum", NOT_FOUND),
        q("x.rej.ok", "sum", 1),
        rejects={"invalid_sample_rate": 1},
    ),
    sc("empty section skipped", "x.empty:1|c||@0.5", q("x.empty", "sum", 2)),
    sc("trailing pipe", "x.trail:1|c|", q("x.trail", "sum", 1)),
    # --- events and service checks -----------------------------------------------------------
    sc("event counted not stored", "_e{5,4}:title|text", ignored={"event": 1}),
    sc(
        "event with all fields",
        "_e{5,4}:title|text|d:1764172800|h:host|k:key|p:low|s:src|t:info|#env:prod",
        ignored={"event": 1},
    ),
    sc("service check counted not stored", "_sc|db.up|0", ignored={"service_check": 1}),
    sc(
        "service check with all fields",
        "_sc|db.up|2|d:1764172800|h:host|#env:prod|m:down",
        ignored={"service_check": 1},
    ),
    sc(
        "events and service checks between metrics",
        "ev.c:1|c\n_e{1,1}:a|b\n_sc|x|1\nev.c:2|c",
        q("ev.c", "sum", 3),
        ignored={"event": 1, "service_check": 1},
    ),
    sc("underscore e metric is not an event", "_e.x:1|c", q("_e.x", "sum", 1)),
    sc("underscore metric is not an event", "_private:1|c", q("_private", "sum", 1)),
    # --- Influx / Telegraf, Librato, SignalFx tags -------------------------------------------
    sc(
        "influx tags",
        "i.basic,env=prod,region=eu:1|c",
        q("i.basic", "sum", 1, tags="env:prod,region:eu"),
        q("i.basic,env=prod,region=eu", "sum", NOT_FOUND),
    ),
    sc(
        "influx tags on a timer",
        "i.timer,host=a:10|ms\ni.timer,host=b:30|ms",
        q("i.timer", "p50", 10, tags="host:a"),
        q("i.timer", "count", 2),
    ),
    sc(
        "influx tags with a rate",
        "i.rate,env=prod:1|c|@0.5",
        q("i.rate", "sum", 2, tags="env:prod"),
    ),
    sc(
        "influx duplicate tag last wins",
        "i.dup,env=a,env=b:1|c",
        q("i.dup", "sum", 1, tags="env:b"),
    ),
    sc(
        "influx and dogstatsd tags make the same series",
        "i.same,env=prod:1|c\ni.same:2|c|#env:prod",
        q("i.same", "sum", 3, tags="env:prod"),
        config={"aggregation": {"max_series_per_tenant": 1}},
    ),
    sc(
        "librato tags",
        "l.basic#env=prod,region=eu:1|c",
        q("l.basic", "sum", 1, tags="env:prod,region:eu"),
    ),
    sc("librato tags on a gauge", "l.gauge#host=a:7|g", q("l.gauge", "last", 7, tags="host:a")),
    sc(
        "signalfx tags",
        "sf.basic[env=prod,region=eu]:1|c",
        q("sf.basic", "sum", 1, tags="env:prod,region:eu"),
    ),
    sc("signalfx tags on a timer", "sf.timer[host=a]:5|ms", q("sf.timer", "p50", 5, tags="host:a")),
    # --- name sanitising ---------------------------------------------------------------------
    sc("name space becomes underscore", "my metric:1|c", q("my_metric", "sum", 1)),
    sc("name whitespace run becomes one underscore", "ns.ws \t x:1|c", q("ns.ws_x", "sum", 1)),
    sc("name slash becomes dash", "api/v1/users:1|c", q("api-v1-users", "sum", 1)),
    sc(
        "name other characters dropped",
        "ns.drop$b%c!é.d_e-f:1|c",
        q("ns.dropbc.d_e-f", "sum", 1),
    ),
    sc("name dots dashes underscores kept", "ns.a-b_c.D9:1|c", q("ns.a-b_c.D9", "sum", 1)),
    sc("name of 200 characters accepted", "n" * 200 + ":1|c", q("n" * 200, "sum", 1)),
    bad("name of dots alone", "...:1|c", "name_without_letter_or_digit"),
    bad("name of dashes alone after sanitising", "/-/:1|c", "name_without_letter_or_digit"),
    sc(
        "name shortened by sanitising accepted",
        "s" * 190 + "$" * 60 + ":1|c",
        q("s" * 190, "sum", 1),
    ),
    sc(
        "prometheus sanitising",
        "api.v1-users:1|c",
        q("api_v1_users", "sum", 1),
        q("api.v1-users", "sum", NOT_FOUND),
        config=PROMETHEUS,
    ),
    sc("prometheus sanitising leading digit", "1abc:1|c", q("_1abc", "sum", 1), config=PROMETHEUS),
    sc(
        "prometheus sanitising slash and space",
        "a/b c:1|c",
        q("a_b_c", "sum", 1),
        config=PROMETHEUS,
    ),
    sc(
        "no sanitising keeps the name",
        "weird$name/x:1|c",
        q("weird$name/x", "sum", 1),
        config=NO_SANITISING,
    ),
    # --- rejects: every reason, with good neighbours -----------------------------------------
    bad("malformed no colon", "hits1|c", "malformed_line"),
    bad("malformed no type", "rj.notype:1", "malformed_line", q("rj.notype", "sum", NOT_FOUND)),
    bad("malformed empty type", "rj.emptytype:1|", "malformed_line"),
    bad("malformed only a pipe", "|", "malformed_line"),
    bad("malformed prose", "this is not statsd", "malformed_line"),
    bad("empty name", ":1|c", "empty_name"),
    bad("empty name after sanitising", "$%!:1|c", "empty_name"),
    bad("empty name of whitespace", "   :1|c", "empty_name"),
    bad("name too long", "x" * 201 + ":1|c", "name_too_long", q("x" * 200, "sum", NOT_FOUND)),
    bad("empty counter value", "rj.ev:|c", "empty_value", q("rj.ev", "sum", NOT_FOUND)),
    bad("only empty packed values", "rj.evp::|ms", "empty_value"),
    bad("empty set member", "rj.evs:|s", "empty_value"),
    bad("empty gauge value", "rj.evg:|g", "empty_value"),
    bad("value not a number", "rj.abc:abc|c", "invalid_value", q("rj.abc", "sum", NOT_FOUND)),
    bad("value with underscore", "rj.us:1_0|c", "invalid_value"),
    bad("hex value", "rj.hex:0x10|c", "invalid_value"),
    bad("value with comma", "rj.comma:1,5|c", "invalid_value"),
    bad("value with two dots", "rj.dots:1.2.3|ms", "invalid_value"),
    bad("value with inner space", "rj.space:1 5|c", "invalid_value"),
    bad(
        "fullwidth digits value", "rj.wide:１２|c", "invalid_value", q("rj.wide", "sum", NOT_FOUND)
    ),
    bad("gauge value with two signs", "rj.signs:+-5|g", "invalid_value"),
    bad(
        "bad value among packed values",
        "rj.packbad:1:x:3|ms",
        "invalid_value",
        q("rj.packbad", "count", NOT_FOUND),
    ),
    bad("nan", "rj.nan:nan|g", "non_finite_value", q("rj.nan", "last", NOT_FOUND)),
    bad("nan capitalised", "rj.NaN:NaN|ms", "non_finite_value"),
    bad("inf", "rj.inf:inf|g", "non_finite_value"),
    bad("minus inf", "rj.minf:-inf|ms", "non_finite_value"),
    bad("infinity spelled out", "rj.infinity:Infinity|c", "non_finite_value"),
    bad("overflows to inf", "rj.big:1e309|g", "non_finite_value"),
    bad("magnitude above 1e300", "rj.e301:1e301|ms", "non_finite_value"),
    bad(
        "nan among packed values",
        "rj.pnan:1:nan:3|ms",
        "non_finite_value",
        q("rj.pnan", "count", NOT_FOUND),
    ),
    bad("unknown type", "rj.x:1|x", "unknown_type", q("rj.x", "sum", NOT_FOUND)),
    bad("type is case sensitive", "rj.C:1|C", "unknown_type"),
    bad("etsy kv type unsupported", "rj.kv:1|kv", "unknown_type"),
    bad("type with trailing characters", "rj.msx:1|msx", "unknown_type"),
    bad("sample rate zero", "rj.r0:1|c|@0", "invalid_sample_rate", q("rj.r0", "sum", NOT_FOUND)),
    bad("sample rate above one", "rj.r15:1|c|@1.5", "invalid_sample_rate"),
    bad("negative sample rate", "rj.rneg:1|c|@-0.5", "invalid_sample_rate"),
    bad("sample rate not a number", "rj.rabc:1|c|@abc", "invalid_sample_rate"),
    bad("sample rate nan", "rj.rnan:1|ms|@nan", "invalid_sample_rate"),
    bad("sample rate empty", "rj.rempty:1|c|@", "invalid_sample_rate"),
    bad("sample rate inf", "rj.rinf:1|c|@inf", "invalid_sample_rate"),
    # 1/rate would overflow (a subnormal rate), or weights could add up to infinity: refused.
    bad(
        "sample rate subnormal",
        "rj.rsub:5|ms|@0." + "0" * 320 + "1",
        "invalid_sample_rate",
        q("rj.rsub", "count", NOT_FOUND),
    ),
    bad("sample rate below 1e-9", "rj.rtiny:5|c|@0.0000000001", "invalid_sample_rate"),
    bad("sample rate with underscore", "rj.rus:1|c|@0.0_1", "invalid_sample_rate"),
    bad("bad sample rate on a gauge", "rj.rg:1|g|@2", "invalid_sample_rate"),
    bad("empty timestamp", "rj.t:1|c|T", "invalid_timestamp", q("rj.t", "sum", NOT_FOUND)),
    bad("timestamp not a number", "rj.tsoon:1|c|Tsoon", "invalid_timestamp"),
    bad("negative timestamp", "rj.tneg:1|c|T-5", "invalid_timestamp"),
    bad("zero timestamp", "rj.tzero:1|c|T0", "invalid_timestamp"),
    bad("fractional timestamp", f"rj.tfrac:1|c|T{T}.5", "invalid_timestamp"),
    bad("timestamp with underscores", "rj.tus:1|c|T1_764_172_800", "invalid_timestamp"),
    bad(
        "33 tags", "rj.tags33:1|c" + many_tags(33), "invalid_tags", q("rj.tags33", "sum", NOT_FOUND)
    ),
    bad("empty tag key", "rj.emptykey:1|c|#:v", "invalid_tags"),
    bad("tag key too long", "rj.longkey:1|c|#" + "k" * 101 + ":v", "invalid_tags"),
    bad("tag value too long", "rj.longval:1|c|#k:" + "v" * 201, "invalid_tags"),
    bad("influx tag without equals", "rj.inoeq,env:1|c", "invalid_tags"),
    bad("influx tag with empty key", "rj.ikey,=v:1|c", "invalid_tags"),
    bad("librato tag without equals", "rj.lnoeq#env:1|c", "invalid_tags"),
    bad("signalfx tag without equals", "rj.sfnoeq[env]:1|c", "invalid_tags"),
    bad("invalid utf-8 name", b"\xff\xfe:1|c", "invalid_utf8"),
    bad("truncated utf-8 sequence", b"rj.utf\xc3:1|c", "invalid_utf8"),
    bad(
        "invalid utf-8 in tags",
        b"rj.utftag:1|c|#k:\xff",
        "invalid_utf8",
        q("rj.utftag", "sum", NOT_FOUND),
    ),
    bad("line too long", LONG_BAD, "line_too_long", q("ll.bad", "sum", NOT_FOUND)),
    sc("line of exactly 8192 bytes accepted", LONG_OK, q("ll.ok", "count", 1)),
    bad(
        "multibyte line over 8192 bytes",
        LONG_MULTIBYTE,
        "line_too_long",
        q("ll.mb", "sum", NOT_FOUND),
    ),
    bad("influx and dogstatsd tags mixed", "rj.mix1,env=prod:1|c|#region:eu", "mixed_tag_styles"),
    bad("librato and dogstatsd tags mixed", "rj.mix2#env=prod:1|c|#region:eu", "mixed_tag_styles"),
    bad("signalfx and influx tags mixed", "rj.mix3,a=b[env=prod]:1|c", "mixed_tag_styles"),
    bad("librato and influx tags mixed", "rj.mix4,a=b#env=prod:1|c", "mixed_tag_styles"),
    bad(
        "type conflict counter then gauge",
        "nb.type_conflict_counter_then_gauge.before:5|g",
        "type_conflict",
        q("nb.type_conflict_counter_then_gauge.before", "last", BAD_AGG),
    ),
    sc(
        "type conflict timer then histogram",
        "tc.th:1|ms\ntc.th:2|h\ntc.th:3|ms",
        q("tc.th", "count", 2),
        q("tc.th", "sum", 4),
        rejects={"type_conflict": 1},
    ),
    sc(
        "type is fixed per name not per series",
        "tc.tags:1|c|#a:b\ntc.tags:2|ms|#a:c",
        q("tc.tags", "sum", 1),
        q("tc.tags", "sum", None, tags="a:c"),
        rejects={"type_conflict": 1},
    ),
    sc(
        "type conflict set then counter",
        "tc.set:x|s\ntc.set:1|c\ntc.set:y|s",
        q("tc.set", "distinct", 2),
        rejects={"type_conflict": 1},
    ),
    bad(
        "timestamp too old",
        f"rj.old:1|c|T{T - 7 * 3600}",
        "timestamp_too_old",
        q("rj.old", "sum", NOT_FOUND),
    ),
    bad(
        "timestamp in the future",
        f"rj.future:1|c|T{T + 3600}",
        "timestamp_in_future",
        q("rj.future", "sum", NOT_FOUND),
    ),
    sc(
        "series beyond the tenant limit",
        "cl.a:1|c\ncl.b:1|c\ncl.c:1|c\ncl.a:1|c|#x:y\ncl.a:2|c",
        q("cl.a", "sum", 3),
        q("cl.b", "sum", 1),
        q("cl.c", "sum", NOT_FOUND),
        rejects={"cardinality_limit": 2},
        config={"aggregation": {"max_series_per_tenant": 2}},
    ),
    sc(
        "every reject in one datagram keeps its neighbours",
        "\n".join(
            [
                "all.ok:1|c",
                "nocolon",
                "all.ok:1|c",
                "all.x:1|x",
                "all.ok:1|c",
                "all.x:abc|c",
                "all.ok:1|c",
                "all.x:1|c|@0",
                "all.ok:1|c",
                ":1|c",
                "all.ok:1|c",
                "all.x:nan|g",
                "all.ok:1|c",
                "all.ok:1|g",
                "all.ok:1|c",
            ]
        ),
        q("all.ok", "sum", 8),
        q("all.x", "sum", NOT_FOUND),
        rejects={
            "malformed_line": 1,
            "unknown_type": 1,
            "invalid_value": 1,
            "invalid_sample_rate": 1,
            "empty_name": 1,
            "non_finite_value": 1,
            "type_conflict": 1,
        },
    ),
]

IGNORED_KINDS = {"events": "event", "service_checks": "service_check"}


# --- (a) the parser, through a reference model of DESIGN.md §2 -----------------------------


class Refused(Exception):
    pass


class Model:
    """What the query API must answer, computed from samples the simplest way."""

    def __init__(self, max_series: int = 100_000) -> None:
        self.max_series = max_series
        self.types: dict[str, MetricType] = {}
        # (name, tags) → observations (value, weight, time)
        self.series: dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]] = {}
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, float]] = {}
        self.rejects: Counter[str] = Counter()

    def add(self, sample: Sample, now: float) -> None:
        name, tags, mtype, value, rate, ts, delta = sample
        if ts is not None and ts > now + MAX_AHEAD:
            self.rejects["timestamp_in_future"] += 1
            return
        if ts is not None and ts < now - MAX_BACKDATE:
            self.rejects["timestamp_too_old"] += 1
            return
        if self.types.get(name, mtype) is not mtype:
            self.rejects["type_conflict"] += 1
            return
        key = (name, tags)
        if key not in self.series and len(self.series) >= self.max_series:
            self.rejects["cardinality_limit"] += 1
            return
        self.types[name] = mtype
        obs = self.series.setdefault(key, [])
        t = now if ts is None else ts
        if mtype is MetricType.SET:
            obs.append((value, 1.0, t))
            return
        v = float(value)
        if mtype is MetricType.GAUGE:
            cur, cur_t = self.gauges.get(key, (0.0, -math.inf))
            if delta:
                v += cur
            if delta or t >= cur_t:
                self.gauges[key] = (v, max(t, cur_t))
            obs.append((v, 1.0, t))
            return
        obs.append((v, 1.0 / rate, t))

    def answer(self, x: Q) -> Any:
        mtype = self.types.get(x.name)
        if mtype is None:
            return NOT_FOUND
        allowed = {
            MetricType.COUNTER: {"count", "sum", "avg", "min", "max", "rate"},
            MetricType.SET: {"count", "distinct"},
            MetricType.GAUGE: {"count", "sum", "avg", "min", "max", "last", "pNN"},
        }.get(mtype, {"count", "sum", "avg", "min", "max", "rate", "pNN"})
        if (x.agg if x.agg[0] != "p" else "pNN") not in allowed:
            return BAD_AGG
        want = dict(kv.partition(":")[::2] for kv in x.tags.split(",")) if x.tags else {}
        obs = [
            o
            for (name, tags), series in self.series.items()
            if name == x.name and want.items() <= dict(tags).items()
            for o in series
        ]
        if x.window is None:
            return _agg(x.agg, obs, UNTIL - SINCE, mtype) if obs else None
        width = int(x.window.removesuffix("s"))
        buckets: dict[int, list[Any]] = {}
        for o in obs:
            buckets.setdefault(int(o[2] // width * width), []).append(o)
        return [(b, _agg(x.agg, buckets[b], width, mtype)) for b in sorted(buckets)]


def _agg(agg: str, obs: list[Any], seconds: float, mtype: MetricType) -> float:
    if agg == "distinct":
        return len({v for v, _, _ in obs})
    if agg == "count":
        return sum(w for _, w, _ in obs)
    total = sum(v * w for v, w, _ in obs)
    if agg == "sum":
        return total
    if agg == "rate" and mtype is MetricType.COUNTER:
        return total / seconds
    if agg == "rate":  # timings, histograms, distributions: observations per second
        return sum(w for _, w, _ in obs) / seconds
    if agg == "avg":
        return total / sum(w for _, w, _ in obs)
    if agg == "min":
        return min(v for v, _, _ in obs)
    if agg == "max":
        return max(v for v, _, _ in obs)
    if agg == "last":
        return max(enumerate(obs), key=lambda io: (io[1][2], io[0]))[1][0]
    # pNN: the exact lower-rank quantile DDSketch estimates (rank = q·(count − 1)).
    quantile = float(agg[1:]) / 100
    ordered = sorted((v, w) for v, w, _ in obs)
    rank = quantile * (sum(w for _, w in ordered) - 1)
    cum = 0.0
    for v, w in ordered:
        cum += w
        if cum > rank:
            return v
    return ordered[-1][0]


def _close(agg: str, got: Any, want: Any) -> bool:
    rel = 0.01 if agg[0] == "p" and agg not in ("p0", "p100") else 1e-9
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and [t for t, _ in got] == [t for t, _ in want]
            and all(_close(agg, g, w) for (_, g), (_, w) in zip(got, want, strict=True))
        )
    if isinstance(want, float | int) and isinstance(got, float | int):
        return got == pytest.approx(want, rel=rel, abs=1e-12)
    return bool(got == want)


def ignored_of(r: ParseResult) -> dict[str, int]:
    out = {kind: getattr(r, attr) for attr, kind in IGNORED_KINDS.items()}
    out["unknown_section"] = r.unknown_sections
    return {k: v for k, v in out.items() if v}


def parser_for(config: dict[str, dict[str, Any]]) -> StatsdParser:
    s = config.get("statsd", {})
    return StatsdParser(
        gauge_sign=s.get("gauge_sign", "delta"), sanitise=s.get("name_sanitising", "statsd")
    )


def stored_names(expect: tuple[Q, ...]) -> set[str]:
    """Every table entry names each metric its text creates: nothing else may be stored (a
    rejected line, an event or a service check creates no metric)."""
    return {x.name for x in expect if x.value != NOT_FOUND}


ARGS = ("payload", "expect", "rejects", "ignored", "config")


# (a) runs the pure-Python parser and the model alone, the same in both passes: the pure-Python
# pass skips it, and the table's own checks (tests/conftest.py); (b) runs in both.
@pytest.mark.same_in_both_passes
def test_table_is_large_and_its_ids_unique() -> None:
    ids = [p.id for p in SCENARIOS]
    assert len(ids) >= 120
    assert len(set(ids)) == len(ids)
    reasons = {r for p in SCENARIOS for r in p.values[2]}
    # Every reason the parser or the aggregator can give has a scenario.
    assert reasons >= set(REJECT_REASONS) | set(AGGREGATOR_REJECT_REASONS)


@pytest.mark.same_in_both_passes
@pytest.mark.parametrize(ARGS, SCENARIOS)
def test_parser(
    payload: bytes,
    expect: tuple[Q, ...],
    rejects: dict[str, int],
    ignored: dict[str, int],
    config: dict[str, dict[str, Any]],
) -> None:
    parser = parser_for(config)
    result = parser.parse(payload)
    # The same parser again: its caches of lines and names must not change the outcome.
    again = parser.parse(payload)
    assert (again.samples, again.rejects) == (result.samples, result.rejects)
    assert ignored_of(again) == ignored_of(result)

    model = Model(config.get("aggregation", {}).get("max_series_per_tenant", 100_000))
    for sample in result.samples:
        model.add(sample, NOW)
    got_rejects = Counter(reason for reason, _ in result.rejects) + model.rejects
    assert dict(got_rejects) == rejects
    assert ignored_of(result) == ignored
    # Every non-empty line is a sample source, a reject or an ignored event.
    assert result.lines >= len(result.rejects) + result.events + result.service_checks
    assert set(model.types) == stored_names(expect)
    for x in expect:
        got = model.answer(x)
        assert _close(x.agg, got, x.value), (x, got)


# --- (b) end to end, over every transport ---------------------------------------------------

TRANSPORTS = ("udp", "tcp", "unixgram")


def json_form(payload: bytes, config: dict[str, dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The MetricPoints of `POST /v1/metrics/batch` that say what `payload` says, or None if it
    has no JSON form: a line the parser rejects, an event, a service check or an unknown section
    (StatsD-only syntax), or a sample no JSON point reads back as (a gauge delta: JSON gauges are
    absolute). Points the aggregator then refuses (a type conflict, a timestamp out of range, the
    series limit) have a form: the batch is refused them the same way."""
    parser = parser_for(config)
    result = parser.parse(payload)
    if result.rejects or ignored_of(result):
        return None
    points = []
    for sample in result.samples:
        name, tags, mtype, value, rate, ts, _ = sample
        point: dict[str, Any] = {"name": name, "type": mtype.value, "value": value}
        if tags:
            point["tags"] = dict(tags)
        if rate != 1.0:
            point["sample_rate"] = rate
        if ts is not None:
            point["timestamp"] = ts
        try:
            if parse_point(point, sanitise=parser.sanitise) != sample:
                return None
        except InvalidArgument:
            return None
        points.append(point)
    return points


def transports_of(scenario: Any) -> list[str]:
    payload, _, _, _, config = scenario.values
    return [*TRANSPORTS, *(["http"] if json_form(payload, config) is not None else [])]


END_TO_END = [
    pytest.param(transport, *scenario.values, id=f"{scenario.id}-{transport}")
    for scenario in SCENARIOS
    for transport in transports_of(scenario)
]


@asynccontextmanager
async def running(
    tmp_path: Path, clock: ManualClock, transport: str, extra: dict[str, dict[str, Any]]
) -> AsyncIterator[tuple[Gateway, Api]]:
    sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in extra.items()}
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sgw") as short:
        if transport == "tcp":
            sections["tcp"] = {"enabled": True, "listen": "127.0.0.1:0"}
        elif transport == "unixgram":
            sections["unix"] = {"enabled": True, "path": f"{short}/s.sock"}
        gw = Gateway(make_config(tmp_path, **sections), clock=clock, flush_on_ticks=False)
        await gw.start()
        try:
            assert gw.http_address is not None
            host, port = gw.http_address
            async with ClientSession() as session:
                yield gw, Api(session, f"http://{host}:{port}")
        finally:
            await gw.stop()


async def send(
    gw: Gateway, api: Api, transport: str, payload: bytes, config: dict[str, dict[str, Any]]
) -> None:
    """Sends the payload the way a client of that transport does (over HTTP: its JSON form),
    then waits until the gateway has read it (telemetry counters, never time passing)."""
    t = gw.telemetry
    lines = parser_for(config).parse(payload).lines
    if transport == "http":
        points = json_form(payload, config)
        assert points is not None
        status, body = await api.batch(points)
        assert status == 200, body
        refused = sum(n for r, n in t.rejects.items() if r[0] == "http")
        assert (body["accepted"], body["rejected"]) == (len(points) - refused, refused), body
    elif transport == "udp":
        assert gw.udp_address is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(payload, gw.udp_address)
        await wait_until(lambda: t.packets["udp"] >= 1, lambda: "the datagram never arrived")
    elif transport == "unixgram":
        path = gw.unix_path
        assert path is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(payload, path)
        await wait_until(lambda: t.packets["unixgram"] >= 1, lambda: "the datagram never arrived")
    else:
        address = gw.tcp_address
        assert address is not None
        _, writer = await asyncio.open_connection(*address)
        writer.write(payload)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await wait_until(
            lambda: t.lines["tcp"] >= lines,
            lambda: f"only {t.lines['tcp']} of {lines} lines arrived over tcp",
        )


async def answer(api: Api, x: Q) -> Any:
    params: dict[str, Any] = {"name": x.name, "agg": x.agg, "since": SINCE, "until": UNTIL}
    if x.tags is not None:
        params["tags"] = x.tags
    if x.window is not None:
        params["window"] = x.window
    status, body = await api.query(**params)
    if status != 200:
        assert status in (400, 404), body
        return body["error"]["code"]
    points = [(p["timestamp"], p["value"]) for p in body["points"]]
    if x.window is not None:
        return points
    assert len(points) <= 1, body
    return points[0][1] if points else None


@pytest.mark.same_in_both_passes
def test_the_json_forms_cover_the_table() -> None:
    """Most scenarios run over HTTP too, and every aggregator reject among them."""
    over_http = [p for p in END_TO_END if p.values[0] == "http"]
    assert len(over_http) >= len(SCENARIOS) // 2
    reasons = {r for p in over_http for r in p.values[3]}
    assert reasons == set(AGGREGATOR_REJECT_REASONS)


@pytest.mark.parametrize(("transport", *ARGS), END_TO_END)
async def test_end_to_end(
    tmp_path: Path,
    clock: ManualClock,
    transport: str,
    payload: bytes,
    expect: tuple[Q, ...],
    rejects: dict[str, int],
    ignored: dict[str, int],
    config: dict[str, dict[str, Any]],
) -> None:
    async with running(tmp_path, clock, transport, config) as (gw, api):
        await send(gw, api, transport, payload, config)
        t = gw.telemetry
        got_rejects = {r: n for (tr, r), n in t.rejects.items() if tr == transport and n}
        assert got_rejects == rejects
        assert {k: v for k, v in t.ignored.items() if v} == ignored

        status, body = await api.request("GET", "/v1/metrics")
        assert status == 200, body
        assert {m["name"] for m in body["metrics"]} == stored_names(expect)

        before = [await answer(api, x) for x in expect]
        wrong = [
            (x, got)
            for x, got in zip(expect, before, strict=True)
            if not _close(x.agg, got, x.value)
        ]
        assert not wrong, f"answers differ from the table: {wrong}"

        assert await gw.flusher.flush()
        after = [await answer(api, x) for x in expect]
        changed = [
            (x, b, a)
            for x, b, a in zip(expect, before, after, strict=True)
            if not _close(x.agg, a, b)
        ]
        assert not changed, f"answers changed by the flush (before, after): {changed}"
