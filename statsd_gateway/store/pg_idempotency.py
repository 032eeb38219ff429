"""Idempotency keys shared by every gateway on one PostgreSQL (the `idempotency` table,
store/pg_schema.py): a request with a key is claimed in the store before it is applied, so that
a retry reaching another gateway waits for the first one's answer instead of applying it again.

A claim (status 0) names the gateway that applies the request and the snapshot that will hold
it; the answer replaces it when that snapshot is flushed (pg_writes.store_idempotency). A claim
left open after its gateway flushed well past that snapshot was abandoned (the gateway stopped
between applying the request and logging it): the next request with the key takes it over.
"""

from __future__ import annotations

import psycopg

from statsd_gateway.store.base import IdempotencyRecord

# How much later (by the claiming gateway's clock) than the claim that gateway must have flushed
# for an open claim to count as abandoned. The grace covers a flush that began before the
# request was applied and committed after, whose snapshot does not hold it (a write runs at
# most statement_timeout).
CLAIM_GRACE = 120.0


async def claim_key(
    conn: psycopg.AsyncConnection, source_id: int, claim: IdempotencyRecord
) -> IdempotencyRecord | None:
    """Claims the key for gateway `source_id`: None when it is this gateway's to apply now,
    else the record that answers for it (an answer, or a claim still being applied)."""
    while True:  # again only if the record expired between the two statements
        async with conn.transaction():
            cur = await conn.execute(
                "INSERT INTO idempotency VALUES (%s, %s, %s, 0, '', %s, %s, %s) "
                "ON CONFLICT (tenant, key) DO NOTHING",
                (claim.tenant, claim.key, claim.body_sha256, claim.created, source_id,
                 claim.seq),
            )  # fmt: skip
            if cur.rowcount == 1:
                return None
            cur = await conn.execute(
                "SELECT i.tenant, i.key, i.body_sha256, i.status, i.response, i.created, "
                "i.seq, i.status = 0 AND s.flushed_seq >= i.seq "
                "AND s.flushed_at >= i.created + %s "
                "FROM idempotency i JOIN sources s ON s.id = i.source_id "
                "WHERE i.tenant = %s AND i.key = %s FOR UPDATE OF i",
                (CLAIM_GRACE, claim.tenant, claim.key),
            )
            row = await cur.fetchone()
            if row is None:
                continue
            *stored, abandoned = row
            if not abandoned:
                return IdempotencyRecord(*stored)
            await conn.execute(
                "UPDATE idempotency SET body_sha256 = %s, created = %s, source_id = %s, "
                "seq = %s WHERE tenant = %s AND key = %s",
                (claim.body_sha256, claim.created, source_id, claim.seq, claim.tenant,
                 claim.key),
            )  # fmt: skip
            return None


async def release_key(
    conn: psycopg.AsyncConnection, source_id: int, claim: IdempotencyRecord
) -> None:
    """Gives up this gateway's open claim (its request failed: the key is unused again)."""
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM idempotency WHERE tenant = %s AND key = %s AND status = 0 "
            "AND source_id = %s",
            (claim.tenant, claim.key, source_id),
        )
