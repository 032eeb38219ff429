"""The HTTP write-ahead log's records, re-applied at start: what `WriteAheadLog.replay()` read
from the segments not yet in the store goes back into the aggregator (in the buckets of its
receive time) and the idempotency ledger (with the first new snapshot's seq).

A point or record that does not pass today's validation is reported, counted in
`statsd_gateway_wal_replay_skipped_total` and skipped: one logged before a check existed could
otherwise poison every flush after every start.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from statsd_gateway.api.schemas import parse_point
from statsd_gateway.api.shapes import ReportBody
from statsd_gateway.errors import GatewayError
from statsd_gateway.idempotency import IdempotencyLedger
from statsd_gateway.ingest import Ingest
from statsd_gateway.model import Sample
from statsd_gateway.telemetry import Telemetry

log = logging.getLogger(__name__)


class LogReplay:
    """At start, before any listener: puts what the write-ahead log holds back into the
    aggregator and the idempotency ledger (see the module's rules)."""

    def __init__(
        self, ingest: Ingest, idempotency: IdempotencyLedger, telemetry: Telemetry
    ) -> None:
        self._ingest = ingest
        self._idempotency = idempotency
        self._telemetry = telemetry

    def replay(self, entries: list[tuple[int, Any, bytes]], first_seq: int) -> None:
        """Re-applies the logged HTTP points. A point or record that does not pass today's
        validation (one logged before a check existed could poison every flush) is reported and
        skipped; everything else in its segment is replayed."""
        points = 0
        for seq, header, blob in entries:
            try:
                if header["k"] == "body":
                    samples, bad = samples_from_logged_body(
                        header, blob, self._ingest.parser.sanitise
                    )
                    for i, e in bad:
                        self._skip(seq, f"point {i}: {e}")
                    self._ingest.replay(header["tenant"], samples)
                    points += len(samples)
                    if "idempotency" in header:
                        self._idempotency.restore(header["idempotency"], first_seq)
                elif header["k"] == "idempotency":
                    fields = {k: v for k, v in header.items() if k != "k"}
                    self._idempotency.restore(fields, first_seq)
            except Exception as e:  # a record of a shape this version cannot read
                self._skip(seq, f"record: {type(e).__name__}: {e}")
        if entries:
            log.info("replayed %d HTTP points from the write-ahead log", points)

    def _skip(self, seq: int, what: str) -> None:
        self._telemetry.wal_replay_skipped += 1
        log.error("write-ahead log segment %d: skipped %s", seq, what)


def samples_from_logged_body(
    header: dict[str, Any], blob: bytes, sanitise: Callable[[str], str]
) -> tuple[list[Sample], list[tuple[int, GatewayError]]]:
    """The points of a logged HTTP body that were accepted, each in the bucket of its receive
    time (or its own timestamp), names cleaned by `sanitise`, and (index, error) of those that
    no longer validate."""
    body = json.loads(blob)
    points = [body] if header["form"] == "report" else body["points"]
    keep = header["keep"]
    now = header["now"]
    out: list[Sample] = []
    bad: list[tuple[int, GatewayError]] = []
    for i in range(len(points)) if keep is None else keep:
        try:
            sample = parse_point(points[i], sanitise=sanitise, shape=ReportBody)
        except GatewayError as e:
            bad.append((i, e))
            continue
        out.append(sample if sample.timestamp is not None else sample._replace(timestamp=now))
    return out, bad
