"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary directory, a free loopback
port, started with pg_ctl and removed at the end. Run as the `postgres` user when the tests run
as root (PostgreSQL refuses root). Each test gets a database of its own (`fresh_database`).

Where the server's binaries are missing the tests that need them skip with the install command
(and fail under CI=true, where .ci/run installs Debian's postgresql)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

INSTALL = "apt-get install postgresql"


def server_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are: Debian's versioned directory, else the PATH."""
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(found) / "initdb").exists() and (Path(found) / "pg_ctl").exists():
            return Path(found)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One server on 127.0.0.1:`port`, trust authentication, superuser `postgres`."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        """`durable`: the server's defaults (fsync on), for benchmarks; else fsync off."""
        self.bindir = bindir
        self.durable = durable
        # Not under pytest's tmp_path: that is private to root, and the server may run as
        # `postgres`, which must reach its data directory.
        self.root = Path(tempfile.mkdtemp(prefix="sg-postgres-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def _run(self, *args: str) -> None:
        subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            **self._as,
        )

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")  # fmt: skip
        self.restart()

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Starts the server (again, after `stop`: the same port and data). fsync off: a
        test's cluster is thrown away; nothing here tests the server's own durability."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
        options += "-c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                  "-o", options, "start")  # fmt: skip

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def fresh_database(self) -> str:
        """A new, empty database; its DSN."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


@contextlib.contextmanager
def running_cluster() -> Iterator[PostgresCluster | None]:
    """A started cluster, or None where the binaries are missing."""
    bindir = server_bindir()
    if bindir is None:
        yield None
        return
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
