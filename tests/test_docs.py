"""Docs that a test keeps complete: self-metrics, error codes, reject reasons, PromQL."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from statsd_gateway import errors, protocol
from statsd_gateway.aggregator import AGGREGATOR_REJECT_REASONS
from statsd_gateway.api.openapi_prometheus import ERROR_TYPES
from statsd_gateway.exporter.families import DROP_REASONS
from statsd_gateway.mapping import MAPPING_REJECT_REASONS
from statsd_gateway.promql.evaluate import SUPPORTED_FUNCTIONS
from statsd_gateway.promql.syntax import AGGREGATIONS
from statsd_gateway.telemetry import METRICS, PREFIX, Telemetry

# The docs against the code's own tables, with nothing on the ingest path run: the same in
# both passes, skipped in the pure-Python one (tests/conftest.py).
pytestmark = pytest.mark.same_in_both_passes

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_self_metric_is_documented(name: str) -> None:
    assert f"`{PREFIX}{name}`" in (DOCS / "METRICS.md").read_text()


def test_every_exported_metric_is_in_the_list() -> None:
    text = Telemetry().render().decode()
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}
    documented = {PREFIX + n for n in METRICS}
    assert exported == documented


def _error_classes() -> list[type[errors.GatewayError]]:
    return [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.GatewayError)
    ]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_code_is_in_the_api_table(cls: type[errors.GatewayError]) -> None:
    row = f"| `{cls.code}` | {cls.status} |"
    assert row in (DOCS / "API.md").read_text()


@pytest.mark.parametrize(
    "reason",
    [
        *protocol.REJECT_REASONS,
        *AGGREGATOR_REJECT_REASONS,
        *MAPPING_REJECT_REASONS,
        "internal_error",
    ],
)
def test_every_udp_reject_reason_is_documented(reason: str) -> None:
    assert f"| `{reason}` |" in (DOCS / "STATSD.md").read_text()


@pytest.mark.parametrize("construct", [*SUPPORTED_FUNCTIONS, *AGGREGATIONS])
def test_every_promql_construct_is_in_the_table(construct: str) -> None:
    table = [
        line for line in (DOCS / "PROMETHEUS.md").read_text().splitlines() if "| yes |" in line
    ]
    assert any(f"`{construct}`" in line for line in table), construct


@pytest.mark.parametrize("error_type", sorted({*ERROR_TYPES.values(), "timeout"}))
def test_every_prometheus_error_type_is_documented(error_type: str) -> None:
    assert f"| `{error_type}` |" in (DOCS / "PROMETHEUS.md").read_text()


@pytest.mark.parametrize("reason", DROP_REASONS)
def test_every_scrape_drop_reason_is_documented(reason: str) -> None:
    row = next(
        line
        for line in (DOCS / "METRICS.md").read_text().splitlines()
        if line.startswith("| `statsd_gateway_exporter_dropped_series_total` |")
    )
    assert f"`{reason}`" in row


def test_the_scrape_counts_no_reason_outside_the_list() -> None:
    exporter = Path(__file__).parent.parent / "statsd_gateway" / "exporter"
    used = {
        m for f in exporter.glob("*.py") for m in re.findall(r'dropped\["(\w+)"\]', f.read_text())
    }
    assert used and used <= set(DROP_REASONS), used - set(DROP_REASONS)
