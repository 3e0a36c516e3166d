"""A light closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending a request
as soon as its previous answer arrives (after a 503's Retry-After, as a well-behaved client). Requests are built once; answers are read by
Content-Length and not parsed, so the generator costs little of the CPU it shares with the
server under test. Also: start a server command in a child process and sample its memory.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

BOUNDARY = "dscnetbenchboundary7d1c"


def multipart_request(path: str, field_name: str, files: list[tuple[str, bytes]], host: str) -> bytes:
    """A complete HTTP/1.1 POST with a multipart body holding `files` in `field_name`."""
    parts = []
    for name, data in files:
        parts.append(
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n"
        )
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    images_per_request: int
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    #: every answer, warm-up and tail included (to divide the server's CPU time by)
    answered: int = 0
    #: the server's CPU seconds (all its threads) over the whole run, when measured
    server_cpu_s: float = float("nan")

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    @property
    def images_per_s(self) -> float:
        return self.ok * self.images_per_request / self.seconds

    @property
    def cpu_ms_per_image(self) -> float:
        return self.server_cpu_s * 1000 / max(1, self.answered * self.images_per_request)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """One HTTP/1.1 response: its status and headers (names in lower case); the body is read and dropped."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, float]:
    """Status, whether the server closes the connection, and its Retry-After in seconds (0 if none)."""
    status, headers = await read_response(reader)
    retry_after = headers.get("retry-after", "")
    return status, headers.get("connection", "").lower() == "close", float(retry_after) if retry_after.isdigit() else 0.0


async def _client(host: str, port: int, requests: list[bytes], offset: int, window: _Window,
                  result: LoadResult) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    try:
        while window.more(len(result.latencies_s)):
            start = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            try:
                status, close, retry_after = await _read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                status, close, retry_after = 599, True, 0.0
            end = time.perf_counter()
            result.answered += status == 200
            if window.counts(start, end):
                result.latencies_s.append(end - start)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                window.last_end = max(window.last_end, end)
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
            if status == 503 and retry_after:
                await asyncio.sleep(retry_after)  # as a well-behaved client does
    finally:
        writer.close()


@dataclass
class _Window:
    """The measured window: after the warm-up, until the stop time, longer if too few answers came."""

    warm_until: float
    stop_at: float
    min_requests: int
    last_end: float = 0.0

    def more(self, answered: int) -> bool:
        return time.perf_counter() < self.stop_at or answered < self.min_requests

    def counts(self, start: float, end: float) -> bool:
        # Past the stop time only while the minimum is not reached (slow servers, big batches).
        return start >= self.warm_until and (end <= self.stop_at or self.min_requests > 0)


def run_load(url: str, requests: list[bytes], concurrency: int, seconds: float, warm_up_s: float = 1.0,
             images_per_request: int = 1, min_requests: int = 0) -> LoadResult:
    """Closed-loop load for `warm_up_s + seconds` (longer until `min_requests` answers were timed).

    Only answers to requests sent after the warm-up count; with `min_requests` the window
    runs to the last answer, so images/s stays answers over the time they took.
    """
    host, port = url.removeprefix("http://").split(":")
    result = LoadResult(concurrency, seconds, images_per_request)

    async def main() -> None:
        start = time.perf_counter()
        window = _Window(start + warm_up_s, start + warm_up_s + seconds, min_requests)
        await asyncio.gather(*(
            _client(host, int(port), requests, i * 7, window, result) for i in range(concurrency)
        ))
        if min_requests:
            result.seconds = max(window.stop_at, window.last_end) - window.warm_until

    asyncio.run(main())
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildServer:
    """A server command in a child process on a given loopback port; stopped on exit."""

    def __init__(self, command: list[str], port: int, ready_path: str, *, cwd: Path,
                 env: dict[str, str], start_timeout_s: float = 180) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(tempfile.mkstemp(prefix="dscnet-bench-", suffix=".log")[1])
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env},
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{command} exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + ready_path, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{command} was not ready within {start_timeout_s} s:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        """The child and every process under it (uvicorn's workers, when it runs several)."""
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(child) for child in (task / "children").read_text().split()]
            except FileNotFoundError:  # exited meanwhile
                continue
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time of the child and its processes, all threads, from /proc."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def memory_mib(self, key: str = "VmRSS") -> float:
        """VmRSS (resident now) or VmHWM (peak resident) of the child, MiB; summed over its processes
        when it has several (an upper bound: pages they share are counted in each)."""
        total = 0
        for pid in self.pids():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except FileNotFoundError:
                continue
            total += sum(int(line.split()[1]) for line in lines if line.startswith(key + ":"))
        return total / 1024 if total else float("nan")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ChildServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MemorySampler:
    """Samples a child server's RSS in a thread while load runs; `peak_mib` is the largest sample."""

    def __init__(self, server: ChildServer, interval_s: float = 0.2) -> None:
        self.server = server
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self.server.memory_mib())

    @property
    def peak_mib(self) -> float:
        return max(self.samples, default=float("nan"))

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
