"""Driving the app straight through ASGI, to see exactly how much of a body it pulls."""

from __future__ import annotations

from fastapi.testclient import TestClient


def post_endless_body(client: TestClient, headers: list[tuple[bytes, bytes]]) -> tuple[list[dict], list[dict]]:
    """POST /predict whose body never ends; return (body messages pulled, messages sent back)."""
    pulled: list[dict] = []
    sent: list[dict] = []

    async def receive() -> dict:
        message = {"type": "http.request", "body": b"\0" * 65536, "more_body": True}
        pulled.append(message)
        return message

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/predict", "raw_path": b"/predict", "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"multipart/form-data; boundary=XyZ"), *headers],
        "client": ("127.0.0.1", 1), "server": ("testserver", 80),
    }
    client.portal.call(client.app, scope, receive, send)
    return pulled, sent
