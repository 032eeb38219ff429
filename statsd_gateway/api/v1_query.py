"""The answers of GET /v1/metrics/query and /v1/metrics/sketch: a parsed QuerySpec → the
engine's plan → the engine → our JSON (DESIGN.md §4), without HTTP (the handlers parse the
request and send what this returns).

JSON has no Infinity or NaN: a value that overflowed is `null`; a cell with no value (no min
among its rows, say) is left out of its group's points. A whole number is written as one (`3`,
not `3.0`). The query's answer is encoded here (msgspec), its numbers converted a column at a
time: a day at 1 m steps is 1,440 points.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from statsd_gateway import sketch
from statsd_gateway.api.query_params import QuerySpec, query_plan
from statsd_gateway.query import MergedSketch, QueryEngine, QueryResult, Selector

_JSON = msgspec.json.Encoder()
_SAFE_INT = float(2**53)


async def query_answer(engine: QueryEngine, tenant: str, spec: QuerySpec) -> bytes:
    """The answer of /v1/metrics/query, as JSON."""
    plan = query_plan(tenant, spec, engine.metric_type(tenant, spec.name))
    # Rendered where the reduction runs: off the loop, one thread hop for both.
    return await engine.run_then(plan, lambda result: render_query(spec, result))


async def sketch_answer(engine: QueryEngine, tenant: str, spec: QuerySpec) -> dict[str, Any]:
    """The answer of /v1/metrics/sketch: the range's merged sketch as DDSketch protobuf."""
    merged = await engine.merged_sketch(
        Selector(tenant, spec.name, spec.matchers), spec.since, spec.until
    )
    return render_sketch(spec, merged)


def render_query(spec: QuerySpec, result: QueryResult) -> bytes:
    head = {
        "ok": True,
        "name": spec.name,
        "type": result.type.value,
        "agg": spec.agg,
        "tags": dict(spec.tags),
        "window": spec.window_text,
        "since": json_number(spec.since),
        "until": json_number(spec.until),
    }
    series = [
        {"tags": dict(s.tags), "points": _points(s.timestamps, s.values)} for s in result.series
    ]
    if not spec.group_by:
        return _JSON.encode({**head, "points": series[0]["points"] if series else []})
    return _JSON.encode({**head, "series": series})


def _points(timestamps: npt.NDArray[np.float64], values: npt.NDArray[np.float64]) -> list[Any]:
    """The cells with a value, as {"timestamp", "value"} objects."""
    has = ~np.isnan(values)
    if not has.all():
        timestamps, values = timestamps[has], values[has]
    return [
        {"timestamp": t, "value": v}
        for t, v in zip(json_numbers(timestamps), json_numbers(values), strict=True)
    ]


def json_numbers(a: npt.NDArray[np.float64]) -> list[float | int | None]:
    """json_number() of every element of a column."""
    finite = np.isfinite(a)
    whole = finite & (np.floor(a) == a) & (np.abs(a) < _SAFE_INT)
    if whole.all():
        return a.astype(np.int64).tolist()  # type: ignore[no-any-return]
    out: list[float | int | None] = a.tolist()
    for i in np.flatnonzero(whole).tolist():
        out[i] = int(a[i])
    for i in np.flatnonzero(~finite).tolist():
        out[i] = None
    return out


def render_sketch(spec: QuerySpec, merged: MergedSketch) -> dict[str, Any]:
    return {
        "ok": True,
        "name": spec.name,
        "type": merged.type.value,
        "tags": dict(spec.tags),
        "since": json_number(spec.since),
        "until": json_number(spec.until),
        "count": json_number(merged.count),
        "sum": json_number(merged.sum),
        "min": None if math.isnan(merged.min) else merged.min,
        "max": None if math.isnan(merged.max) else merged.max,
        "format": "ddsketch-proto",
        "relative_accuracy": sketch.RELATIVE_ACCURACY,
        "sketch": base64.b64encode(sketch.to_proto(merged.bins)).decode("ascii"),
    }


def json_number(v: float) -> float | int | None:
    """JSON has no Infinity or NaN (a sum can overflow): those become null; a whole number
    is written as one (`3`, not `3.0`)."""
    v = float(v)
    if not math.isfinite(v):
        return None
    if v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v
