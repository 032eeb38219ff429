"""The answers of GET /v1/metrics/query and /v1/metrics/sketch: a parsed QuerySpec → the
engine's plan → the engine → our JSON (DESIGN.md §4), without HTTP (the handlers parse the
request and send what this returns).

JSON has no Infinity or NaN: a value that overflowed is `null`; a cell with no value (no min
among its rows, say) is left out of its group's points.
"""

from __future__ import annotations

import asyncio
import base64
import math
from typing import Any

from statsd_gateway import sketch
from statsd_gateway.api.query_params import QuerySpec, query_plan
from statsd_gateway.query import MergedSketch, QueryEngine, QueryResult, Selector


async def query_answer(engine: QueryEngine, tenant: str, spec: QuerySpec) -> dict[str, Any]:
    """The answer of /v1/metrics/query."""
    plan = query_plan(tenant, spec, engine.metric_type(tenant, spec.name))
    result = await engine.run(plan)
    # One dict per point: for a wide answer, work to keep off the loop.
    return await asyncio.to_thread(render_query, spec, result)


async def sketch_answer(engine: QueryEngine, tenant: str, spec: QuerySpec) -> dict[str, Any]:
    """The answer of /v1/metrics/sketch: the range's merged sketch as DDSketch protobuf."""
    merged = await engine.merged_sketch(
        Selector(tenant, spec.name, spec.matchers), spec.since, spec.until
    )
    return render_sketch(spec, merged)


def render_query(spec: QuerySpec, result: QueryResult) -> dict[str, Any]:
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
        {"tags": dict(s.tags), "points": _points(s.timestamps.tolist(), s.values.tolist())}
        for s in result.series
    ]
    if not spec.group_by:
        return {**head, "points": series[0]["points"] if series else []}
    return {**head, "series": series}


def _points(timestamps: list[float], values: list[float]) -> list[dict[str, Any]]:
    return [
        {"timestamp": json_number(t), "value": json_number(v)}
        for t, v in zip(timestamps, values, strict=True)
        if not math.isnan(v)
    ]


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
