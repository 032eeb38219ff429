"""The JSON answers of the read endpoints, as msgspec Structs. The query engine and the catalog
build these answers as dicts; the OpenAPI document publishes these definitions, and its test
(schemathesis) checks every answer the server gives against them."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from statsd_gateway.model import MetricType

Seconds = Annotated[float, Meta(description="unix seconds")]
Count = Annotated[int, Meta(ge=0)]


class QueryPoint(msgspec.Struct):
    timestamp: float
    value: float | None


class SeriesPoints(msgspec.Struct):
    """One group of a query with group_by."""

    tags: dict[str, str] = {}
    points: list[QueryPoint] = []


class QueryAnswer(msgspec.Struct):
    """One aggregation of one metric: `points`, or one `series` per group with group_by."""

    ok: bool
    name: str
    type: MetricType
    agg: str
    tags: dict[str, str]
    window: str | None
    since: Seconds
    until: Seconds
    points: list[QueryPoint] = []
    series: list[SeriesPoints] = []


class SketchAnswer(msgspec.Struct):
    """The merged DDSketch of a range, base64 of a DDSketch protobuf message, with the exact
    count, sum, min and max."""

    ok: bool
    name: str
    type: MetricType
    tags: dict[str, str]
    since: Seconds
    until: Seconds
    count: float | None
    sum: float | None
    min: float | None
    max: float | None
    format: Literal["ddsketch-proto"]
    relative_accuracy: float
    sketch: Annotated[str, Meta(extra_json_schema={"format": "byte"})]


class MetricInfo(msgspec.Struct):
    name: str
    type: MetricType
    tag_keys: list[str]
    aggregations: Annotated[
        list[str],
        Meta(description="the query's agg values this type has; pNN stands for any quantile"),
    ]


class TierInfo(msgspec.Struct):
    """A storage tier: buckets of `resolution` seconds, kept `retention` seconds."""

    resolution: Annotated[float, Meta(gt=0)]
    retention: Annotated[float, Meta(gt=0)]


class MetricsAnswer(msgspec.Struct):
    ok: bool
    metrics: list[MetricInfo]
    tiers: Annotated[
        list[TierInfo],
        Meta(
            description="the storage tiers, finest first: a query's window is a multiple of "
            "the first, and only a tier keeping `since` answers a window of its resolution"
        ),
    ]


class TagValueCount(msgspec.Struct):
    value: str
    series: Annotated[int, Meta(ge=1)]


class TagKeyValues(msgspec.Struct):
    """A tag key with its values, most series first; `truncated` when the limit cut some."""

    key: str
    values: list[TagValueCount]
    truncated: bool


class TagsAnswer(msgspec.Struct):
    ok: bool
    name: str
    tags: list[TagKeyValues]


class Deleted(msgspec.Struct):
    series: Count
    stored_series: Count
    rows: Count
    in_memory: Count


class DeletedAnswer(msgspec.Struct):
    ok: bool
    name: str
    tags: dict[str, str]
    deleted: Deleted
