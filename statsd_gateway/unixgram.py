"""Unix datagram socket listener (DogStatsD's default transport): socket file → bounded queue →
ingest, the same path as UDP (see DatagramListener in udp.py).

start() removes a stale socket file left by a daemon that did not stop cleanly, but refuses to
take over a path that is not a socket or that another process is still receiving on. close()
removes the socket file, unless something else has replaced it meanwhile.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path

from statsd_gateway.ingest import Ingest
from statsd_gateway.telemetry import Telemetry
from statsd_gateway.udp import DatagramListener

log = logging.getLogger(__name__)


class UnixgramListener(DatagramListener):
    kind = "unixgram"

    def __init__(
        self,
        ingest: Ingest,
        telemetry: Telemetry,
        *,
        tenant: str,
        queue_size: int,
        mode: int,
    ) -> None:
        super().__init__(ingest, telemetry, tenant=tenant, queue_size=queue_size)
        self.mode = mode
        self.path: str | None = None
        self._inode = 0

    async def start(self, path: str) -> str:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bound = False
        try:
            sock.bind(path)
            bound = True
            # chmod after bind: bind applies the umask, and senders need the write bit.
            os.chmod(path, self.mode)
            self._inode = os.stat(path).st_ino
            await self._open(sock)
        except BaseException:
            sock.close()
            if bound:
                os.unlink(path)
            raise
        self.path = path
        return path

    def close(self) -> None:
        super().close()
        path, self.path = self.path, None
        if path is None:
            return
        try:
            if os.stat(path).st_ino == self._inode:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove the socket file %s: %s", path, e)


def remove_stale_socket(path: str) -> None:
    """Removes a socket file nobody receives on; raises OSError for anything else at `path`."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        log.info("removing the stale socket file %s", path)
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path} is in use by another process")
