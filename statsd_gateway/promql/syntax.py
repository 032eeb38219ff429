"""PromQL text → our expression tree: parsed by `promql-parser` (the Rust parser of GreptimeDB,
as Prometheus parses), then translated into the small frozen nodes below, which the evaluator
walks. A syntax error is InvalidArgument (the API's `bad_data`); a construct that parses but
that the evaluator does not implement (subqueries, `topk`, `group_left`, …) is Unprocessable
(`execution`, 422) naming it, here, before anything is read: never a wrong answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import promql_parser

from statsd_gateway.errors import InvalidArgument, Unprocessable


@dataclass(frozen=True, slots=True)
class Number:
    value: float


@dataclass(frozen=True, slots=True)
class String:
    value: str


@dataclass(frozen=True, slots=True)
class LabelMatch:
    label: str
    op: str  # "=", "!=", "=~", "!~"
    value: str


@dataclass(frozen=True, slots=True, eq=False)
class Selector:
    """An instant vector selector. `at`: a fixed evaluation time (seconds), "start" or "end"
    (the query's), or None (each step's own time); `offset` seconds back from it."""

    name: str | None
    matchers: tuple[LabelMatch, ...]
    offset: float = 0.0
    at: float | str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Range:
    """A range vector selector, `selector[seconds]`."""

    selector: Selector
    seconds: float


@dataclass(frozen=True, slots=True)
class Call:
    func: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Aggregate:
    """`op by (labels)` (without=False) or `op without (labels)`; `by` None: neither given."""

    op: str
    expr: Node
    by: tuple[str, ...] | None
    without: bool


@dataclass(frozen=True, slots=True)
class Binary:
    """`lhs op rhs`; `on` / `ignoring` the matching labels (at most one is set); `keep_bool`
    a comparison's `bool` modifier."""

    op: str
    lhs: Node
    rhs: Node
    on: tuple[str, ...] | None = None
    ignoring: tuple[str, ...] | None = None
    keep_bool: bool = False


@dataclass(frozen=True, slots=True)
class Negate:
    expr: Node


Node = Number | String | Selector | Range | Call | Aggregate | Binary | Negate

ARITHMETIC = ("+", "-", "*", "/", "%", "^")
COMPARISONS = ("==", "!=", ">", "<", ">=", "<=")
AGGREGATIONS = ("sum", "avg", "min", "max", "count")
_MATCH_OPS = {
    "MatchOp.Equal": "=",
    "MatchOp.NotEqual": "!=",
    "MatchOp.Re": "=~",
    "MatchOp.NotRe": "!~",
}


# Bounds on a query's text before the parser sees it: its parser recurses per nesting level
# and per operator (and overflows the stack on about 10,000 of them, killing the process), so
# a query may hold at most MAX_OPERATORS operators and brackets outside its strings, nested at
# most MAX_DEPTH deep, in MAX_QUERY_BYTES. Long label regexes (a Grafana variable's
# `host=~"a|b|…"`) are strings and cost nothing here.
MAX_QUERY_BYTES = 256 * 1024
MAX_OPERATORS = 1000
MAX_DEPTH = 100
_OPERATOR_CHARS = frozenset("+-*/%^<>=!(){}[],")
# What a time in a query (`@ t`) or a parameter may be: the years 1 to 9999, as Prometheus'.
MIN_TIME, MAX_TIME = -62135596800.0, 253402300799.0


def parse(text: str) -> Node:
    """The tree of a PromQL expression, or InvalidArgument (syntax, or a query beyond the
    bounds above) / Unprocessable (a construct we do not evaluate)."""
    if not text.strip():
        raise InvalidArgument("the query is empty", "query")
    _check_size(text)
    try:
        return _node(promql_parser.parse(text))
    except (InvalidArgument, Unprocessable):
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        raise InvalidArgument(f"parse error: {e}", "query") from None


def _check_size(text: str) -> None:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_QUERY_BYTES:
        raise InvalidArgument(f"the query is longer than {MAX_QUERY_BYTES} bytes", "query")
    depth = operators = 0
    quote = ""
    escaped = False
    for ch in text:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote != "`":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'`":
            quote = ch
        elif ch in _OPERATOR_CHARS:
            operators += 1
            depth += ch in "([{"
            depth -= ch in ")]}"
            if depth > MAX_DEPTH or operators > MAX_OPERATORS:
                raise InvalidArgument(
                    f"the query nests more than {MAX_DEPTH} deep or holds more than "
                    f"{MAX_OPERATORS} operators and brackets",
                    "query",
                )


def parse_selector(text: str) -> Selector:
    """A series selector (the `match[]` of /series and /labels)."""
    node = parse(text)
    if not isinstance(node, Selector):
        raise InvalidArgument(f"match[] must be a series selector, not {text!r}", "match[]")
    return node


def seconds_of(delta: timedelta) -> float:
    return delta.total_seconds()


def _node(e: promql_parser.Expr) -> Node:
    if isinstance(e, promql_parser.ParenExpr):
        return _node(e.expr)
    if isinstance(e, promql_parser.NumberLiteral):
        return Number(float(e.val))
    if isinstance(e, promql_parser.StringLiteral):
        return String(e.val)
    if isinstance(e, promql_parser.VectorSelector):
        return _selector(e)
    if isinstance(e, promql_parser.MatrixSelector):
        return Range(_selector(e.vector_selector), seconds_of(e.range))
    if isinstance(e, promql_parser.UnaryExpr):
        return Negate(_node(e.expr))
    if isinstance(e, promql_parser.Call):
        return Call(e.func.name, tuple(_node(a) for a in e.args))
    if isinstance(e, promql_parser.AggregateExpr):
        return _aggregate(e)
    if isinstance(e, promql_parser.BinaryExpr):
        return _binary(e)
    if isinstance(e, promql_parser.SubqueryExpr):
        raise Unprocessable("subqueries (expr[range:step]) are not supported")
    raise Unprocessable(f"{type(e).__name__} expressions are not supported")


def _selector(e: promql_parser.VectorSelector) -> Selector:
    matchers = tuple(
        LabelMatch(m.name, _MATCH_OPS[str(m.op)], m.value) for m in e.matchers.matchers
    )
    if e.matchers.or_matchers:
        raise Unprocessable("`or` inside a selector's braces is not supported")
    at: float | str | None = None
    if e.at is not None:
        kind = str(e.at.type)
        if kind.endswith("Start"):
            at = "start"
        elif kind.endswith("End"):
            at = "end"
        else:
            stamp = e.at.at
            assert isinstance(stamp, datetime)  # promql-parser gives @ <time> as a datetime
            at = stamp.timestamp()
            if not MIN_TIME <= at <= MAX_TIME:
                raise InvalidArgument(f"@ {at:g} is outside the years 1 to 9999", "query")
    offset = seconds_of(e.offset) if e.offset is not None else 0.0
    return Selector(e.name, matchers, offset, at)


def _aggregate(e: promql_parser.AggregateExpr) -> Aggregate:
    op = str(e.op)
    if op not in AGGREGATIONS:
        raise Unprocessable(
            f"the aggregation {op}() is not supported (supported: {', '.join(AGGREGATIONS)})"
        )
    by: tuple[str, ...] | None = None
    without = False
    if e.modifier is not None:
        by = tuple(e.modifier.labels)
        without = str(e.modifier.type).endswith("Without")
    return Aggregate(op, _node(e.expr), by, without)


def _binary(e: promql_parser.BinaryExpr) -> Binary:
    op = str(e.op)
    if op not in ARITHMETIC + COMPARISONS:
        raise Unprocessable(f"the binary operator {op} is not supported")
    on = ignoring = None
    keep_bool = False
    m = e.modifier
    if m is not None:
        keep_bool = bool(m.return_bool)
        if not str(m.card).endswith("OneToOne"):
            raise Unprocessable(
                "group_left and group_right (many-to-one matching) are not supported"
            )
        if m.matching is not None:
            labels = tuple(m.matching.labels)
            if str(m.matching.type).endswith("Include"):
                on = labels
            else:
                ignoring = labels
    if keep_bool and op not in COMPARISONS:
        raise InvalidArgument("bool modifier can only be used on comparison operators", "query")
    return Binary(op, _node(e.lhs), _node(e.rhs), on, ignoring, keep_bool)


def is_finite_number(node: Node) -> bool:
    return isinstance(node, Number) and math.isfinite(node.value)
