"""Driving the app straight through ASGI, to see exactly how much of a body it pulls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi.testclient import TestClient

HANG_GUARD_S = 60  # reached only when something is broken
MULTIPART = b"multipart/form-data; boundary=XyZ"
#: the start of a /predict upload: part headers and the first two bytes of a JPEG
PART_START = b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n\xff\xd8'


def asgi_post(
    client: TestClient, path: str, headers: list[tuple[bytes, bytes]], receive: Callable[[], Awaitable[dict]]
) -> list[dict]:
    """POST `path` with the body `receive` gives; return the messages the app sent back."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": headers, "client": ("127.0.0.1", 1), "server": ("testserver", 80),
    }
    client.portal.call(client.app, scope, receive, send)
    return sent


def response_body(sent: list[dict]) -> bytes:
    """The body of the answer from the ASGI messages the app sent."""
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def post_endless_body(
    client: TestClient, headers: list[tuple[bytes, bytes]], *, path: str = "/predict",
    content_type: bytes = MULTIPART, head: bytes = b"",
) -> tuple[list[bytes], list[dict]]:
    """POST whose body never ends (`head`, then zeros without end); return (chunks pulled, messages sent back)."""
    pulled: list[bytes] = []

    async def receive() -> dict:
        chunk = head if head and not pulled else b"\0" * 65536
        pulled.append(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    return pulled, asgi_post(client, path, [(b"content-type", content_type), *headers], receive)


def post_stalled_body(
    client: TestClient, path: str, content_type: bytes, first: bytes, on_first_read: Callable[[], None] = lambda: None
) -> list[dict]:
    """POST whose body stops after its first chunk, the connection left open: a stalled client.

    The second read waits (up to HANG_GUARD_S, then reports a disconnect); `on_first_read` is
    called when the app pulls the first chunk. Returns the messages the app sent back.
    """
    chunks = [first]

    async def receive() -> dict:
        if chunks:
            on_first_read()
            return {"type": "http.request", "body": chunks.pop(), "more_body": True}
        await asyncio.sleep(HANG_GUARD_S)
        return {"type": "http.disconnect"}

    return asgi_post(client, path, [(b"content-type", content_type)], receive)
