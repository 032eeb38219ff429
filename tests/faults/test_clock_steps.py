"""Steps of the wall clock (NTP, a VM resumed, an operator's `date -s`), minutes backward or
forward, while the daemon runs: no crash, nothing counted twice, no interval lost, flushing
carries on.

Before: after a failed write, a backward step kept the flusher in its backoff for as long as the
step (minutes, with /readyz 503); and an absolute gauge value received after a backward step did
not become the current value, so the deltas after it applied to the value from before the step.
"""

from __future__ import annotations

import email.utils
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from statsd_gateway.config import Config
from statsd_gateway.store.base import FlushWrite
from statsd_gateway.store.sqlite import StoreError
from tests.conftest import (
    T0,
    Api,
    ManualClock,
    missing_prerequisite,
    running,
    send_udp,
    wait_for_udp,
)
from tests.daemon import Daemon, fresh_config, generated_key, poll_until, poll_value

STEP = 300.0  # five minutes


async def total(api: Api, name: str, agg: str = "sum", window: str | None = None) -> float:
    params: dict[str, Any] = {"name": name, "agg": agg, "since": int(T0 - 3600)}
    params["until"] = int(T0 + 3600)
    if window is not None:
        params["window"] = window
    status, body = await api.query(**params)
    assert status == 200, body
    return float(sum(p["value"] for p in body["points"]))


async def send(gw: Any, datagram: bytes, sent: list[int]) -> None:
    sent[0] += 1
    send_udp(gw, datagram)
    await wait_for_udp(gw, sent[0])


@pytest.mark.parametrize("step", [-STEP, STEP], ids=["backward", "forward"])
async def test_a_clock_step_neither_doubles_nor_loses_points(
    config: Config, clock: ManualClock, step: float
) -> None:
    sent = [0]
    async with running(config, clock) as (gw, api):
        for _ in range(7):  # a minute and more of flushes, so coarse buckets are complete
            await send(gw, b"c.n:1|c\nc.t:5|ms", sent)
            clock.advance(10)
            assert await gw.flusher.flush()
        until_before = dict(gw.flusher.rollup.complete_until) if gw.flusher.rollup else {}
        clock.advance(step)
        for _ in range(7):  # lands in buckets already written (backward) or skips ahead
            await send(gw, b"c.n:1|c\nc.t:5|ms", sent)
            clock.advance(10)
            assert await gw.flusher.flush()
        assert gw.readiness() == []
        assert gw.flusher.rollup is not None
        for res, until in until_before.items():  # never moves back
            assert gw.flusher.rollup.complete_until[res] >= until
        for window in (None, "10s", "1m", "1h"):
            assert await total(api, "c.n", window=window) == 14, window
            assert await total(api, "c.t", "count", window=window) == 14, window
    async with running(config, clock) as (gw, api):  # and as stored, after a restart
        for window in (None, "1m", "1h"):
            assert await total(api, "c.n", window=window) == 14, window


async def test_a_backward_step_does_not_stretch_the_backoff_of_a_failed_flush(
    config: Config, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = [0]
    async with running(config, clock) as (gw, api):
        real = gw.store.write_flush
        down = [True]

        async def write_flush(flush: FlushWrite, *, trial: bool = False) -> bool:
            if down[0]:
                raise StoreError("write failed: disk I/O error")
            return await real(flush, trial=trial)

        monkeypatch.setattr(gw.store, "write_flush", write_flush)
        await send(gw, b"b.n:1|c", sent)
        assert not await gw.flusher.flush()  # backs off for one interval
        down[0] = False
        clock.advance(-STEP)
        await send(gw, b"b.n:1|c", sent)
        clock.advance(10)
        assert await gw.flusher.flush()  # not five minutes later
        assert gw.readiness() == []
        assert await total(api, "b.n") == 2


async def test_a_gauge_value_received_after_a_backward_step_is_the_current_one(
    config: Config, clock: ManualClock
) -> None:
    sent = [0]
    async with running(config, clock) as (gw, api):
        await send(gw, b"s.g:10|g", sent)
        clock.advance(10)
        assert await gw.flusher.flush()
        clock.advance(-STEP)
        await send(gw, b"s.g:3|g", sent)
        await send(gw, b"s.g:+1|g", sent)
        _, q = await api.query(name="s.g", agg="last", since=int(clock() - 5))
        assert q["points"][0]["value"] == 4, q
        assert await gw.flusher.flush()
    async with running(config, clock) as (gw, api):  # and so it is stored
        await send(gw, b"s.g:+1|g", [0])
        _, q = await api.query(name="s.g", agg="last", since=int(clock() - 5))
        assert q["points"][0]["value"] == 5, q


# Adds the offset (seconds, a decimal number) in the file $CLOCK_SHIFT_FILE to the wall clock the
# process reads: CLOCK_REALTIME (and its coarse variant), gettimeofday, time. The monotonic
# clocks are left alone, as an NTP step leaves them (libfaketime moves them too).
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long offset_ns(void) {
    const char *path = getenv("CLOCK_SHIFT_FILE");
    char buf[64];
    int fd, n;
    if (!path || (fd = open(path, O_RDONLY)) < 0) return 0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    return (long long)(strtod(buf, 0) * 1e9);
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(clk, ts);
    if (r == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        long long t = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + offset_ns();
        ts->tv_sec = t / 1000000000LL;
        ts->tv_nsec = t % 1000000000LL;
    }
    return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return -1;
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
"""


def build_shim(tmp_path: Path) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        missing_prerequisite("no C compiler (apt-get install gcc libc6-dev)")
    src = tmp_path / "clock_shift.c"
    src.write_text(SHIM, encoding="utf-8")
    lib = tmp_path / "clock_shift.so"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), "-ldl"],
        check=True,
        capture_output=True,
    )
    return lib


def wall_clock_of(d: Daemon) -> float:
    """The daemon's wall clock, as its HTTP `Date` header shows it (whole seconds)."""
    _, _, headers = d.request("GET", "/healthz", None)
    return email.utils.parsedate_to_datetime(headers["Date"]).timestamp()


def wait_ready(d: Daemon) -> None:
    last: list[Any] = []

    def ready() -> bool | None:
        status, body, _ = d.request("GET", "/readyz", None)
        last[:] = [status, body]
        return True if status == 200 else None

    poll_until(ready, lambda: f"/readyz stayed {last}\n{d.stderr}")


def test_the_daemon_rides_out_wall_clock_steps_backward_and_forward(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    lib = build_shim(tmp_path)
    shift = tmp_path / "shift"
    shift.write_text("0", encoding="utf-8")
    path, state = fresh_config(tmp_path)
    d = Daemon(path, env={"LD_PRELOAD": str(lib), "CLOCK_SHIFT_FILE": str(shift)})
    daemons.append(d)
    key = generated_key(state)
    span = {"since": int(time.time() - 3600), "until": int(time.time() + 3600)}
    sent = 0
    for offset in (0.0, -STEP, 0.0, STEP):  # back five minutes, forward five, forward five
        shift.write_text(repr(offset), encoding="utf-8")
        assert abs(wall_clock_of(d) - (time.time() + offset)) < 3  # the shim moved its clock
        for _ in range(3):
            d.send_udp(b"e.n:1|c\ne.t:5|ms")
            sent += 1
        d.send_udp(b"e.g:%d|g" % sent)
        d.send_udp(b"e.g:+1|g")
        for window in ("1m", "1h"):
            poll_total(d, key, sent, name="e.n", agg="sum", window=window, **span)
        poll_total(d, key, sent, name="e.t", agg="count", window="10s", **span)
        poll_value(d, key, sent + 1, name="e.g", agg="last", since=int(wall_clock_of(d) - 5))
        wait_ready(d)
    assert "Traceback" not in d.stderr
    assert "flush failed" not in d.stderr
    assert d.terminate() == 0
    again = Daemon(path)  # what it stored, on a clock that never moved
    daemons.append(again)
    for window in ("1m", "1h"):
        poll_total(again, key, sent, name="e.n", agg="sum", window=window, **span)


def poll_total(d: Daemon, key: str, want: float, **params: Any) -> None:
    """Polls the query until the sum of its points equals `want` (more fails at once)."""
    last: list[Any] = []

    def reached() -> bool | None:
        status, body = d.query(key, **params)
        if status == 404:  # not known yet: the reader thread admits a new series on its own
            last[:] = [body]
            return None
        assert status == 200, body
        got = sum(p["value"] for p in body["points"])
        assert got <= want, f"{params}: {got} > {want}, counted twice: {body}"
        last[:] = [body]
        return True if got == want else None

    poll_until(reached, lambda: f"{params} never reached {want}: last answer {last}\n{d.stderr}")
