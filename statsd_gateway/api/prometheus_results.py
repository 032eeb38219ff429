"""PromQL values as the Prometheus HTTP API writes them: `{"resultType": …, "result": …}`,
sample values as strings in Go's shortest 'f' format, times as Unix seconds (milliseconds at
most). A range query's matrix is written straight to JSON text (a `msgspec.Raw`): 1,000 series
of 61 steps are 61,000 points, and a list and a string per point, then encoded, cost more
than the query that computed them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from statsd_gateway.errors import Unprocessable
from statsd_gateway.float_text import texts_of
from statsd_gateway.promql.evaluate import Steps
from statsd_gateway.promql.values import Histograms, Scalar, StringValue, Value, Vector

_JSON = msgspec.json.Encoder()
_SPECIAL = {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}


def format_value(v: float) -> str:
    """A sample value as Prometheus writes it (Go's 'f' format, shortest): Python's repr,
    which is shortest too, without its `.0` or exponent."""
    text = repr(v)
    if text.endswith(".0"):
        return text[:-2]
    if "e" in text or text[-1] in "nf":
        return _SPECIAL.get(text) or np.format_float_positional(v, unique=True, trim="-")
    return text


def format_values(values: npt.NDArray[np.float64] | Sequence[float]) -> list[str]:
    """format_value of each value, the same strings, written at once (float_text)."""
    floats = values.tolist() if isinstance(values, np.ndarray) else [float(v) for v in values]
    return texts_of(floats, format_value)


def stamp(t: float) -> float | int:
    t = round(t, 3)
    return int(t) if t.is_integer() else t


def _no_histograms(value: Value) -> None:
    if isinstance(value, Histograms):
        raise Unprocessable(
            "the query's result is histograms, which this API does not return; wrap it in "
            "histogram_quantile(), histogram_count(), histogram_sum() or histogram_avg()"
        )


def instant_result(value: Value, t: float) -> dict[str, Any]:
    """The `data` of an instant query's answer at time `t`."""
    _no_histograms(value)
    if isinstance(value, Scalar):
        return {"resultType": "scalar", "result": [stamp(t), format_value(float(value.values[0]))]}
    if isinstance(value, StringValue):
        return {"resultType": "string", "result": [stamp(t), value.value]}
    assert isinstance(value, Vector)
    out = []
    for labels, row in zip(value.labels, value.values[:, 0].tolist(), strict=True):
        if not math.isnan(row):
            out.append({"metric": dict(labels), "value": [stamp(t), format_value(row)]})
    return {"resultType": "vector", "result": out}


def matrix_result(value: Value, steps: Steps) -> dict[str, Any]:
    """The `data` of a range query's answer: every series with a value at some step, sorted by
    its labels, each with its steps that have one. `result` is JSON text already."""
    _no_histograms(value)
    if isinstance(value, StringValue):
        raise Unprocessable("a string cannot be the result of a range query")
    if isinstance(value, Scalar):
        value = Vector([()], value.values[None, :])
    assert isinstance(value, Vector)
    # Each step's `[time,"` once: a point is then two concatenations.
    heads = [f'[{_JSON.encode(stamp(t)).decode()},"' for t in steps.times.tolist()]
    found: list[tuple[list[tuple[str, str]], dict[str, str], str]] = []
    for labels, row in zip(value.labels, value.values, strict=True):
        has = np.flatnonzero(~np.isnan(row))
        if has.size:
            texts = format_values(row[has])
            at = has.tolist()
            points = ",".join([heads[i] + v + '"]' for i, v in zip(at, texts, strict=True)])
            metric = dict(labels)
            found.append((sorted(metric.items()), metric, points))
    found.sort(key=lambda f: f[0])
    result = ",".join(
        '{"metric":' + _JSON.encode(metric).decode() + ',"values":[' + points + "]}"
        for _, metric, points in found
    )
    return {"resultType": "matrix", "result": msgspec.Raw(("[" + result + "]").encode())}
