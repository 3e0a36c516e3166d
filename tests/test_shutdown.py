"""SIGTERM: readiness off at once, requests in flight finish, the wait is bounded by a setting.

Through a real `dscnet serve` child process on a free port, and a client that holds a
request in flight by sending its body in two halves around the signal.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import helpers_images as images
from app.cli import build_server
from app.settings import Settings
import helpers_wait as waiting
from helpers_asgi import response_body
from helpers_serve import ServiceProcess

BOUNDARY = "shutdownboundary"
WAIT_S = 60  # a bound on waiting for the child, never an assertion on speed


def multipart_request(port: int, data: bytes) -> tuple[bytes, bytes]:
    """A /predict request as raw bytes: (head and first half of the body, the rest)."""
    body = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
        f"Content-Type: image/png\r\n\r\n"
    ).encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    half = len(body) // 2
    return head + body[:half], body[half:]


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    raw = b"".join(chunks)
    status = int(raw.split(b" ", 2)[1])
    return status, raw.split(b"\r\n\r\n", 1)[1]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    waiting.wait_for(condition, what, timeout_s=WAIT_S, poll_s=0.05)


def in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return float(re.search(r"^dscnet_requests_in_flight (\S+)$", text, re.M).group(1))


def start_held_request(service: ServiceProcess) -> tuple[socket.socket, bytes]:
    """Open a /predict whose body is half sent; return once the service counts it in flight."""
    port = int(service.url.rsplit(":", 1)[1])
    first, rest = multipart_request(port, images.solid((0, 0, 255)))
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.sendall(first)
    wait_for(lambda: in_flight(service.url) >= 2, "the held request to be in flight")  # it and /metrics
    return sock, rest


def messages(service: ServiceProcess) -> list[str]:
    return [record.get("message", "") for record in service.log_records()]


pytestmark = pytest.mark.usefixtures("restore_root_logging")


@pytest.fixture
def serve(tiny_model: Path, tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start(**env: str) -> ServiceProcess:
        service = ServiceProcess(tiny_model, {"DSCNET_ORT_THREADS": "1", **env}, log_path=tmp_path / "serve.log")
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def test_sigterm_lets_the_request_in_flight_finish(serve: Callable[..., ServiceProcess]) -> None:
    service = serve(DSCNET_SHUTDOWN_TIMEOUT_S="60")
    port = int(service.url.rsplit(":", 1)[1])
    sock, rest = start_held_request(service)
    with sock:
        service.process.send_signal(signal.SIGTERM)
        wait_for(lambda: any(m.startswith("shutting down: not ready") for m in messages(service)), "the shutdown log line")
        with pytest.raises(OSError):  # no new connections while draining
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert service.process.poll() is None, "the service exited with a request in flight"
        sock.sendall(rest)
        status, body = read_response(sock)
    assert status == 200, body
    assert b'"label":"pre_b"' in body
    service.process.wait(WAIT_S)
    assert service.process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    log = messages(service)
    assert "Application shutdown complete." in log
    shutting = next(r for r in service.log_records() if r.get("message", "").startswith("shutting down: not ready"))
    assert shutting["in_flight"] >= 1 and shutting["timeout_s"] == 60


def test_the_drain_is_bounded_by_the_setting(serve: Callable[..., ServiceProcess]) -> None:
    """A client that never finishes its upload cannot keep the service alive past the timeout."""
    service = serve(DSCNET_SHUTDOWN_TIMEOUT_S="1")
    sock, _ = start_held_request(service)
    with sock:
        service.process.send_signal(signal.SIGTERM)
        service.process.wait(WAIT_S)  # without the bound uvicorn would wait for the client forever
    assert any("timeout graceful shutdown exceeded" in m for m in messages(service))
    assert "Application shutdown complete." in messages(service)


def test_readiness_is_false_while_requests_drain(tiny_model: Path) -> None:
    """In process, to ask /health/ready while uvicorn drains: it no longer accepts connections then."""
    server = build_server(Settings(model_path=tiny_model, ort_threads=1, port=0, shutdown_timeout_s=60))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), "uvicorn to start")
        assert server.started
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        first, rest = multipart_request(port, images.solid((255, 0, 0)))
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
            sock.sendall(first)
            wait_for(lambda: in_flight(url) >= 2, "the held request to be in flight")
            app = server.config.app
            assert asyncio.run(ready_status(app)) == (200, "ready")
            server.should_exit = True  # what uvicorn's SIGTERM handler does
            wait_for(lambda: not app.state.service.ready, "readiness to turn false")
            assert asyncio.run(ready_status(app)) == (503, "the service is shutting down")
            assert thread.is_alive(), "the server stopped with a request in flight"
            sock.sendall(rest)
            status, body = read_response(sock)
        assert status == 200 and b'"label":"benign"' in body
    finally:
        server.should_exit = True
        thread.join(timeout=WAIT_S)
    assert not thread.is_alive()


async def ready_status(app) -> tuple[int, str]:
    """GET /health/ready straight through the ASGI app (status, detail)."""
    import json

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/health/ready", "raw_path": b"/health/ready", "root_path": "",
        "query_string": b"", "headers": [], "client": ("127.0.0.1", 1), "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    body = json.loads(response_body(sent))
    return sent[0]["status"], body["detail"] if body["status"] != "ready" else "ready"

