"""PromQL answers (/api/v1/query and /api/v1/query_range) against values computed in plain
Python from the points sent, as a user of Grafana sees them.

The differential test sends random counters, gauges and timings over several hosts and 30
minutes of 10 s buckets (integer values, so every sum is exact), flushes the older part and
leaves the rest in memory (with late points into buckets already flushed), then compares the
answers at aligned and unaligned times, for instant queries and range queries of steps 10 s,
60 s and 75 s, with what the time model says (a bucket [b, b + r) is a sample at b + r; a
range [w] at t covers the cells whose end lies in (t - w, t]; cells of the finest tier for an
instant query, of the coarsest tier no coarser than the step and dividing w for a range one).
Counters and timings carry sample rates (a counter adds value/r, a timing weighs 1/r).
Quantiles are compared with the exact lower-rank value (rank = φ·(Σw − 1)) within 1 %, φ = 0 and
1 with the exact min and max; everything else within 1e-9 (exactness has its own tests, below).
PROMQL_EXAMPLES sets how many datasets (default 8); a failing one is reported unshrunk (each
costs a gateway and a few hundred queries), with its Case to replay it.

The tests after it pin single answers computed by hand: exactness, the extrapolation of a range
no tier divides, the coarser tiers of long ranges, sample rates, memory-only data, `@`/offset.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import Phase, given, note, settings
from hypothesis import strategies as st

from statsd_gateway.gateway import Gateway
from tests.conftest import PARITY, T0, Api, ManualClock, make_config, running

START = T0 - 1800  # the first bucket's start: 180 buckets of 10 s up to T0
N_BUCKETS = 180
HOSTS = ("a", "b", "c", "d")
CODES = ("200", "500")
Labels = frozenset[tuple[str, str]]
Answer = dict[Labels, float]
# A quantile is a value, or the two values a rank on a boundary is between.
Expected = float | tuple[float, float]
Want = Mapping[Labels, Expected]
EXAMPLES = settings(
    PARITY,
    max_examples=int(os.environ.get("PROMQL_EXAMPLES", "8")),
    phases=(Phase.explicit, Phase.generate),
)


def labels(**kw: str) -> Labels:
    return frozenset(kw.items())


# -- the dataset ---------------------------------------------------------------------------------


@dataclass
class Data:
    """What was sent, per series and 10 s bucket start."""

    hits: dict[tuple[str, str], dict[float, int]] = field(default_factory=dict)  # (host, code)
    temp: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # host: (ts, value)
    # host: (value, weight): a timing sampled at rate r weighs 1/r
    lat: dict[str, dict[float, list[tuple[int, float]]]] = field(default_factory=dict)
    early: list[dict[str, Any]] = field(default_factory=list)  # sent, then flushed
    late: list[dict[str, Any]] = field(default_factory=list)  # sent after the flush


@dataclass(frozen=True)
class Case:
    seed: int
    hosts: int
    density: float
    split: int  # buckets from this index on stay in memory
    late: float  # the share of the flushed part's points sent after the flush
    flush_again: bool  # whether the points sent after the flush are flushed too
    width: int  # seconds: the range of most queries
    phi: float
    times: tuple[float, ...]  # instant queries
    ranges: tuple[tuple[float, float, float], ...]  # (start, end, step)


def build(case: Case) -> Data:
    rng = random.Random(case.seed)
    d = Data()
    hosts = HOSTS[: case.hosts]
    # The last host stops sending 7 minutes before T0 (more than the 5 m look-back).
    stop = {
        h: N_BUCKETS - (42 if i == len(hosts) - 1 and i > 0 else 0) for i, h in enumerate(hosts)
    }

    def send(point: dict[str, Any], i: int) -> None:
        if i >= case.split or rng.random() < case.late:
            d.late.append(point)
        else:
            d.early.append(point)

    for i in range(N_BUCKETS):
        b = START + 10 * i
        for h in hosts:
            if i >= stop[h]:
                continue
            for code in CODES:
                if rng.random() < case.density:
                    for _ in range(rng.randint(1, 3)):
                        v, rate = rng.randint(1, 20), rng.choice((1.0, 1.0, 0.5, 0.25))
                        d.hits.setdefault((h, code), {}).setdefault(b, 0)
                        d.hits[(h, code)][b] += int(v / rate)
                        ts = b + rng.randrange(40) / 4
                        tags = {"host": h, "code": code}
                        send({"name": "api.hits", "type": "counter", "value": v, "timestamp": ts,
                              "sample_rate": rate, "tags": tags}, i)  # fmt: skip
            if rng.random() < case.density:
                for off in sorted(rng.sample(range(40), rng.randint(1, 3))):
                    v = rng.randint(-20, 100)
                    d.temp.setdefault(h, []).append((b + off / 4, v))
                    send({"name": "temp.c", "type": "gauge", "value": v, "timestamp": b + off / 4,
                          "tags": {"host": h}}, i)  # fmt: skip
            if rng.random() < case.density:
                for _ in range(rng.randint(1, 4)):
                    v, rate = rng.randint(1, 3000), rng.choice((1.0, 1.0, 0.5, 0.3))
                    d.lat.setdefault(h, {}).setdefault(b, []).append((v, 1 / rate))
                    ts = b + rng.randrange(40) / 4
                    send({"name": "api.latency", "type": "timing", "value": v, "timestamp": ts,
                          "sample_rate": rate, "tags": {"host": h}}, i)  # fmt: skip
    rng.shuffle(d.late)
    return d


@st.composite
def cases(draw: st.DrawFn) -> Case:
    unaligned = st.sampled_from([0.0, 0.5, 3.25, 7.0, 9.75])
    times = (
        T0,
        T0 - 10 * draw(st.integers(1, 150)) + draw(unaligned),
        T0 - 10 * draw(st.integers(1, 150)) + draw(unaligned),
    )
    ranges = []
    for step in (10.0, 60.0, 75.0):
        n = draw(st.integers(1, 14))
        start = T0 - 10 * draw(st.integers(int(step * n / 10) + 1, 170)) + draw(unaligned)
        ranges.append((start, start + step * (n - 1), step))
    return Case(
        seed=draw(st.integers(0, 2**32 - 1)),
        hosts=draw(st.integers(1, 4)),
        density=draw(st.sampled_from([0.25, 0.7, 1.0])),
        split=draw(st.integers(0, N_BUCKETS)),
        late=draw(st.sampled_from([0.0, 0.1, 0.5])),
        flush_again=draw(st.booleans()),
        width=draw(st.sampled_from([30, 60, 120, 300])),
        phi=draw(st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0])),
        times=times,
        ranges=tuple(ranges),
    )


# -- the model ------------------------------------------------------------------------------------


def grid(width: float, step: float | None) -> float:
    """The cells a selection is read in: the finest tier (10 s) for an instant query; for a
    range query the coarsest tier no coarser than the step whose resolution divides the range
    (the 1 h tier never is, here)."""
    if step is not None and step >= 60 and width % 60 == 0:
        return 60.0
    return 10.0


def inside(b: float, t: float, width: float, g: float) -> bool:
    """Whether the 10 s bucket starting at b lies in a g-cell whose end is in (t - width, t]."""
    end = (math.floor(b / g) + 1) * g
    return t - width < end <= t


def cell(b: float, g: float) -> int:
    return math.floor(b / g)


def exact_quantile(values: list[tuple[int, float]], q: float) -> float | tuple[float, float]:
    """The lower-rank quantile DDSketch estimates: rank = q·(Σweights − 1), the first value
    whose cumulative weight passes it; φ = 0 and 1 the exact min and max. Where a rank falls
    on a cumulative weight (within rounding: weights of 1/0.3 are not exact), either value
    there is right: (lower, upper)."""
    ordered = sorted(values)
    if q in (0.0, 1.0):
        return float(ordered[0][0] if q == 0.0 else ordered[-1][0])
    rank = q * (sum(w for _, w in ordered) - 1)

    def at(r: float) -> float:
        cum = 0.0
        for v, w in ordered:
            cum += w
            if cum > r:
                return float(v)
        return float(ordered[-1][0])

    lo, hi = at(rank - 1e-6), at(rank + 1e-6)
    return lo if lo == hi else (lo, hi)


def group_sum(answer: Answer, by: Callable[[Labels], Labels]) -> Answer:
    out: Answer = {}
    for lab, v in answer.items():
        out[by(lab)] = out.get(by(lab), 0.0) + v
    return out


def only(*keys: str) -> Callable[[Labels], Labels]:
    return lambda lab: frozenset(p for p in lab if p[0] in keys)


def _reduce(f: str, got: list[tuple[float, int]], q: float) -> Expected:
    """`f`_over_time of a gauge's (timestamp, value) set in a window."""
    values = [v for _, v in got]
    if f == "avg":
        return sum(values) / len(values)
    if f == "quantile":
        return exact_quantile([(v, 1.0) for v in values], q)
    if f == "last":
        return float(max(got)[1])
    if f == "present":
        return 1.0
    reduce: dict[str, Callable[[list[int]], float]] = {
        "min": min,
        "max": max,
        "sum": sum,
        "count": len,
    }
    return float(reduce[f](values))


class Model:
    def __init__(self, d: Data) -> None:
        self.d = d

    # counters
    def hits_windows(
        self, t: float, width: float, step: float | None, code: str | None = None
    ) -> dict[Labels, dict[float, int]]:
        g = grid(width, step)
        out = {}
        for (h, c), buckets in self.d.hits.items():
            if code is not None and c != code:
                continue
            got = {b: v for b, v in buckets.items() if inside(b, t, width, g)}
            if got:
                out[labels(host=h, code=c)] = got
        return out

    def increase(
        self, t: float, width: float, step: float | None, code: str | None = None
    ) -> Answer:
        return {
            k: float(sum(v.values())) for k, v in self.hits_windows(t, width, step, code).items()
        }

    def rate(self, t: float, width: float, step: float | None) -> Answer:
        return {k: v / width for k, v in self.increase(t, width, step).items()}

    def irate(self, t: float, width: float, step: float | None) -> Answer:
        g = grid(width, step)
        out = {}
        for k, got in self.hits_windows(t, width, step).items():
            latest = max(cell(b, g) for b in got)
            out[k] = sum(v for b, v in got.items() if cell(b, g) == latest) / g
        return out

    # gauges
    def temp_windows(
        self, t: float, width: float, step: float | None, g: float | None = None
    ) -> dict[str, list[tuple[float, int]]]:
        g = grid(width, step) if g is None else g
        out = {}
        for h, points in self.d.temp.items():
            got = [(ts, v) for ts, v in points if inside(math.floor(ts / 10) * 10, t, width, g)]
            if got:
                out[h] = got
        return out

    def temp(self, t: float, step: float | None) -> Answer:
        """The bare gauge: the last value of the latest cell ending in (t - 300, t]."""
        g = grid(300.0, step)
        out = {}
        for h, got in self.temp_windows(t, max(300.0, g), step, g).items():
            latest = max(cell(ts, g) for ts, _ in got)
            last = max((ts, v) for ts, v in got if cell(ts, g) == latest)
            out[labels(__name__="temp_c", host=h)] = float(last[1])
        return out

    def over_time(self, f: str, t: float, width: float, step: float | None, q: float) -> Want:
        out: dict[Labels, Expected] = {}
        for h, got in self.temp_windows(t, width, step).items():
            # last_over_time keeps the metric name, as in Prometheus; the others drop it.
            lab = labels(__name__="temp_c", host=h) if f == "last" else labels(host=h)
            out[lab] = _reduce(f, got, q)
        return out

    # timings
    def lat_windows(
        self, t: float, width: float, step: float | None
    ) -> dict[str, list[tuple[int, float]]]:
        g = grid(width, step)
        out = {}
        for h, buckets in self.d.lat.items():
            got = [v for b, vs in buckets.items() if inside(b, t, width, g) for v in vs]
            if got:
                out[h] = got
        return out

    def lat(self, f: str, t: float, width: float, step: float | None) -> Answer:
        out: Answer = {}
        for h, values in self.lat_windows(t, width, step).items():
            count = sum(w for _, w in values)
            total = sum(v * w for v, w in values)
            out[labels(host=h)] = {"count": count, "sum": total, "avg": total / count}[f]
        return out

    def lat_quantile(self, q: float, t: float, width: float, step: float | None, by: bool) -> Want:
        windows = self.lat_windows(t, width, step)
        if by:
            return {labels(host=h): exact_quantile(vs, q) for h, vs in windows.items()}
        merged = [v for vs in windows.values() for v in vs]
        return {labels(): exact_quantile(merged, q)} if merged else {}


# The queries: (PromQL, expected at (t, step), whether a quantile of a sketch).
Query = tuple[str, Callable[[float, float | None], Want], bool]


def queries(m: Model, case: Case) -> list[Query]:
    w = float(case.width)
    r = {30: "30s", 60: "1m", 120: "2m", 300: "5m"}[case.width]
    q = case.phi
    host = only("host")
    out: list[Query] = [
        (f"increase(api_hits[{r}])", lambda t, s: m.increase(t, w, s), False),
        (f"rate(api_hits[{r}])", lambda t, s: m.rate(t, w, s), False),
        (f"irate(api_hits[{r}])", lambda t, s: m.irate(t, w, s), False),
        (
            f"sum by (host) (rate(api_hits[{r}]))",
            lambda t, s: group_sum(m.rate(t, w, s), host),
            False,
        ),
        (
            f"sum without (code) (increase(api_hits[{r}]))",
            lambda t, s: group_sum(m.increase(t, w, s), host),
            False,
        ),
        (
            "sum(rate(api_hits[1m])) * 60",
            lambda t, s: group_sum(m.increase(t, 60.0, s), only()),
            False,
        ),
        (
            f"count by (code) (increase(api_hits[{r}]))",
            lambda t, s: group_sum({k: 1.0 for k in m.increase(t, w, s)}, only("code")),
            False,
        ),
        (
            f"max by (host) (increase(api_hits[{r}]))",
            lambda t, s: _max_by(m.increase(t, w, s), host),
            False,
        ),
        (
            f"increase(api_hits[{r}] offset 1m)",
            lambda t, s: m.increase(t - 60, w, s),
            False,
        ),
        ("temp_c", lambda t, s: m.temp(t, s), False),
        ("temp_c > 50", lambda t, s: {k: v for k, v in m.temp(t, s).items() if v > 50}, False),
        (
            "temp_c - 10",
            lambda t, s: {k - {("__name__", "temp_c")}: v - 10 for k, v in m.temp(t, s).items()},
            False,
        ),
    ]
    for f in ("avg", "min", "max", "sum", "count", "last", "present"):
        out.append(
            (
                f"{f}_over_time(temp_c[{r}])",
                lambda t, s, f=f: m.over_time(f, t, w, s, q),  # type: ignore[misc]
                False,
            )
        )
    out += [
        (
            f"quantile_over_time({q}, temp_c[{r}])",
            lambda t, s: m.over_time("quantile", t, w, s, q),
            q not in (0.0, 1.0),
        ),
        (
            f"histogram_quantile({q}, sum by (host) (rate(api_latency[{r}])))",
            lambda t, s: m.lat_quantile(q, t, w, s, by=True),
            q not in (0.0, 1.0),
        ),
        (
            f"histogram_quantile({q}, sum by (le, host) (rate(api_latency_bucket[{r}])))",
            lambda t, s: m.lat_quantile(q, t, w, s, by=True),
            q not in (0.0, 1.0),
        ),
        (
            f"histogram_quantile({q}, sum(rate(api_latency[{r}])))",
            lambda t, s: m.lat_quantile(q, t, w, s, by=False),
            q not in (0.0, 1.0),
        ),
        (
            f"histogram_count(rate(api_latency[{r}]))",
            lambda t, s: {k: v / w for k, v in m.lat("count", t, w, s).items()},
            False,
        ),
        (
            f"histogram_sum(rate(api_latency[{r}]))",
            lambda t, s: {k: v / w for k, v in m.lat("sum", t, w, s).items()},
            False,
        ),
        (f"histogram_avg(rate(api_latency[{r}]))", lambda t, s: m.lat("avg", t, w, s), False),
        (
            f"histogram_count(increase(api_latency[{r}]))",
            lambda t, s: m.lat("count", t, w, s),
            False,
        ),
        (f"histogram_sum(increase(api_latency[{r}]))", lambda t, s: m.lat("sum", t, w, s), False),
        (
            f"rate(api_latency_count[{r}])",
            lambda t, s: {k: v / w for k, v in m.lat("count", t, w, s).items()},
            False,
        ),
        (f"increase(api_latency_sum[{r}])", lambda t, s: m.lat("sum", t, w, s), False),
        (
            f"sum by (host) (increase(api_hits[{r}]))"
            f" / sum by (host) (increase(api_latency_count[{r}]))",
            lambda t, s: _divide(group_sum(m.increase(t, w, s), host), m.lat("count", t, w, s)),
            False,
        ),
        (
            f'increase(api_hits{{code="200"}}[{r}])'
            f' - ignoring(code) increase(api_hits{{code="500"}}[{r}])',
            lambda t, s: _subtract(
                group_sum(m.increase(t, w, s, "200"), host),
                group_sum(m.increase(t, w, s, "500"), host),
            ),
            False,
        ),
        (
            f"sum by (host) (increase(api_hits[{r}])) > bool 40",
            lambda t, s: {
                k: float(v > 40) for k, v in group_sum(m.increase(t, w, s), host).items()
            },
            False,
        ),
        (
            f"sum by (host) (increase(api_hits[{r}])) > 40",
            lambda t, s: {k: v for k, v in group_sum(m.increase(t, w, s), host).items() if v > 40},
            False,
        ),
    ]
    return out


def _max_by(answer: Answer, by: Callable[[Labels], Labels]) -> Answer:
    out: Answer = {}
    for lab, v in answer.items():
        out[by(lab)] = max(out.get(by(lab), -math.inf), v)
    return out


def _divide(a: Answer, b: Answer) -> Answer:
    return {k: a[k] / b[k] for k in a if k in b}


def _subtract(a: Answer, b: Answer) -> Answer:
    return {k: a[k] - b[k] for k in a if k in b}


# -- the API --------------------------------------------------------------------------------------


def _stamp(t: float) -> float:
    return round(t, 3)


async def instant(api: Api, query: str, t: float) -> Answer:
    status, body = await api.request("GET", "/api/v1/query", params={"query": query, "time": t})
    assert status == 200, (query, body)
    assert body["status"] == "success" and body["data"]["resultType"] == "vector", body
    out: Answer = {}
    for s in body["data"]["result"]:
        stamp, text = s["value"]
        assert stamp == _stamp(t) and isinstance(text, str), s
        lab = frozenset(s["metric"].items())
        assert lab not in out, ("a series twice", s)
        out[lab] = float(text)
    return out


async def matrix(
    api: Api, query: str, start: float, end: float, step: float
) -> dict[Labels, dict[float, float]]:
    params = {"query": query, "start": start, "end": end, "step": step}
    status, body = await api.request("GET", "/api/v1/query_range", params=params)
    assert status == 200, (query, body)
    assert body["status"] == "success" and body["data"]["resultType"] == "matrix", body
    out: dict[Labels, dict[float, float]] = {}
    for s in body["data"]["result"]:
        lab = frozenset(s["metric"].items())
        assert lab not in out, ("a series twice", s)
        stamps = [p[0] for p in s["values"]]
        assert stamps == sorted(stamps) and s["values"], s
        out[lab] = {p[0]: float(p[1]) for p in s["values"]}
    return out


def close(got: float, want: Expected, sketched: bool) -> bool:
    if isinstance(want, tuple):
        return want[0] * 0.99 - 1e-9 <= got <= want[1] * 1.01 + 1e-9
    if sketched:
        return abs(got - want) <= 0.01 * abs(want) + 1e-9
    return got == pytest.approx(want, rel=1e-9, abs=1e-12)


def same(got: Answer, want: Want, sketched: bool) -> bool:
    return got.keys() == want.keys() and all(close(got[k], want[k], sketched) for k in want)


def differences(
    got: dict[Labels, dict[float, float]], want: dict[Labels, dict[float, Expected]], sketched: bool
) -> list[tuple[tuple[tuple[str, str], ...], float, float | None, Expected | None]]:
    out = []
    for lab in sorted(got.keys() | want.keys(), key=sorted):
        g, w = got.get(lab, {}), want.get(lab, {})
        for ts in sorted(g.keys() | w.keys()):
            a, b = g.get(ts), w.get(ts)
            if a is None or b is None or not close(a, b, sketched):
                out.append((tuple(sorted(lab)), ts - T0, a, b))
    return out


def show(a: Mapping[Labels, Any]) -> str:
    return repr({tuple(sorted(k)): v for k, v in sorted(a.items(), key=lambda kv: sorted(kv[0]))})


async def check_case(path: Path, case: Case, seen: Counter[int]) -> None:
    d = build(case)
    m = Model(d)
    clock = ManualClock()
    async with running(make_config(path), clock) as (gw, api):
        for chunk in _chunks(d.early):
            status, body = await api.batch(chunk)
            assert status == 200 and body["rejected"] == 0, body
        await gw.flusher.flush()
        for chunk in _chunks(d.late):
            status, body = await api.batch(chunk)
            assert status == 200 and body["rejected"] == 0, body
        if case.flush_again:
            await gw.flusher.flush()
        failures: list[str] = []
        for i, (text, want_at, sketched) in enumerate(queries(m, case)):
            for t in case.times:
                got = await instant(api, text, t)
                want = want_at(t, None)
                seen[i] += bool(want)
                if not same(got, want, sketched):
                    failures.append(f"{text} @ {t - T0:+g}: got {show(got)}, want {show(want)}")
            for start, end, step in case.ranges:
                got_m = await matrix(api, text, start, end, step)
                want_m: dict[Labels, dict[float, Expected]] = {}
                n = math.floor((end - start) / step) + 1
                for i in range(n):
                    ts = start + step * i
                    for lab, v in want_at(ts, step).items():
                        want_m.setdefault(lab, {})[_stamp(ts)] = v
                wrong = differences(got_m, want_m, sketched)
                if wrong:
                    failures.append(
                        f"{text} range {start - T0:+g}..{end - T0:+g} step {step:g}: "
                        f"{len(wrong)} points differ (labels, t - T0, got, want): {wrong[:8]}"
                    )
        assert not failures, f"{len(failures)} answers differ:\n" + "\n".join(failures[:6])


def _chunks(points: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    for i in range(0, len(points), 5000):
        yield points[i : i + 5000]


def test_answers_equal_the_model_of_the_points_sent(tmp_path: Path) -> None:
    runs = itertools.count()
    seen: Counter[int] = Counter()

    @EXAMPLES
    @given(cases())
    def check(case: Case) -> None:
        note(repr(case))
        asyncio.run(check_case(tmp_path / f"run{next(runs)}", case, seen))

    check()
    # Every query had a value to compare at some instant, in some dataset.
    n_queries = len(queries(Model(Data()), _any_case()))
    assert sorted(seen) == list(range(n_queries)), seen


def _any_case() -> Case:
    return Case(0, 1, 1.0, 0, 0.0, False, 60, 0.5, (), ())


# -- single answers, by hand -----------------------------------------------------------------------


async def value(api: Api, query: str, t: float) -> str | None:
    """The one series' value (as the API writes it) of an instant query, None for no series."""
    status, body = await api.request("GET", "/api/v1/query", params={"query": query, "time": t})
    assert status == 200, (query, body)
    result = body["data"]["result"]
    assert len(result) <= 1, body
    return result[0]["value"][1] if result else None


def counter(name: str, v: float, ts: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "counter", "value": v, "timestamp": ts, **extra}


@pytest.fixture
async def ramp(api: Api) -> AsyncIterator[Api]:
    """Counter c: 1, 2, …, 6 in the six buckets [T0 - 60, T0), sent but not flushed."""
    status, body = await api.batch([counter("c", i + 1, T0 - 60 + 10 * i + 3) for i in range(6)])
    assert status == 200 and body["accepted"] == 6, body
    yield api


@pytest.mark.parametrize(
    "query",
    ["increase(c[30s])", "histogram_count(increase(lt[30s]))", "increase(lt_count[30s])"],
)
async def test_increase_of_whole_counts_is_exact(api: Api, query: str) -> None:
    points = [counter("c", 31, T0 - 15)]
    points += [
        {"name": "lt", "type": "timing", "value": 5, "timestamp": T0 - 15 + i / 10}
        for i in range(31)
    ]
    assert (await api.batch(points))[0] == 200
    assert await value(api, query, T0) == "31"


async def test_increase_over_ranges_the_resolution_divides_is_the_sum(ramp: Api) -> None:
    assert await value(ramp, "increase(c[10s])", T0) == "6"
    assert await value(ramp, "increase(c[1m])", T0) == "21"
    assert await value(ramp, "increase(c[1m])", T0 - 3.5) == "15"  # (T0-63.5, T0-3.5]
    assert await value(ramp, "rate(c[1m])", T0) == "0.35"
    assert await value(ramp, "increase(c[20s])", T0 - 20) == "7"  # 3 + 4
    assert await value(ramp, "increase(c[1m])", T0 - 60) is None  # nothing ends in the window


async def test_a_range_no_resolution_divides_divides_by_the_seconds_covered(ramp: Api) -> None:
    # [45s] at T0 holds the cells ending T0-40 … T0 (2 + … + 6 = 20 over 50 s): rate 0.4,
    # increase 0.4 × 45; at T0 - 5 the cells ending T0-40 … T0-10 (14 over 40 s).
    assert float(await value(ramp, "rate(c[45s])", T0) or "nan") == pytest.approx(0.4)
    assert float(await value(ramp, "increase(c[45s])", T0) or "nan") == pytest.approx(18.0)
    assert float(await value(ramp, "increase(c[45s])", T0 - 5) or "nan") == pytest.approx(15.75)


async def test_irate_is_the_latest_cell_per_second_of_the_cell(ramp: Api) -> None:
    assert await value(ramp, "irate(c[1m])", T0) == "0.6"  # 6 over the 10 s bucket
    assert await value(ramp, "irate(c[1m])", T0 - 25) == "0.3"  # 3: the bucket ending T0-30
    # A range query of step 1m reads 1 m cells: the latest holds 21.
    params = {"query": "irate(c[1m])", "start": T0, "end": T0, "step": "1m"}
    status, body = await ramp.request("GET", "/api/v1/query_range", params=params)
    assert status == 200, body
    assert body["data"]["result"] == [{"metric": {}, "values": [[int(T0), "0.35"]]}]


async def test_offset_and_at_shift_the_window(ramp: Api) -> None:
    assert await value(ramp, "increase(c[30s] offset 30s)", T0) == "6"  # 1 + 2 + 3
    assert await value(ramp, "increase(c[30s] @ 1764172770)", T0) == "6"
    params = {"query": "increase(c[30s] @ end())", "start": T0 - 60, "end": T0, "step": "30s"}
    status, body = await ramp.request("GET", "/api/v1/query_range", params=params)
    assert status == 200, body
    values = [[int(T0) - 60, "15"], [int(T0) - 30, "15"], [int(T0), "15"]]
    assert body["data"]["result"] == [{"metric": {}, "values": values}]


@pytest.mark.parametrize("flushed", [False, True])
@pytest.mark.parametrize("w", ["1h", "8h", "2d", "30d"])
async def test_long_ranges_read_the_coarser_tiers_and_memory(
    ramp: Api, gateway: Gateway, flushed: bool, w: str
) -> None:
    """[8h] is past the 10 s tier's 6 h (so 1 m cells), [30d] past the 1 m tier's 7 d (1 h
    cells): the last hour's buckets are still in them, from the store or from memory."""
    if flushed:
        await gateway.flusher.flush()
    for t in (T0, T0 + 5):
        got = await value(ramp, f"increase(c[{w}])", t)
        assert got is not None and float(got) == pytest.approx(21.0, rel=1e-12), (w, t, got)
    params = {"query": f"increase(c[{w}])", "start": T0 - 3600, "end": T0, "step": "1h"}
    status, body = await ramp.request("GET", "/api/v1/query_range", params=params)
    assert status == 200, body
    [series] = body["data"]["result"]
    [[stamp, text]] = series["values"]  # nothing ends in the window of T0 - 1h
    assert stamp == int(T0) and float(text) == pytest.approx(21.0, rel=1e-12)


async def test_unflushed_and_flushed_buckets_add_up(ramp: Api, gateway: Gateway) -> None:
    await gateway.flusher.flush()
    # More increments into a flushed bucket and into a new one, left in memory.
    status, _ = await ramp.batch([counter("c", 100, T0 - 5), counter("c", 1000, T0 - 25)])
    assert status == 200
    assert await value(ramp, "increase(c[1m])", T0) == "1121"
    assert await value(ramp, "increase(c[10s])", T0) == "106"


async def test_sample_rates_weigh_counters_and_timings(api: Api) -> None:
    points = [
        counter("w", 1, T0 - 15, sample_rate=0.5),
        counter("w", 3, T0 - 15, sample_rate=0.25),
        {"name": "lt", "type": "timing", "value": 7, "timestamp": T0 - 15, "sample_rate": 0.25},
        {"name": "lt", "type": "timing", "value": 9, "timestamp": T0 - 15, "sample_rate": 0.5},
    ]
    assert (await api.batch(points))[0] == 200
    assert await value(api, "increase(w[1m])", T0) == "14"  # 1/0.5 + 3/0.25
    assert await value(api, "histogram_count(increase(lt[1m]))", T0) == "6"
    assert await value(api, "histogram_sum(increase(lt[1m]))", T0) == "46"
    got = float(await value(api, "histogram_avg(increase(lt[1m]))", T0) or "nan")
    assert got == pytest.approx(46 / 6)
    # Weights 4 × 7 and 2 × 9: rank 0.5 · (6 − 1) = 2.5 is a 7; φ = 1 the exact max.
    got = float(await value(api, "histogram_quantile(0.5, sum(rate(lt[1m])))", T0) or "nan")
    assert got == pytest.approx(7.0, rel=0.01)
    assert await value(api, "histogram_quantile(1, sum(rate(lt[1m])))", T0) == "9"
    assert await value(api, "histogram_quantile(0, sum(rate(lt[1m])))", T0) == "7"


async def test_a_gauge_looks_back_five_minutes_from_its_bucket_end(api: Api) -> None:
    points = [
        {"name": "g", "type": "gauge", "value": 4, "timestamp": T0 - 299},  # ends T0 - 290
        {"name": "g", "type": "gauge", "value": 5, "timestamp": T0 - 295},  # later: the last
    ]
    assert (await api.batch(points))[0] == 200
    assert await value(api, "g", T0 - 290) == "5"
    assert await value(api, "g", T0) == "5"
    assert await value(api, "g", T0 + 9.5) == "5"
    assert await value(api, "g", T0 + 10) is None  # (T0 - 290, T0 + 10] holds it no more
    assert await value(api, "g", T0 - 290.5) is None  # not complete yet
    assert await value(api, "last_over_time(g[5m])", T0) == "5"
    assert await value(api, "count_over_time(g[5m])", T0) == "2"
    assert await value(api, "avg_over_time(g[5m])", T0) == "4.5"


@pytest.mark.parametrize(("query", "want"), [("round(vector(0.95), 0.1)", "1"),
                                             ("round(vector(0.3), 0.1)", "0.3")])  # fmt: skip
async def test_round_to_a_fraction_answers_as_prometheus(api: Api, query: str, want: str) -> None:
    # Prometheus: math.Floor(v*(1/to) + 0.5) / (1/to): 0.95 → 1, 0.3 → 0.3.
    assert await value(api, query, T0) == want


async def test_the_open_interval_is_not_visible(api: Api) -> None:
    # The clock is at T0 + 5: [T0 - 20, T0 - 10) is complete, [T0, T0 + 10) still open.
    status, _ = await api.batch([counter("c", 1, T0 - 15), counter("c", 2, T0 + 1)])
    assert status == 200
    assert await value(api, "increase(c[1m])", T0 + 5) == "1"
    assert await value(api, "increase(c[1m])", T0 + 10) == "1"
