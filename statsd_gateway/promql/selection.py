"""Selectors → the rows they select, on a grid of cells (cells.py): which StatsD metrics a
selector names (names.py), its label matchers as tag matchers, the tier the rows are read from,
and the rows as SeriesRows.

`Source` is what the evaluation needs of the gateway, given by the API layer: a blocking read
(the evaluation runs on a worker thread of its own and waits there while the store reads on
its threads), the tags of a metric's series, the tiers, and the name index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from statsd_gateway.errors import InvalidArgument, Unprocessable
from statsd_gateway.model import Matcher, MatchOp, Tags
from statsd_gateway.promql.cells import F64, Grid, Labels, SeriesRows, Tier, grid_resolution
from statsd_gateway.promql.names import LE, Metric, NameIndex, escape, label_keys, labels_of
from statsd_gateway.promql.syntax import LabelMatch, Selector
from statsd_gateway.promql.values import NAME
from statsd_gateway.query.reduce import QueryRows

_OPS = {"=": MatchOp.EQUAL, "!=": MatchOp.NOT_EQUAL, "=~": MatchOp.REGEX, "!~": MatchOp.NOT_REGEX}
# Read(metric name, tag matchers, start, until, grid resolution, numeric columns, sketches,
# by series: False reads the rows without which series each belongs to).
Read = Callable[
    [str, tuple[Matcher, ...], float, float, float, tuple[str, ...], bool, bool], QueryRows
]


@dataclass(frozen=True, slots=True)
class Source:
    read: Read
    series_tags: Callable[[str], Sequence[Tags]]
    tiers: tuple[Tier, ...]
    index: NameIndex
    now: float


def metrics_of(index: NameIndex, sel: Selector, *, strict: bool = True) -> list[Metric]:
    """The metrics (or histogram views) a selector's name and `__name__` matchers select;
    without either, every metric (its label matchers then choose the series). `strict`: a
    selected name two StatsD metrics escape to is refused (a query); else both are listed."""
    equal = [m.value for m in sel.matchers if m.label == NAME and m.op == "="]
    others = [matcher(NAME, m) for m in sel.matchers if m.label == NAME and m.op != "="]
    if sel.name is not None:
        equal.append(sel.name)
    if equal:
        # The name as sent first: `{__name__="a_b"}` is the metric a_b even where a.b escapes
        # to it too; then the escaped name (or a histogram view).
        wanted = equal[0]
        found = index.raw(wanted) if sel.name is None else None
        found = found or index.lookup(wanted)
        if found is None or any(
            escape(found.name) + found.view != e and found.name != e for e in equal[1:]
        ):
            return []
        shown = escape(found.name) + found.view
        return [found] if all(m.accepts(shown) for m in others) else []
    return index.matching(lambda name: all(m.accepts(name) for m in others), strict=strict)


def matcher(key: str, m: LabelMatch) -> Matcher:
    """A tag matcher; a regex RE2 refuses (which promql-parser's own regex engine took) is
    bad_data, not a 500."""
    try:
        return Matcher(key, _OPS[m.op], m.value)
    except ValueError as e:
        raise InvalidArgument(str(e), "query") from None


def tag_matchers(
    series_tags: Sequence[Tags], metric: Metric, matchers: Sequence[LabelMatch]
) -> tuple[Matcher, ...]:
    """A selector's label matchers as matchers of the tags of the metric's series
    (`series_tags`), label names unescaped."""
    keys = label_keys(series_tags, metric.name)
    out = []
    for m in matchers:
        if m.label == NAME:
            continue
        if m.label == LE:
            raise Unprocessable(
                f"a matcher on {LE} is not supported: buckets are not stored as series"
            )
        out.append(matcher(keys.get(m.label, m.label), m))
    return tuple(out)


def read_rows(
    source: Source,
    metric: Metric,
    matchers: tuple[Matcher, ...],
    times: F64,
    width: float,
    step: float | None,
    values: tuple[str, ...],
    sketches: bool = False,
    keep_name: str | None = None,
    by_series: bool = True,
) -> SeriesRows:
    """The metric's rows that steps at `times` (already shifted by offset/@) cover with
    `width`, on a grid picked for them; series labelled with their tags (escaped, `__name__`
    set to `keep_name` when given). Not `by_series`: every row in one series, labelled ()."""
    oldest = float(times.min()) - width
    g = grid_resolution(source.tiers, width, step, oldest, source.now)
    grid = Grid.covering(g, times, width)
    # A bucket still open at `now` (its end later) is not yet a sample (cells.py): not read.
    until = max(grid.start, min(grid.until, math.floor(source.now / g) * g))
    rows = source.read(metric.name, matchers, grid.start, until, g, values, sketches, by_series)
    cell = grid.cell_of(rows.cols.ts)
    if cell.size and (int(cell.min()) < 0 or int(cell.max()) >= grid.size):
        raise AssertionError("a row outside the grid it was read for")  # RowRead's range
    if not by_series:
        whole = np.zeros(len(rows.cols), dtype=np.int64)
        return SeriesRows(grid, [()] if len(rows.cols) else [], whole, cell, rows.cols)
    labels: dict[Labels, int] = {}
    tags_of: dict[Labels, object] = {}
    series_of: list[int] = []
    for tags in rows.tags:
        lab = labels_of(tags)
        if keep_name is not None:
            lab = tuple(sorted((*lab, (NAME, keep_name))))
        # A series stored and in memory comes twice with the same tags; two series whose
        # tags differ only by a bare tag (no label) would be one: refused, not merged.
        if tags_of.setdefault(lab, tags) != tags:
            raise Unprocessable(
                f"two series of {metric.name} have the same labels {dict(lab)} once their bare "
                "tags (which have no Prometheus label) are left out"
            )
        series_of.append(labels.setdefault(lab, len(labels)))
    cols = rows.cols
    assert cols.series is not None
    series = np.asarray(series_of, dtype=np.int64)[cols.series] if len(cols) else cols.series
    out = SeriesRows(grid, list(labels), series.astype(np.int64), cell, cols)
    out.check_size()
    return out
