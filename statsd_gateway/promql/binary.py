"""PromQL's arithmetic (`+ - * / % ^`) and comparison (`== != > < >= <=`, with or without
`bool`) operators between scalars and instant vectors, every step at once.

Between two vectors, series are matched one to one on their labels (all but the metric name,
or those of `on (…)`, or all but those of `ignoring (…)`); a series without a match, or without
a value on both sides at a step, gives nothing there. Where one side has two series with one
match key at the same step, the query is refused, as Prometheus refuses it. Result labels and
values follow Prometheus: arithmetic, and comparisons with `bool`, drop the metric name; a
comparison without `bool` filters, keeping the left-hand value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from statsd_gateway.errors import Unprocessable
from statsd_gateway.promql.cells import F64, Labels
from statsd_gateway.promql.syntax import ARITHMETIC, Binary
from statsd_gateway.promql.values import (
    NAME,
    Histograms,
    Scalar,
    StringValue,
    Value,
    Vector,
    drop_name,
)

_OPS: dict[str, Callable[[F64, F64], F64]] = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "%": np.fmod,
    "^": np.power, "==": np.equal, "!=": np.not_equal, ">": np.greater, "<": np.less,
    ">=": np.greater_equal, "<=": np.less_equal,
}  # fmt: skip


def _apply(op: str, a: F64, b: F64) -> F64:
    with np.errstate(all="ignore"):
        return np.asarray(_OPS[op](a, b), dtype=np.float64)


def binary(node: Binary, lhs: Value, rhs: Value) -> Value:
    for side in (lhs, rhs):
        if isinstance(side, (StringValue, Histograms)):
            what = "a string" if isinstance(side, StringValue) else "histograms"
            raise Unprocessable(f"the operator {node.op} does not apply to {what}")
    op = node.op
    arithmetic = op in ARITHMETIC
    if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
        got = _apply(op, lhs.values, rhs.values)
        return Scalar(got)
    if isinstance(lhs, Vector) and isinstance(rhs, Vector):
        return _vectors(node, lhs, rhs)
    vector, scalar_on_left = (lhs, False) if isinstance(lhs, Vector) else (rhs, True)
    assert isinstance(vector, Vector)
    scalar = rhs if not scalar_on_left else lhs
    assert isinstance(scalar, Scalar)
    s = scalar.values[None, :]
    got = _apply(op, s, vector.values) if scalar_on_left else _apply(op, vector.values, s)
    if arithmetic:
        return Vector([drop_name(lab) for lab in vector.labels], got)
    return _compared(node, vector.labels, vector.values, got)


def _compared(node: Binary, labels: list[Labels], kept: F64, truth: F64) -> Vector:
    """A comparison's result: 1/0 with `bool` (no metric name), else the kept values where
    true."""
    if node.keep_bool:
        out = np.where(np.isnan(truth) | np.isnan(kept), np.nan, (truth == 1.0).astype(np.float64))
        return Vector([drop_name(lab) for lab in labels], out)
    return Vector(list(labels), np.where(truth == 1.0, kept, np.nan)).present()


def _match_key(labels: Labels, node: Binary) -> Labels:
    if node.on is not None:
        keep = set(node.on)
        return tuple(p for p in labels if p[0] in keep)
    drop = {NAME, *(node.ignoring or ())}
    return tuple(p for p in labels if p[0] not in drop)


def _result_labels(labels: Labels, node: Binary) -> Labels:
    if node.op in ARITHMETIC or node.keep_bool:
        labels = drop_name(labels)
    if node.on is not None:
        keep = set(node.on)
        return tuple(p for p in labels if p[0] in keep)
    if node.ignoring:
        drop = set(node.ignoring)
        return tuple(p for p in labels if p[0] not in drop)
    return labels


def _one_per_key(v: Vector, node: Binary, side: str) -> dict[Labels, tuple[Labels, F64]]:
    """Each match key's series (labels, values); two series of a key merge where they never
    have a value at the same step, else the query is refused."""
    out: dict[Labels, tuple[Labels, F64]] = {}
    for lab, values in zip(v.labels, v.values, strict=True):
        key = _match_key(lab, node)
        have = out.get(key)
        if have is None:
            out[key] = (lab, values)
            continue
        if (~np.isnan(have[1]) & ~np.isnan(values)).any():
            raise Unprocessable(
                f"found duplicate series for the match group {dict(key)} on the {side} hand-side "
                "of the operation; many-to-many matching not allowed: matching labels must be "
                "unique on one side"
            )
        out[key] = (have[0], np.where(np.isnan(have[1]), values, have[1]))
    return out


def _vectors(node: Binary, lhs: Vector, rhs: Vector) -> Vector:
    n_steps = lhs.values.shape[1]
    left = _one_per_key(lhs, node, "left")
    right = _one_per_key(rhs, node, "right")
    labels: list[Labels] = []
    rows: list[F64] = []
    for key, (lab, a) in left.items():
        match = right.get(key)
        if match is None:
            continue
        b = match[1]
        got = _apply(node.op, a, b)
        both = ~(np.isnan(a) | np.isnan(b))
        if node.op in ARITHMETIC:
            values = np.where(both, got, np.nan)
        elif node.keep_bool:
            values = np.where(both, (got == 1.0).astype(np.float64), np.nan)
        else:
            values = np.where(both & (got == 1.0), a, np.nan)
        labels.append(_result_labels(lab, node))
        rows.append(values)
    if not rows:
        return Vector.empty(n_steps)
    return Vector(labels, np.vstack(rows)).present()
