"""Node's `hot-shots` (npm), the StatsD/DogStatsD client of many Node services, against the
native ingest core over UDP: what it sends is read back through the query API, from memory and
once flushed.

hot-shots is found in $HOT_SHOTS_DIR (a node_modules directory), by default where .ci/run
installs it. Its sampling is its own (`Math.random() <= rate` sends); the script pins the draw so
a sampled call is always sent, and the test checks the daemon scales it by 1/rate.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from statsd_gateway.gateway import Gateway
from tests.conftest import Api, missing_prerequisite, require_native_core
from tests.test_clients import DD_ENV, check_after_flush, no_rejects, value, wait_lines

HOT_SHOTS_DIR = Path(
    os.environ.get(
        "HOT_SHOTS_DIR",
        Path.home() / ".cache" / "statsd-gateway-tests" / "hot-shots" / "node_modules",
    )
)
INSTALL = "npm install --prefix ~/.cache/statsd-gateway-tests/hot-shots hot-shots"

# Two clients: one datagram per call, and one that packs lines into datagrams of up to 1,000
# bytes (sent when full and at close). Each call's line is counted in `lines`; event() and
# check() are DogStatsD's, which the daemon ignores.
SCRIPT = r"""
const StatsD = require(require("path").join(process.argv[2], "hot-shots"));
Math.random = () => 0;
const port = Number(process.argv[3]);
const options = {host: "127.0.0.1", port, includeDataDogTags: false, datadog: false};
const errors = [];
const errorHandler = (e) => errors.push(String(e));
const one = new StatsD({...options, prefix: "hs.", errorHandler});
const packed = new StatsD({
    ...options, prefix: "hsp.", maxBufferSize: 1000, bufferFlushInterval: 60000,
    globalTags: {service: "web"}, errorHandler,
});
let lines = 0;
const sent = [];
function call(client, method, ...args) {
    lines += 1;
    sent.push(new Promise((resolve) => client[method](...args, () => resolve())));
}
for (const c of [one, packed]) {
    call(c, "increment", "hits", 1, 1, []);
    call(c, "increment", "hits", 4, 1, []);
    call(c, "increment", "hits", 2, 0.5, []);  // "hits:2|c|@0.5": 4
    call(c, "decrement", "hits", 1, 1, []);
    call(c, "increment", "req", 1, 1, ["env:prod", "region:eu"]);
    call(c, "increment", "req", 2, 1, {env: "dev"});
    call(c, "timing", "latency", 12.5, 1, []);
    call(c, "timing", "latency", 20, 1, []);
    call(c, "timing", "latency", 7.5, 0.25, []);  // weight 4
    call(c, "gauge", "temp", 20, 1, []);
    call(c, "gaugeDelta", "temp", 5, 1, []);
    call(c, "gaugeDelta", "temp", -3, 1, []);
    call(c, "set", "users", "alice", 1, []);
    call(c, "unique", "users", "bob", 1, []);
    call(c, "set", "users", "alice", 1, []);
    call(c, "histogram", "size", 10, 1, ["canary"]);
    call(c, "histogram", "size", 30, 0.25, ["canary"]);  // weight 4
    call(c, "distribution", "lat", 1.5, 1, ["host:a"]);
    call(c, "distribution", "lat", 2.5, 1, ["host:b"]);
    call(c, "event", "deploy", "version 2 is out", {}, ["env:prod"]);
    call(c, "check", "db.up", c.CHECKS.OK, {}, ["env:prod"]);
}
Promise.all(sent)
    .then(() => Promise.all([one, packed].map((c) => new Promise((r) => c.close(r)))))
    .then(() => console.log(JSON.stringify({lines, errors})));
"""


@pytest.fixture
def node() -> str:
    require_native_core()
    found = shutil.which("node")
    if found is None:
        missing_prerequisite(f"node is not installed (apt-get install nodejs npm; {INSTALL})")
    if not (HOT_SHOTS_DIR / "hot-shots" / "package.json").exists():
        missing_prerequisite(f"hot-shots is not in {HOT_SHOTS_DIR} ({INSTALL})")
    return found


async def run_hot_shots(node: str, tmp_path: Path, gateway: Gateway) -> int:
    """Runs the script against the gateway's UDP port; returns the lines it sent."""
    assert gateway.udp_address is not None
    script = tmp_path / "send.js"
    script.write_text(SCRIPT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in DD_ENV and not k.startswith("DD_")}
    proc = await asyncio.create_subprocess_exec(
        node,
        str(script),
        str(HOT_SHOTS_DIR),
        str(gateway.udp_address[1]),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["errors"] == [], result
    return int(result["lines"])


async def test_hot_shots_udp(node: str, tmp_path: Path, gateway: Gateway, api: Api) -> None:
    lines = await run_hot_shots(node, tmp_path, gateway)
    assert lines == 2 * 21
    await wait_lines(gateway, "udp", lines)
    t = gateway.telemetry
    # One datagram a call for the first client, a few packed ones for the second.
    assert 21 < t.packets["udp"] < 2 * 21, t.packets

    async def check() -> None:
        for p in ("hs.", "hsp."):
            assert await value(api, p + "hits", "sum") == 1 + 4 + 4 - 1
            assert await value(api, p + "hits", "count") == 1 + 1 + 2 + 1
            assert await value(api, p + "req", "sum") == 3
            assert await value(api, p + "req", "sum", tags="env:prod,region:eu") == 1
            assert await value(api, p + "req", "sum", tags="env:dev") == 2
            assert await value(api, p + "latency", "count") == 6
            assert await value(api, p + "latency", "sum") == 12.5 + 20 + 4 * 7.5
            assert await value(api, p + "latency", "min") == 7.5
            assert await value(api, p + "latency", "max") == 20
            assert await value(api, p + "temp", "last") == 22
            assert await value(api, p + "temp", "max") == 25
            assert await value(api, p + "users", "distinct") == 2
            assert await value(api, p + "size", "count", tags="canary:") == 5
            assert await value(api, p + "size", "sum") == 10 + 4 * 30
            assert await value(api, p + "lat", "sum", tags="host:a") == 1.5
            assert await value(api, p + "lat", "avg") == 2
        assert await value(api, "hsp.hits", "sum", tags="service:web") == 8

    await check_after_flush(gateway, check)
    assert t.ignored["event"] == 2
    assert t.ignored["service_check"] == 2
    assert no_rejects(gateway) == {}
