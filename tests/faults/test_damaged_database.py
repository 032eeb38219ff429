"""A database file that is cut short, emptied or overwritten: the daemon refuses to start on it,
says which file and how to recover, and leaves the file exactly as it was.

Before: an empty file was taken for a new database (an empty store in place of the history), and
a file cut short at a page boundary opened and failed later."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from statsd_gateway.model import BucketRow, MetricType
from statsd_gateway.store import SqliteStore
from statsd_gateway.store.schema import DamagedDatabase, check_file
from tests.conftest import T0, run_sync, write_rows
from tests.daemon import write_config


def make_database(path: Path) -> bytes:
    """A real database of a few dozen pages, as the store writes it; returns its bytes."""
    store = SqliteStore(path)
    run_sync(store.open())
    rows = [
        BucketRow(T0 + 10 * i, ("default", "a", (("i", str(j)),)), MetricType.COUNTER,
                  1.0, 1.0, 1.0, 1.0, None, None, None, None)
        for i in range(60) for j in range(40)
    ]  # fmt: skip
    run_sync(write_rows(store, rows, 1))
    run_sync(store.close())
    return path.read_bytes()


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "cut mid-page": lambda data: data[: len(data) // 2 + 100],
    "cut at a page boundary": lambda data: data[: 4096 * 3],
    "zero-length": lambda data: b"",
    "garbage header": lambda data: b"\x00garbage\xff" * 10 + data[100:],
    "shorter than the header": lambda data: data[:60],
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_the_daemon_refuses_a_damaged_database_and_leaves_it_untouched(
    tmp_path: Path, damage: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = state / "metrics.db"
    db.write_bytes(DAMAGE[damage](make_database(tmp_path / "good.db")))
    before = db.read_bytes(), db.stat().st_mtime_ns
    config = tmp_path / "gw.yaml"
    write_config(config, state, flush_interval="1s")
    r = subprocess.run(
        [sys.executable, "-m", "statsd_gateway", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert f"cannot start: cannot open the database {db}: " in r.stderr
    assert f"sqlite3 {db} .recover | sqlite3 {db}.recovered" in r.stderr
    assert f"move {db} aside to start with an empty store" in r.stderr
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert sorted(p.name for p in state.iterdir() if p.name.startswith("metrics")) == ["metrics.db"]


def test_a_new_database_is_created_whole_and_reopens(tmp_path: Path) -> None:
    db = tmp_path / "state" / "metrics.db"
    db.parent.mkdir()
    (tmp_path / "state" / "metrics.db.new").write_bytes(b"")  # a crash mid-creation left it
    make_database(db)
    assert sorted(p.name for p in db.parent.iterdir()) == ["metrics.db"]
    store = SqliteStore(db)
    assert len(run_sync(store.open()).series) == 40
    run_sync(store.close())


def test_a_file_shorter_than_its_header_says_is_refused_only_without_a_wal(
    tmp_path: Path,
) -> None:
    """A file cut short is damaged; the same bytes with a -wal beside them are a checkpoint
    midway (another connection copying pages in: the header's page count lands before the
    pages that extend the file), which SQLite reads through the -wal, so the store opens it."""
    data = make_database(tmp_path / "good.db")
    db = tmp_path / "metrics.db"
    db.write_bytes(data[: 4096 * 3])
    with pytest.raises(DamagedDatabase, match="its header counts"):
        check_file(db)
    Path(f"{db}-wal").write_bytes(b"\x37\x7f\x06\x82" + bytes(28))
    check_file(db)  # no error: the page count is not compared while a -wal is there
