"""`dscnet serve` as a child process on a free loopback port: the shutdown tests, load and soak.

A separate process, not a thread: signals reach it as they would in production, its
resident memory is the service's alone, and a load generator does not share its GIL. Its
log goes to a file: a pipe that nobody reads would fill up and stall the server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port free now (another process could take it before the service binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """`dscnet serve` in a child process; use as a context manager, it is stopped on exit."""

    def __init__(
        self, model: Path, env: dict[str, str] | None = None, *, log_path: Path | None = None,
        start_timeout_s: float = 120, command: list[str] | None = None,
    ) -> None:
        """Start it and wait until /health/ready answers 200 (the bound is on waiting, not speed).

        Args:
            command: another start command (the container's docker/serve.py); it is given the
                model as DSCNET_MODEL_PATH instead of `--model`.
        """
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="dscnet-serve-", suffix=".log")[1])
        port = free_port()
        child_env = {**os.environ, "DSCNET_PORT": str(port), "DSCNET_HOST": "127.0.0.1", **(env or {})}
        if command is None:
            command = [sys.executable, "-m", "dscnet_cli", "serve", "--model", str(model)]
        else:
            child_env["DSCNET_MODEL_PATH"] = str(model)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{port}"
        try:
            self._wait_ready(start_timeout_s)
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health/ready", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"dscnet serve exited {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"dscnet serve was not ready within {timeout_s} s:\n{self.log_tail()}")

    def rss_mib(self) -> float:
        """Resident memory of the service process (Linux /proc), MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS line")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_records(self) -> list[dict]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def stop(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
