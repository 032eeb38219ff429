"""A listener that cannot bind stops the start with a message naming which listener, its
address and its setting. Before: `cannot start: [Errno 98] Address already in use`."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "statsd_gateway", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("taken", ["udp", "http", "tcp"])
def test_a_port_in_use_names_the_listener_and_address(tmp_path: Path, taken: str) -> None:
    kind = socket.SOCK_DGRAM if taken == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        port = holder.getsockname()[1]
        listen = {k: "127.0.0.1:0" for k in ("udp", "http", "tcp")}
        listen[taken] = f"127.0.0.1:{port}"
        config = tmp_path / "gw.yaml"
        config.write_text(
            f"udp: {{listen: '{listen['udp']}'}}\n"
            f"http: {{listen: '{listen['http']}'}}\n"
            f"tcp: {{enabled: true, listen: '{listen['tcp']}'}}\n"
            f"storage: {{path: '{tmp_path / 'metrics.db'}'}}\n",
            encoding="utf-8",
        )
        r = serve(config)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    want = f"cannot start: {taken} cannot listen on 127.0.0.1:{port} ({taken}.listen): "
    assert want + "address already in use" in r.stderr, r.stderr
