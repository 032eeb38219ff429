"""Connecting to the PostgreSQL store: the options every connection carries, the DSN as
messages show it (never a password), and this process's hold on its source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from statsd_gateway.errors import StoreError
from statsd_gateway.store.pg_schema import SOURCE_LOCK
from statsd_gateway.store.schema import SchemaError


def safe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unparsable DSN)"
    params.pop("password", None)
    params.pop("sslpassword", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


def connection_options(
    dsn: str,
    source: str,
    *,
    statement_timeout: float,
    connect_timeout: float,
    password_file: str | None,
) -> dict[str, Any]:
    """The keyword arguments of every connection to the store at `dsn`."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    # The statement timeout joins whatever options the DSN sets (a search_path, say).
    options = f"{params.get('options') or ''} -c statement_timeout="
    options += str(round(statement_timeout * 1000))
    kwargs: dict[str, Any] = {
        "connect_timeout": max(1, round(connect_timeout)),
        "options": options.strip(),
        "application_name": f"statsd-gateway {source}"[:63],
        # No server-side prepared statements: PgBouncer's transaction pooling (the scale
        # plan in docs/OPERATIONS.md) hands each transaction another server connection.
        "prepare_threshold": None,
    }
    if password_file is not None:
        kwargs["password"] = Path(password_file).read_text().strip()
    return kwargs


async def hold_source(
    dsn: str, options: dict[str, Any], source_id: int, source: str
) -> psycopg.AsyncConnection:
    """A connection of its own holding the source's session advisory lock, for as long as this
    process writes as `source`; refuses (SchemaError) when another process holds it: two
    gateways writing as one source would each skip the other's snapshots as stored already."""
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, **options)
        try:
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (SOURCE_LOCK, source_id)
            )
            taken = (await cur.fetchone() or (False,))[0]
        except BaseException:
            await conn.close()
            raise
    except psycopg.Error as e:
        raise StoreError(f"PostgreSQL at {safe_dsn(dsn)}: {e}") from None
    if not taken:
        await conn.close()
        raise SchemaError(
            f"another gateway is running as source {source!r} on this database: give "
            "each gateway its own storage.postgresql.source"
        )
    return conn
