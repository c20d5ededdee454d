"""Test support: run a real ``forge-gateway serve`` subprocess on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["GatewayProcess", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayProcess:
    """``forge-gateway serve`` in a subprocess, started on enter and killed on exit.

    Args:
        args: extra ``serve`` arguments (``--model`` etc.).
        env: extra environment variables; a None value removes the variable (e.g. a suite-wide
            setting from tests/conftest.py that a test must run without).
        log_path: file that receives the server's stdout+stderr (for assertions on logs).
        startup_timeout: seconds to wait for ``/health`` to answer 200.
    """

    def __init__(
        self,
        args: list[str],
        *,
        env: dict[str, str | None] | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 240.0,
        health_headers: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.args = args
        merged = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.env = {key: value for key, value in merged.items() if value is not None}
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.health_headers = health_headers or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "forge_gateway.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *self.args,
            ],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {self.proc.returncode}; log: {self.log_text()[-3000:]}"
                )
            try:
                if (
                    httpx.get(f"{self.base_url}/health", timeout=2, headers=self.health_headers).status_code
                    == 200
                ):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(
            f"gateway did not become healthy in {self.startup_timeout} s: {self.log_text()[-3000:]}"
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
