"""The HTTP write-ahead log: a 200 from report or batch means its points survive `kill -9`.

- Accepted points (and idempotency records) are appended, tagged with the seq of the snapshot
  that holds them, to one segment file per seq: `<dir>/<seq>.log`.
- One worker thread writes and fsyncs. Group commit: it takes every entry waiting at that moment,
  writes them, fsyncs each touched segment once, then answers all their waiters.
- `barrier()` resolves once everything appended before it is on disk; a handler awaits it before
  answering 200.
- After the store commits snapshot `seq`, `release_upto(seq)` deletes segments <= seq, in order
  behind every append already queued.
- The worker checks, at every group commit, that the directory and each open segment are still
  the files it opened (same device and inode). Removed or replaced, every write fails (the
  waiters get WalError: 503) and `problem` says why, until the directory's parent exists again:
  then it makes a new directory and goes on (what the old segments held is in memory, written
  by the next flush).
- A barrier answers an error only if a record before it is not on disk, and then none of the
  records its batch wrote is left in the log (cut back to what the batch found): a 503 says
  nothing was applied, and a crash must not replay it either.
- If the worker thread dies for any reason (a bug, not only a failed write), the batch it died
  in is answered and cut back as a failed one, `problem` says so (/readyz: 503) and every
  barrier after it fails at once.
- At start, `replay()` returns what the segments not yet in the store hold. The records before
  a torn or corrupt one are replayed; from it to the end of its segment nothing is, and replay
  logs the segment and the bytes dropped and counts them (`dropped_bytes`). Nothing after a bad
  record is trusted: its length prefix may be what is damaged, so the next record's start is
  unknown. A crash mid-write only ever tears the tail (every segment is appended to by one
  writer, which cuts a failed write back to the last fsync, and a restart appends to new
  segments), so acknowledged records can sit behind a bad one only if the disk corrupted them.

Record format: u32 length (LE), u32 CRC-32 of the payload, payload = a one-line JSON header,
`\n`, and an optional blob (an HTTP body as received).
UDP is not logged: it is fire-and-forget (DESIGN.md §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_HEADER = struct.Struct("<II")
_STOP = object()
# How long stop() waits for the worker to write what is queued (a hung disk must not hold a
# shutdown past the service manager's stop timeout).
STOP_TIMEOUT = 5.0


class WalError(Exception):
    pass


def _segment_seq(path: Path) -> int | None:
    stem, dot, ext = path.name.partition(".")
    return int(stem) if dot and ext == "log" and stem.isdigit() else None


def _records(data: bytes) -> tuple[list[tuple[Any, bytes]], int, str]:
    """The intact records of a segment, the bytes from the first bad one on (0 if none), and
    what was wrong with it."""
    out: list[tuple[Any, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + _HEADER.size > len(data):
            return out, len(data) - pos, "a record header cut short"
        length, crc = _HEADER.unpack_from(data, pos)
        payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
        if len(payload) < length:
            return out, len(data) - pos, "a record cut short"
        if zlib.crc32(payload) != crc:
            return out, len(data) - pos, "a record whose checksum does not match"
        header, _, blob = payload.partition(b"\n")
        try:
            out.append((json.loads(header), blob))
        except ValueError:  # checksummed, so written so: not ours, or a bug; never replayable
            return out, len(data) - pos, "a record whose header is not JSON"
        pos += _HEADER.size + length
    return out, 0, ""


class WriteAheadLog:
    """The log of HTTP bodies (see the module's rules): `append` from the loop, `barrier` to wait
    for the disk, `release_upto` once the store holds a seq, `replay` at start, `problem` while
    it cannot write."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._segments: dict[int, _Segment] = {}
        self.synced_batches = 0  # fsync rounds, for tests and self-metrics
        self.dropped_bytes = 0  # torn or corrupt bytes replay() could not read
        self._unreported: Exception | None = None  # a failed write no barrier reported yet
        self._dir_id: tuple[int, int] | None = None
        # Why writes fail right now (the directory is gone, the worker died), or None.
        self.problem: str | None = None
        self._dead = False
        self._dead_lock = threading.Lock()

    def replay(self, flushed_seq: int) -> list[tuple[int, Any, bytes]]:
        """(seq, header, blob) of segments after `flushed_seq`, oldest first; older segments
        are deleted."""
        self.dir.mkdir(parents=True, exist_ok=True)
        out: list[tuple[int, Any, bytes]] = []
        for path in sorted(self.dir.iterdir(), key=lambda p: _segment_seq(p) or -1):
            seq = _segment_seq(path)
            if seq is None:
                continue
            if seq <= flushed_seq:
                path.unlink()
                continue
            records, dropped, why = _records(path.read_bytes())
            out.extend((seq, header, blob) for header, blob in records)
            if dropped:
                self.dropped_bytes += dropped
                log.error(
                    "write-ahead log %s: dropped its last %d bytes, from %s on; replayed the %d "
                    "records before it",
                    path,
                    dropped,
                    why,
                    len(records),
                )
        return out

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._dir_id = _file_id(os.stat(self.dir))
        self._thread = threading.Thread(target=self._run, name="http-wal", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Writes what is queued and stops the worker; False if it did not finish in time."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error(
                    "http write-ahead log: the writer did not stop within %gs; "
                    "what it had not written is not in the log",
                    timeout,
                )
                return False
            self._thread = None
        return True

    def append(self, seq: int, header: Any, blob: bytes = b"") -> None:
        """Queues an entry for segment `seq`; call barrier() to wait for it to be on disk."""
        payload = json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + blob
        self._queue.put((seq, _HEADER.pack(len(payload), zlib.crc32(payload)) + payload))

    def barrier(self) -> asyncio.Future[None]:
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        with self._dead_lock:  # the worker's last act drains the queue under this lock
            if self._dead:
                fut.set_exception(WalError(f"the write-ahead log is not written: {self.problem}"))
            else:
                self._queue.put(fut)
        return fut

    def release_upto(self, seq: int) -> None:
        self._queue.put(("release", seq))

    # -- worker thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop_rounds()
        except BaseException as e:
            self.problem = _died(e)
            log.exception("http write-ahead log: the writer thread died")
        finally:
            with self._dead_lock:
                self._dead = True
                self.problem = self.problem or "the write-ahead log is stopped"
                left: list[asyncio.Future[None]] = []
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, asyncio.Future):
                        left.append(item)
            if left and self._loop is not None and not self._loop.is_closed():
                error = WalError(self.problem)
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    self._loop.call_soon_threadsafe(_settle, left, error)

    def _loop_rounds(self) -> None:
        while True:
            items = [self._queue.get()]
            while True:  # group commit: everything queued right now shares one fsync
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(i is _STOP for i in items)
            batch = [i for i in items if i is not _STOP]
            try:
                self._process(batch)
            except BaseException as e:  # its waiters are answered before the thread dies
                # ...with a 503 that says nothing was applied: what this batch wrote must not
                # be replayed after a crash either. Said in `problem` first, so that a client
                # told of the death sees it in /readyz.
                self.problem = _died(e)
                try:
                    self._undo_batch()
                except Exception:
                    log.exception("http write-ahead log: cannot cut back the last batch")
                assert self._loop is not None
                waiters = [i for i in batch if isinstance(i, asyncio.Future)]
                error = WalError(f"the write-ahead log writer failed: {type(e).__name__}: {e}")
                with contextlib.suppress(RuntimeError):  # those _process answered stay answered
                    self._loop.call_soon_threadsafe(_settle, waiters, error)
                raise
            if stop:
                self._close_older_than(2**63)
                return

    def _check_in_place(self) -> OSError | None:
        """None if the directory and the open segments are the files this log opened. Gone,
        the log starts afresh once the directory's parent exists again (restored by the
        operator); until then an error for every write."""
        why = self._moved()
        if why is None:
            return None
        if self.problem is None:
            log.error(
                "http write-ahead log: %s was %s while running: HTTP writes are refused "
                "(503) until it is back; the points it held are in memory until the next flush",
                self.dir,
                why,
            )
        self.problem = f"the write-ahead log directory {self.dir} was {why}"
        if not self.dir.parent.is_dir():
            return FileNotFoundError(2, self.problem)
        try:
            self._close_older_than(2**63)
            self.dir.mkdir(exist_ok=True)
            self._dir_id = _file_id(os.stat(self.dir))
        except OSError as e:
            return e
        log.warning("http write-ahead log: made a new %s; HTTP writes are accepted", self.dir)
        self.problem = None
        return None

    def _moved(self) -> str | None:
        try:
            if _file_id(os.stat(self.dir)) != self._dir_id:
                return "replaced"
            for seq, seg in self._segments.items():
                if _file_id(os.stat(self.dir / f"{seq:012d}.log")) != _file_id(os.fstat(seg.fd)):
                    return "replaced"
        except FileNotFoundError:
            return "removed"
        return None

    def _process(self, items: list[Any]) -> None:
        for seg in self._segments.values():
            seg.batch_start = seg.synced
        waiters: list[asyncio.Future[None]] = []
        dirty: set[int] = set()
        # A record and the barrier its request awaits may fall in different batches: a failure
        # no waiter has heard of yet fails this batch too (and writes none of it), so a barrier
        # never reports success for a record that was cut back.
        error: Exception | None = self._check_in_place() or self._unreported
        # The waiters ahead of this batch's first record wait for earlier batches (and the
        # releases before them) only: they are answered as those came out, before any of this
        # batch is written, whatever becomes of it.
        ahead: list[asyncio.Future[None]] = []
        records = False
        records_after_last_waiter = False
        for item in items:
            if isinstance(item, asyncio.Future):
                (waiters if records else ahead).append(item)
                records_after_last_waiter = False
                continue
            if not records and item[0] != "release":
                records = True
                self._answer(ahead, error)
            if item[0] == "release":
                error = error or self._sync(dirty)
                dirty.clear()
                self._release(item[1])
            elif error is not None:  # after a failure the batch's waiters all get it: stop writing
                records_after_last_waiter = True
            else:
                records_after_last_waiter = True
                seq, record = item
                try:
                    self._write(seq, record)
                    dirty.add(seq)
                except OSError as e:
                    log.error("http write-ahead log: write failed: %s", e)
                    error = e
        error = error or self._sync(dirty)
        if error is not None:
            self._undo_batch()
        # Records past the last waiter were cut back (or never written): their barriers are
        # still to come. A batch of releases alone leaves nothing to report.
        self._unreported = error if records_after_last_waiter else None
        self._close_older_than(max(self._segments, default=0))
        if waiters or ahead:
            self.synced_batches += 1
        if not records:
            self._answer(ahead, error)
        self._answer(waiters, error)

    def _answer(self, waiters: list[asyncio.Future[None]], error: Exception | None) -> None:
        if waiters:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_settle, waiters, error)

    def _write(self, seq: int, record: bytes) -> None:
        seg = self._segments.get(seq)
        if seg is None:
            path = self.dir / f"{seq:012d}.log"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            size = os.fstat(fd).st_size
            seg = self._segments[seq] = _Segment(fd, size, size)
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)  # the new file's directory entry must survive a crash too
            finally:
                os.close(dfd)
        view = memoryview(record)
        while view:
            view = view[os.write(seg.fd, view) :]

    def _sync(self, seqs: set[int]) -> Exception | None:
        try:
            for seq in seqs:
                seg = self._segments[seq]
                os.fsync(seg.fd)
                seg.synced = os.fstat(seg.fd).st_size
        except OSError as e:
            log.error("http write-ahead log: fsync failed: %s", e)
            return e
        return None

    def _undo_batch(self) -> None:
        """Cuts every segment back to what it held before this batch, whose waiters all get an
        error: a record half written never hides the ones acknowledged after it (replay stops
        at the first bad record), and a record whose request was told nothing was applied is
        never replayed (one segment may have been synced before another failed)."""
        for seg in self._segments.values():
            with contextlib.suppress(OSError):
                os.ftruncate(seg.fd, seg.batch_start)
                seg.synced = seg.batch_start

    def _close_older_than(self, seq: int) -> None:
        # Appends target the live interval's seq: once a newer one is in use, older segments
        # get no more, and keeping them open would cost a descriptor per interval.
        for old in [s for s in self._segments if s < seq]:
            os.close(self._segments.pop(old).fd)

    def _release(self, upto: int) -> None:
        for seq in [s for s in self._segments if s <= upto]:
            os.close(self._segments.pop(seq).fd)
        try:
            for path in self.dir.iterdir():
                found = _segment_seq(path)
                if found is not None and found <= upto:
                    path.unlink(missing_ok=True)
        except OSError as e:  # the directory is gone: nothing left to release
            log.warning("http write-ahead log: cannot release segments: %s", e)


def _file_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


@dataclass(slots=True)
class _Segment:
    fd: int
    synced: int  # bytes known to be on disk
    batch_start: int  # bytes before the batch being written, whose waiters are answered


def _died(e: BaseException) -> str:
    return f"the write-ahead log writer died: {type(e).__name__}: {e}"


def _settle(waiters: list[asyncio.Future[None]], error: Exception | None) -> None:
    for w in waiters:
        if w.done():
            continue
        if error is None:
            w.set_result(None)
        else:
            w.set_exception(WalError(f"the write-ahead log could not be written: {error}"))
