"""Real backing services for tests and benchmarks: a throwaway PostgreSQL server on 127.0.0.1.

PostgreSQL's ``initdb`` refuses to run as root, so under root the server runs as the ``postgres``
user (Debian's package creates it) in a temporary folder that user owns.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support import free_port

__all__ = ["PostgresServer", "postgres_bin"]


def postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else the newest versioned Debian folder."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    folders = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name.split(".")[0])
    )
    for folder in reversed(folders):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


class PostgresServer:
    """``initdb`` + ``pg_ctl start`` on a free loopback port, password auth; removed on exit.

    ``url`` is ``postgresql://forge:<password>@127.0.0.1:<port>/postgres``. :meth:`stop` and
    :meth:`start` again simulate an outage on the same port and data.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.password = "forge-test-pw"
        self.url = f"postgresql://forge:{self.password}@127.0.0.1:{self.port}/postgres"
        self.root = Path(tempfile.mkdtemp(prefix="forge-pg-"))
        self.data = self.root / "data"
        self._user: str | None = None
        if os.geteuid() == 0:
            import pwd

            self._user = "postgres"
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._user:
            os.chown(pwfile, pwd.getpwnam(self._user).pw_uid, -1)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "forge",
            "-A",
            "scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
        )

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
            )

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        deadline = time.monotonic() + 30
        import psycopg

        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_key(self, url: str, name: str, **limits: Any) -> str:
        """A new API key in the key store at ``url`` (a database on this server), as the CLI does."""
        from forge_gateway.security.keys import new_key
        from forge_gateway.security.keys_pg import PostgresKeyStore

        full, record = new_key(name, **limits)

        async def create() -> str:
            store = PostgresKeyStore(url)
            await store.open()
            try:
                await store.add_key(record)
                return full
            finally:
                await store.close()

        return asyncio.run(create())

    def _processes(self) -> list[int]:
        """The postmaster and every process it forked (backends, background workers)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children: dict[int, list[int]] = {}
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
        found, todo = [], [postmaster]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def pause(self) -> None:
        """Freeze the whole server (SIGSTOP): connections stay open and nothing answers, as in
        a network partition or a hung host."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._processes():
            os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
