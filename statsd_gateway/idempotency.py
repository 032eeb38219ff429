"""Idempotency keys (DESIGN.md §4), per tenant.

- The first request with a key is applied once; its response is recorded.
- A retry with the same key and the same body gets the recorded response, marked replayed, and
  changes nothing. The same key with another body is IDEMPOTENCY_KEY_REUSED.
- Concurrent requests with one key: the later ones wait for the first, then replay it.
- A record goes into the HTTP write-ahead log in the same entry as the points it answers for, and
  into the store in the same transaction as the snapshot that holds them, so it is exactly as
  durable as those points (and survives a restart or a crash with them). If the log cannot be
  written, the request answers 503 and the key is left unused.
  Records are kept at least TTL_SECONDS.
Only successful answers (200, including a batch with some rejected points) are recorded; an
error leaves the key unused so the client can retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from statsd_gateway.errors import IdempotencyKeyInProgress, IdempotencyKeyReused, InvalidArgument
from statsd_gateway.model import is_utf8_text
from statsd_gateway.store.base import IdempotencyRecord, Store

log = logging.getLogger(__name__)

TTL_SECONDS = 25 * 3600.0
KEY_MAX = 200


def body_digest(body: Any) -> str:
    """SHA-256 of the canonical JSON of the body, without its idempotency_key field."""
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "idempotency_key"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a body may hold lone surrogates (JSON's \ud800) that validation refuses
    # later; the digest of valid text is unchanged.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def record_fields(rec: IdempotencyRecord) -> dict[str, Any]:
    return {
        "tenant": rec.tenant,
        "key": rec.key,
        "body_sha256": rec.body_sha256,
        "status": rec.status,
        "response": rec.response,
        "created": rec.created,
    }


def request_key(header: str | None, body: Any) -> str | None:
    """The key from the Idempotency-Key header or the body field; both must agree."""
    field = body.get("idempotency_key") if isinstance(body, dict) else None
    if field is not None and (not isinstance(field, str) or not 0 < len(field) <= KEY_MAX):
        raise InvalidArgument(
            f"idempotency_key must be a string of 1-{KEY_MAX} characters", "idempotency_key"
        )
    if field is not None and not is_utf8_text(field):
        raise InvalidArgument("idempotency_key must be valid Unicode", "idempotency_key")
    for given, what in ((field, "idempotency_key"), (header, "Idempotency-Key")):
        if given is not None and "\x00" in given:  # no store's text holds U+0000 alike
            raise InvalidArgument(f"{what} must not contain U+0000", what)
    if header is not None and not 0 < len(header) <= KEY_MAX:
        raise InvalidArgument(f"Idempotency-Key must be 1-{KEY_MAX} characters", "Idempotency-Key")
    if header is not None and not is_utf8_text(header):
        raise InvalidArgument("Idempotency-Key must be valid UTF-8", "Idempotency-Key")
    if header is not None and field is not None and header != field:
        raise InvalidArgument(
            "the Idempotency-Key header and the idempotency_key field differ", "idempotency_key"
        )
    return header if header is not None else field


class IdempotencyLedger:
    """The idempotency records of a tenant's keys: those answered since the last flush in memory
    (with the seq of the snapshot holding their points), older ones read from the store; a retry
    with a known key and body gets the recorded answer, another body IDEMPOTENCY_KEY_REUSED."""

    def __init__(
        self,
        store: Store,
        next_seq: Callable[[], int],
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.next_seq = next_seq
        self.clock = clock
        self._memory: dict[tuple[str, str], IdempotencyRecord] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._releasing: set[asyncio.Task[None]] = set()

    async def run(
        self,
        tenant: str,
        key: str,
        digest: str,
        apply: Callable[[], dict[str, Any]],
    ) -> tuple[dict[str, Any], bool, IdempotencyRecord | None]:
        """Applies `apply` once per (tenant, key); returns (response body, replayed, the new
        record when this request applied it). The caller logs the record with the points."""
        k = (tenant, key)
        while k in self._inflight:
            await asyncio.shield(self._inflight[k])
        rec = self._memory.get(k)
        if rec is None:
            # Claim the key before reading the store, so a concurrent request waits for us.
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._inflight[k] = done
            try:
                # The seq of the snapshot the points will go in: the next, or the one after if
                # a flush swaps snapshots while the claim is made (a shared store judges a
                # claim abandoned once its gateway has flushed that seq without answering it).
                seq = self.next_seq() + 1
                claim = IdempotencyRecord(tenant, key, digest, 0, "", self.clock(), seq)
                rec = await self.store.claim_idempotency(claim)
                if rec is not None and rec.status == 0:
                    raise IdempotencyKeyInProgress(
                        "a request with this idempotency key is being applied by another "
                        "gateway; retry it in a few seconds",
                        "idempotency_key",
                    )
                if rec is None:
                    try:
                        body = apply()
                    except BaseException:  # an error answers nothing: the key stays unused
                        await self._release(claim)
                        raise
                    rec = IdempotencyRecord(
                        tenant, key, digest, 200, json.dumps(body), self.clock(), self.next_seq()
                    )
                    self._memory[k] = rec
                    return body, False, rec
            finally:
                del self._inflight[k]
                done.set_result(None)
        if rec.body_sha256 != digest:
            raise IdempotencyKeyReused(
                "this idempotency key was used with a different body", "idempotency_key"
            )
        return json.loads(rec.response), True, None

    def discard(self, rec: IdempotencyRecord) -> None:
        """The request's points could not be logged (it answered 503): the key is unused again,
        here and (its claim given up in the background) in a store other gateways share."""
        if self._memory.get((rec.tenant, rec.key)) is rec:
            del self._memory[(rec.tenant, rec.key)]
        task = asyncio.get_running_loop().create_task(self._release(rec))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, rec: IdempotencyRecord) -> None:
        try:
            await self.store.release_idempotency(rec)
        except Exception as e:  # the claim is then taken over once abandoned (the store's rule)
            log.warning("idempotency: the claim on key %r could not be given up: %s", rec.key, e)

    def restore(self, fields: dict[str, Any], seq: int) -> None:
        """A record replayed from the write-ahead log, to be stored with snapshot `seq`."""
        rec = IdempotencyRecord(**{**fields, "seq": seq})
        self._memory[(rec.tenant, rec.key)] = rec

    def records_upto(self, seq: int) -> list[IdempotencyRecord]:
        return [r for r in self._memory.values() if r.seq <= seq]

    def forget(self, records: list[IdempotencyRecord]) -> None:
        for r in records:
            if self._memory.get((r.tenant, r.key)) is r:
                del self._memory[(r.tenant, r.key)]
