"""Queries: a typed plan (plan.py) → the engine (engine.py, reading the store and memory) → the
reductions per cell (reduce.py) → typed arrays (result.py). No HTTP, no JSON: a front end (our
/v1 API in api/, PromQL next) builds the plan and renders the result."""

from statsd_gateway.query.engine import QueryEngine
from statsd_gateway.query.plan import AggOp, Aggregation, Grouping, QueryPlan, Selector
from statsd_gateway.query.reduce import QueryRows
from statsd_gateway.query.result import MergedSketch, QueryResult, SeriesResult

__all__ = [
    "AggOp",
    "Aggregation",
    "Grouping",
    "MergedSketch",
    "QueryEngine",
    "QueryPlan",
    "QueryResult",
    "QueryRows",
    "Selector",
    "SeriesResult",
]
