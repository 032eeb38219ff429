"""The PromQL evaluator: an expression tree (syntax.py) → a value (values.py) at every step of a
query at once, reading rows through a Source (selection.py). Runs on a worker thread.

What each construct means on StatsD data is in docs/PROMETHEUS.md; in short:
- a counter is stored as per-interval increments, so `increase(c[w])` is the sum of the
  increments in the window and `rate(c[w])` that sum per second (no resets to detect);
  `irate` is the last increment of the window per second of its bucket;
- a gauge selected alone is its latest value within the look-back (5 minutes, or one cell of
  a coarser grid); `*_over_time` reduce every value the gauge was set to in the window
  (`quantile_over_time` from its sketch);
- a timing, histogram or distribution is a histogram: `rate(m[w])` and `increase(m[w])` of
  it, `sum` of those, and `histogram_quantile`, `histogram_count`, `histogram_sum`,
  `histogram_avg` over them; `m_count` and `m_sum` are counters; `m_bucket` is the classic
  form of the same histogram, valid inside `histogram_quantile(φ, sum by (le, …) (rate(…)))`.
A construct outside this is Unprocessable (422), never an approximation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from statsd_gateway.errors import InvalidArgument, Unprocessable
from statsd_gateway.model import MetricType
from statsd_gateway.promql import histograms
from statsd_gateway.promql.aggregate import aggregate, group_labels
from statsd_gateway.promql.binary import binary
from statsd_gateway.promql.cells import (
    F64,
    Labels,
    SeriesRows,
    extrapolated,
    window_any,
    window_latest,
    window_reduce,
)
from statsd_gateway.promql.names import LE, Metric, escape, is_histogram
from statsd_gateway.promql.selection import Source, metrics_of, read_rows, tag_matchers
from statsd_gateway.promql.syntax import (
    Aggregate,
    Binary,
    Call,
    Negate,
    Node,
    Number,
    Range,
    Selector,
    String,
)
from statsd_gateway.promql.values import (
    Histograms,
    Scalar,
    StringValue,
    Value,
    Vector,
    drop_name,
)

LOOKBACK = 300.0  # Prometheus' default look-back of an instant selector
_RATES = ("rate", "increase", "irate")
_OVER_TIME = (
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "last_over_time", "present_over_time", "quantile_over_time",
)  # fmt: skip
_HISTOGRAM_FUNCTIONS = ("histogram_quantile", "histogram_count", "histogram_sum", "histogram_avg")
_MATH: dict[str, Callable[[F64], F64]] = {
    "abs": np.abs, "ceil": np.ceil, "floor": np.floor, "sqrt": np.sqrt, "exp": np.exp,
    "ln": np.log, "log2": np.log2, "log10": np.log10, "sgn": np.sign,
}  # fmt: skip
SUPPORTED_FUNCTIONS = (
    *_RATES, *_OVER_TIME, *_HISTOGRAM_FUNCTIONS, *_MATH, "round", "clamp", "clamp_min",
    "clamp_max", "scalar", "vector", "time",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Steps:
    """The evaluation times; `step` None for an instant query. `start`/`end` are what
    `@ start()` and `@ end()` mean."""

    times: F64
    step: float | None

    @property
    def start(self) -> float:
        return float(self.times[0])

    @property
    def end(self) -> float:
        return float(self.times[-1])

    @property
    def n(self) -> int:
        return int(self.times.size)


class Evaluator:
    def __init__(self, source: Source, steps: Steps, check: Callable[[], None] = lambda: None):
        self.source = source
        self.steps = steps
        self.check = check  # raises once the query's time is up

    # -- the tree
    def eval(self, node: Node) -> Value:
        self.check()
        if isinstance(node, Number):
            return Scalar(np.full(self.steps.n, node.value))
        if isinstance(node, String):
            return StringValue(node.value)
        if isinstance(node, Negate):
            return self._negate(self.eval(node.expr))
        if isinstance(node, Selector):
            return self._instant(node)
        if isinstance(node, Range):
            raise Unprocessable(
                "a range vector cannot be returned or used here; wrap it in a function such "
                "as rate() or avg_over_time()"
            )
        if isinstance(node, Call):
            return self._call(node)
        if isinstance(node, Aggregate):
            return self._aggregate(node)
        assert isinstance(node, Binary)
        return binary(node, self.eval(node.lhs), self.eval(node.rhs))

    def _negate(self, v: Value) -> Value:
        if isinstance(v, Scalar):
            return Scalar(-v.values)
        if isinstance(v, Vector):
            return Vector([drop_name(lab) for lab in v.labels], -v.values)
        raise Unprocessable(f"unary minus does not apply to {_kind(v)}")

    # -- selectors
    def _times(self, sel: Selector) -> F64:
        """The evaluation times of a selector: the steps', or its @ time, less its offset."""
        if sel.at is None:
            base = self.steps.times
        else:
            at = sel.at
            if isinstance(at, str):
                at = self.steps.start if at == "start" else self.steps.end
            base = np.full(self.steps.n, float(at))
        return base - sel.offset

    def _metrics(self, sel: Selector) -> list[Metric]:
        return metrics_of(self.source.index, sel)

    def _read(
        self,
        metric: Metric,
        sel: Selector,
        width: float,
        values: tuple[str, ...],
        *,
        sketches: bool = False,
        keep_name: str | None = None,
        by_series: bool = True,
    ) -> tuple[F64, SeriesRows]:
        """The selector's evaluation times, and the metric's rows the steps cover with
        `width` (a range, or the look-back)."""
        times = self._times(sel)
        matchers = tag_matchers(self.source.series_tags(metric.name), metric, sel.matchers)
        rows = read_rows(
            self.source, metric, matchers, times, width, self.steps.step, values,
            sketches=sketches, keep_name=keep_name, by_series=by_series,
        )  # fmt: skip
        return times, rows

    def _instant(self, sel: Selector) -> Vector:
        """A bare selector: the latest value of each gauge within the look-back."""
        parts = []
        for metric in self._metrics(sel):
            if metric.type is not MetricType.GAUGE:
                raise Unprocessable(_bare_hint(metric))
            times, rows = self._read(
                metric, sel, LOOKBACK, ("last", "last_ts"), keep_name=escape(metric.name)
            )
            width = max(LOOKBACK, rows.grid.g)
            lo, hi = rows.grid.windows(times, width)
            latest = window_latest(rows.presence(), lo, hi)
            last = rows.dense_last()
            got = np.take_along_axis(last, np.maximum(latest, 0), axis=1) if last.size else last
            values = (
                np.where(latest >= 0, got, np.nan)
                if got.size
                else np.full((0, self.steps.n), np.nan)
            )
            parts.append(Vector(rows.labels, values))
        return _concat(parts, self.steps.n)

    # -- functions
    def _call(self, node: Call) -> Value:
        f, args = node.func, node.args
        if f in _RATES:
            return self._rate(f, _range_arg(f, args, 0))
        if f in _OVER_TIME:
            q = None
            if f == "quantile_over_time":
                q = self._scalar_arg(f, args[0])
            return self._over_time(f, _range_arg(f, args, 1 if q is not None else 0), q)
        if f in _HISTOGRAM_FUNCTIONS:
            return self._histogram_function(f, args)
        if f in _MATH:
            v = self._vector_arg(f, args[0])
            with np.errstate(all="ignore"):
                return Vector([drop_name(lab) for lab in v.labels], _MATH[f](v.values))
        if f == "round":
            v = self._vector_arg(f, args[0])
            to = self._scalar_arg(f, args[1]) if len(args) > 1 else 1.0
            with np.errstate(all="ignore"):
                inverse = 1.0 / to  # Prometheus: floor(v·(1/to) + 0.5) / (1/to), half up
                rounded = np.floor(v.values * inverse + 0.5) / inverse
            return Vector([drop_name(lab) for lab in v.labels], rounded)
        if f in ("clamp", "clamp_min", "clamp_max"):
            return self._clamp(f, args)
        if f == "scalar":
            v = self._vector_arg(f, args[0])
            one = (~np.isnan(v.values)).sum(axis=0) == 1
            value = np.nansum(v.values, axis=0) if v.values.size else np.zeros(self.steps.n)
            return Scalar(np.where(one, value, np.nan))
        if f == "vector":
            s = self.eval(args[0])
            assert isinstance(s, Scalar)
            return Vector([()], s.values[None, :].copy())
        if f == "time":
            return Scalar(self.steps.times.copy())
        raise Unprocessable(
            f"the function {f}() is not supported (supported: {', '.join(SUPPORTED_FUNCTIONS)})"
        )

    def _scalar_arg(self, f: str, node: Node) -> float:
        if not isinstance(node, Number):
            raise Unprocessable(f"{f}() takes a number literal as its parameter here")
        return node.value

    def _vector_arg(self, f: str, node: Node) -> Vector:
        v = self.eval(node)
        if not isinstance(v, Vector):
            raise Unprocessable(f"{f}() needs an instant vector of numbers, not {_kind(v)}")
        return v

    def _clamp(self, f: str, args: tuple[Node, ...]) -> Vector:
        v = self._vector_arg(f, args[0])
        lo, hi = -np.inf, np.inf
        if f == "clamp":
            lo, hi = self._scalar_arg(f, args[1]), self._scalar_arg(f, args[2])
            if lo > hi:
                return Vector.empty(self.steps.n)
        elif f == "clamp_min":
            lo = self._scalar_arg(f, args[1])
        else:
            hi = self._scalar_arg(f, args[1])
        return Vector([drop_name(lab) for lab in v.labels], np.clip(v.values, lo, hi))

    def _rate(self, f: str, rng: Range, summed: Aggregate | None = None) -> Value:
        """rate, increase or irate of a selection; `summed`: a sum over the result, which the
        rows are grouped for before any window is reduced (a sum of rates is the rate of the
        sum: one array per group, not per series), the caller aggregating what is left."""
        metrics = self._metrics(rng.selector)
        sketched = [m for m in metrics if m.view in ("", "_bucket") and is_histogram(m.type)]
        if sketched and len(sketched) != len(metrics):
            raise Unprocessable(f"{f}() over histograms and counters at once is not supported")
        if sketched:
            if f == "irate":
                raise Unprocessable("irate() of a histogram is not supported; use rate()")
            if len(sketched) > 1:
                raise Unprocessable(
                    f"{f}() over several histogram metrics at once is not supported"
                )
            return self._histograms(f, sketched[0], rng)
        parts = []
        total_only = summed is not None and not summed.by and not summed.without
        for metric in metrics:
            column = _counter_column(f, metric)
            times, rows = self._read(
                metric, rng.selector, rng.seconds, (column,), by_series=not total_only
            )
            if summed is not None and not total_only:
                rows = _grouped(rows, summed)
            lo, hi = rows.grid.windows(times, rng.seconds)
            dense = rows.dense(rows.cols.values[column])
            present = rows.presence()
            has = window_any(present, lo, hi)
            covered = ((hi - lo) * rows.grid.g).astype(np.float64)
            if f == "irate":
                latest = window_latest(present, lo, hi)
                got = (
                    np.take_along_axis(dense, np.maximum(latest, 0), axis=1)
                    if dense.size
                    else dense
                )
                values = got / rows.grid.g
            else:
                total = window_reduce(dense, lo, hi, "sum")
                values = extrapolated(total, covered, rng.seconds, per_second=f == "rate")
            parts.append(Vector(rows.labels, np.where(has, values, np.nan)))
        return _concat(parts, self.steps.n)

    def _histograms(self, f: str, metric: Metric, rng: Range) -> Histograms:
        want = ("count", "sum", "min", "max")
        times, rows = self._read(metric, rng.selector, rng.seconds, want, sketches=True)
        lo, hi = rows.grid.windows(times, rng.seconds)
        return Histograms(
            rows, lo, hi, ((hi - lo) * rows.grid.g).astype(np.float64), rng.seconds,
            list(rows.labels), np.arange(rows.n_series, dtype=np.int64),
            per_second=f == "rate", classic=metric.view == "_bucket",
        )  # fmt: skip

    def _over_time(self, f: str, rng: Range, q: float | None) -> Vector:
        parts = []
        for metric in self._metrics(rng.selector):
            if metric.type is not MetricType.GAUGE:
                raise Unprocessable(
                    f"{f}() is supported over gauges; {escape(metric.name)} is a "
                    f"{metric.type.value} ("
                    + (
                        "for a histogram, histogram_quantile() and the like over rate()"
                        if is_histogram(metric.type)
                        else "for a counter, increase() or rate()"
                    )
                    + ")"
                )
            want = ("count", "sum", "min", "max", "last", "last_ts")
            # last_over_time keeps the metric name, as in Prometheus; the others drop it.
            name = escape(metric.name) if f == "last_over_time" else None
            times, rows = self._read(
                metric, rng.selector, rng.seconds, want, sketches=q is not None, keep_name=name
            )
            lo, hi = rows.grid.windows(times, rng.seconds)
            v = rows.cols.values
            present = rows.presence()
            has = window_any(present, lo, hi)
            if f in ("avg_over_time", "sum_over_time", "count_over_time"):
                count = window_reduce(rows.dense(v["count"]), lo, hi, "sum")
                total = window_reduce(rows.dense(v["sum"]), lo, hi, "sum")
                with np.errstate(divide="ignore", invalid="ignore"):
                    values = {"avg_over_time": total / count, "sum_over_time": total}.get(f, count)
            elif f in ("min_over_time", "max_over_time"):
                op, how, column = (
                    (np.fmin, "min", "min") if f == "min_over_time" else (np.fmax, "max", "max")
                )
                values = window_reduce(rows.dense_extreme(op, v[column]), lo, hi, how)
            elif f == "last_over_time":
                latest = window_latest(present, lo, hi)
                last = rows.dense_last()
                values = (
                    np.take_along_axis(last, np.maximum(latest, 0), axis=1) if last.size else last
                )
            elif f == "present_over_time":
                values = np.ones(has.shape)
            else:
                assert q is not None
                unnamed = [drop_name(x) for x in rows.labels]
                series = np.arange(rows.n_series, dtype=np.int64)
                h = Histograms(rows, lo, hi, np.zeros(lo.size), rng.seconds, unnamed, series,
                               per_second=False, classic=False)  # fmt: skip
                got = histograms.quantile(h, q)
                parts.append(got)
                continue
            parts.append(Vector(list(rows.labels), np.where(has, values, np.nan)))
        return _concat(parts, self.steps.n)

    def _histogram_function(self, f: str, args: tuple[Node, ...]) -> Vector:
        if f == "histogram_quantile":
            q = self.eval(args[0])
            if not isinstance(q, Scalar):
                raise Unprocessable("histogram_quantile() takes a scalar φ")
            phi = float(q.values[0])
            if not np.all((q.values == phi) | (np.isnan(q.values) & np.isnan(phi))):
                raise Unprocessable(
                    "histogram_quantile() with a φ that varies by step is not supported"
                )
            h = self._histogram_arg(f, args[1])
            return Vector.empty(self.steps.n) if h is None else histograms.quantile(h, phi)
        h = self._histogram_arg(f, args[0])
        if h is None:
            return Vector.empty(self.steps.n)
        if h.classic:
            raise Unprocessable(
                f"{f}() of a classic histogram's buckets is not supported; pass the histogram "
                "itself (rate(m[5m]), not rate(m_bucket[5m]))"
            )
        return {"histogram_count": histograms.count, "histogram_sum": histograms.total,
                "histogram_avg": histograms.average}[f](h)  # fmt: skip

    def _histogram_arg(self, f: str, node: Node) -> Histograms | None:
        """The histograms `node` evaluates to; None where it selects nothing at all."""
        v = self.eval(node)
        if isinstance(v, Histograms):
            return v
        if isinstance(v, Vector) and not v.labels:
            return None
        raise Unprocessable(
            f"{f}() needs histograms: rate() or increase() of a timing, histogram or "
            f"distribution (or their sum), not {_kind(v)}"
        )

    # -- aggregations
    def _aggregate(self, node: Aggregate) -> Value:
        arg = node.expr
        if node.op == "sum" and isinstance(arg, Call) and arg.func in ("rate", "increase"):
            rng = _range_arg(arg.func, arg.args, 0)
            if not any(is_histogram(m.type) for m in self._metrics(rng.selector)):
                inner: Value = self._rate(arg.func, rng, summed=node)
                assert isinstance(inner, Vector)
                return aggregate(node, inner)  # merges the groups of several metrics
        inner = self.eval(node.expr)
        if isinstance(inner, Histograms):
            if node.op != "sum":
                raise Unprocessable(
                    f"{node.op}() of histograms is not supported; only sum() merges them"
                )
            return _group_histograms(inner, node)
        if not isinstance(inner, Vector):
            raise Unprocessable(f"{node.op}() needs an instant vector, not {_kind(inner)}")
        return aggregate(node, inner)


def _grouped(rows: SeriesRows, node: Aggregate) -> SeriesRows:
    """The rows with each series in its group of `node` (a `sum by` or `sum without`)."""
    of_series = [group_labels(lab, node.by or (), node.without) for lab in rows.labels]
    groups = sorted(set(of_series))
    rank = {g: i for i, g in enumerate(groups)}
    return rows.grouped(groups, np.array([rank[g] for g in of_series], dtype=np.int64))


def _group_histograms(h: Histograms, node: Aggregate) -> Histograms:
    labels = node.by or ()
    if h.classic:
        if node.without and LE in labels:
            raise Unprocessable("sum without (le) of buckets leaves nothing for histogram_quantile")
        if not node.without:
            if LE not in labels:
                raise Unprocessable(
                    "summing a histogram's buckets must keep le: sum by (le, …) (rate(m_bucket[w]))"
                )
            labels = tuple(x for x in labels if x != LE)
    of_group = [group_labels(g, labels, node.without) for g in h.groups]
    groups = sorted(set(of_group))
    rank = {g: i for i, g in enumerate(groups)}
    remap = np.array([rank[g] for g in of_group], dtype=np.int64)
    return Histograms(
        h.rows, h.lo, h.hi, h.covered, h.width, groups, remap[h.group_of],
        h.per_second, h.classic,
    )  # fmt: skip


def _range_arg(f: str, args: tuple[Node, ...], i: int) -> Range:
    if len(args) <= i or not isinstance(args[i], Range):
        raise InvalidArgument(f"{f}() expects a range vector, like m[5m]", "query")
    arg = args[i]
    assert isinstance(arg, Range)
    return arg


def _counter_column(f: str, metric: Metric) -> str:
    if metric.type is MetricType.COUNTER:
        return "sum"
    if metric.view == "_count":
        return "count"
    if metric.view == "_sum":
        return "sum"
    raise Unprocessable(
        f"{f}() applies to counters and histograms; {escape(metric.name)} is a {metric.type.value}"
        + (" (for a gauge, the *_over_time functions)" if metric.type is MetricType.GAUGE else "")
    )


def _bare_hint(metric: Metric) -> str:
    name = escape(metric.name) + metric.view
    if metric.type is MetricType.COUNTER or metric.view in ("_count", "_sum"):
        return (
            f"{name} is stored as increments per interval, not as a running total: select it "
            f"with rate({name}[5m]) or increase({name}[5m])"
        )
    if metric.type is MetricType.SET:
        return f"{name} is a set; sets are not supported in PromQL yet"
    return (
        f"{name} is a histogram ({metric.type.value}): use histogram_quantile(0.99, "
        f"sum(rate({name}[5m]))), histogram_count(rate({name}[5m])) or the like"
    )


def _kind(v: Value) -> str:
    return {
        Scalar: "a scalar", StringValue: "a string", Vector: "an instant vector",
        Histograms: "histograms",
    }[type(v)]  # fmt: skip


def _concat(parts: list[Vector], n_steps: int) -> Vector:
    parts = [p for p in parts if p.labels]
    if not parts:
        return Vector.empty(n_steps)
    if len(parts) == 1:
        return parts[0]
    labels: list[Labels] = [lab for p in parts for lab in p.labels]
    return Vector(labels, np.concatenate([p.values for p in parts]))
