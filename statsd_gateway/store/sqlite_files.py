"""The SQLite database file: opened (created beside its path and renamed into place, migrated,
its pragmas set), identified (device and inode, to notice it removed or replaced), checkpointed,
and what an operator does when it is damaged. Writer thread only, like sqlite_writer.py."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from statsd_gateway.errors import StoreError
from statsd_gateway.store.schema import (
    DamagedDatabase,
    SchemaError,
    check_file,
    ensure_tier_table,
    migrate,
)
from statsd_gateway.store.sqlite_reads import complete_key

log = logging.getLogger(__name__)


def open_database(
    path: Path, resolutions: Sequence[float], sketch_format: str
) -> sqlite3.Connection:
    """The write connection to the database at `path`, created if missing, migrated, with a
    table per tier; a file that is not ours or damaged raises StoreError saying what to do."""
    conn: sqlite3.Connection | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_file(path)
        if not path.exists():
            _create(path, sketch_format)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        migrate(conn, sketch_format)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL, not NORMAL: the HTTP write-ahead log is deleted once a flush commits, so a
        # commit must survive a power cut too (one more fsync per flush).
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # Checkpointer runs them after commits
        for i, res in enumerate(resolutions):
            ensure_tier_table(conn, res, time_major=i == 0)
            if i:
                conn.execute("INSERT OR IGNORE INTO meta VALUES (?, '0')", (complete_key(res),))
    except (sqlite3.DatabaseError, SchemaError, OSError) as e:
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        damaged = isinstance(e, DamagedDatabase) or getattr(e, "sqlite_errorname", "") in (
            "SQLITE_CORRUPT",
            "SQLITE_NOTADB",
        )
        how = f" {recovery_steps(path)}" if damaged else ""
        raise StoreError(f"cannot open the database {path}: {e}.{how}") from None
    return conn


def _create(path: Path, sketch_format: str) -> None:
    """A new database is built beside its path and renamed into place: a crash midway
    leaves no empty or half-made file at the path (which the next start would refuse)."""
    tmp = path.with_name(path.name + ".new")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
        leftover.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        migrate(conn, sketch_format)
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def give_back_free_pages(conn: sqlite3.Connection, pages: int) -> None:
    """Gives up to `pages` free pages back to the file system (incremental vacuum). Through
    executescript: the pragma frees one page each time its statement is stepped, and
    `execute` steps a statement that returns no columns once (one page a call)."""
    conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")


def recovery_steps(path: Path) -> str:
    """What an operator does about a damaged database file (the daemon never replaces it)."""
    return (
        f"The daemon has left the file as it is and will not start on it. To recover: stop it "
        f"from restarting, copy {path} (and {path}-wal if present) somewhere safe, then either "
        f"salvage what SQLite can still read, `sqlite3 {path} .recover | sqlite3 {path}.recovered` "
        f"and move {path}.recovered to {path}, or move {path} aside to start with an empty "
        f"store (its history is then lost). HTTP points not yet flushed stay in the "
        f"write-ahead log and are replayed at the next start"
    )


def file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class Checkpointer:
    """Passive WAL checkpoints of the database at `path` (copying committed frames into the
    file, so SQLite's WAL can start over), on a thread of their own, requested after each
    commit instead of run inside the commit that crosses SQLite's threshold (which would put
    them on a flush). Passive: never blocks the writer or readers, and skips frames a reader
    still needs. At most one waits at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._queued = False
        self._generation = 0  # of the file its connection is to

    def request(self, generation: int) -> None:
        """Queues a checkpoint of the file of `generation` (the writer's: bumped when the path
        is reopened), unless one is queued already."""
        if self._queued:
            return
        self._queued = True
        try:
            self._thread.submit(self._checkpoint, generation)
        except RuntimeError:  # shutting down: the next open replays what is left in the WAL
            self._queued = False

    def wait(self) -> None:
        """Until the checkpoint queued now has run (tests)."""
        self._thread.submit(lambda: None).result()

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _checkpoint(self, generation: int) -> None:
        self._queued = False
        try:
            if self._conn is not None and self._generation != generation:
                self._conn.close()
                self._conn = None
            if self._conn is None:
                self._generation = generation
                self._conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
                self._conn.execute("PRAGMA busy_timeout=1000")
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:
            log.warning("WAL checkpoint failed (retried after the next write): %s", e)
