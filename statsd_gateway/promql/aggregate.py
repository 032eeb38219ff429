"""PromQL's aggregation operators over instant vectors: `sum`, `avg`, `min`, `max`, `count`,
`by (…)` or `without (…)`, every step at once. A series without a value at a step takes no
part in it; a group none of whose series has a value there has none either."""

from __future__ import annotations

import numpy as np

from statsd_gateway.promql.cells import F64, Labels
from statsd_gateway.promql.syntax import Aggregate
from statsd_gateway.promql.values import NAME, Vector


def group_labels(labels: Labels, keys: tuple[str, ...], without: bool) -> Labels:
    """The labels of the group a series goes to: `by (keys)` keeps those it has, `without
    (keys)` drops them and the metric name, neither (`keys` empty, by) drops them all."""
    if without:
        drop = {*keys, NAME}
        return tuple(p for p in labels if p[0] not in drop)
    keep = set(keys)
    return tuple(p for p in labels if p[0] in keep)


def aggregate(node: Aggregate, v: Vector) -> Vector:
    n_steps = v.values.shape[1]
    if not v.labels:
        return Vector.empty(n_steps)
    of_series = [group_labels(lab, node.by or (), node.without) for lab in v.labels]
    groups = sorted(set(of_series))
    rank = {g: i for i, g in enumerate(groups)}
    group = np.array([rank[g] for g in of_series], dtype=np.int64)
    order = np.argsort(group, kind="stable")
    values = v.values[order]
    starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
    has = ~np.isnan(values)
    count = np.add.reduceat(has, starts, axis=0).astype(np.float64)
    out = _reduce(node.op, values, has, starts, count)
    out[count == 0] = np.nan
    return Vector(groups, out).present()


def _reduce(op: str, values: F64, has: np.ndarray, starts: np.ndarray, count: F64) -> F64:
    if op == "count":
        return count
    if op in ("sum", "avg"):
        total = np.add.reduceat(np.where(has, values, 0.0), starts, axis=0)
        if op == "sum":
            return total
        with np.errstate(divide="ignore", invalid="ignore"):
            return total / count
    ufunc = np.fmin if op == "min" else np.fmax
    return ufunc.reduceat(values, starts, axis=0)
