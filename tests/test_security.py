"""Access: optional API keys on every route but the open ones, CORS only when configured,
no image content, file names or keys in logs, no image ever written to disk."""

from __future__ import annotations

import base64
import hmac
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from PIL import Image
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocketDisconnect

import helpers_images as images
from helpers_asgi import post_endless_body
from app import security
from app.logs import JsonFormatter
from app.main import create_app
from app.security import OPEN_PATHS, AccessConfigError, is_open_path
from app.settings import Settings
from dscnet_cli import main

KEY = "k3y-for-tests-0123456789abcdef"
OTHER_KEY = "another-key-0123456789abcdef"
WRONG_KEY = "not-the-key-0123456789abcdef"
# The open paths, as SECURITY.md lists them; /metrics is open unless DSCNET_METRICS_REQUIRE_KEY.
DOCUMENTED_OPEN = {
    "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}/ready",
    "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/", "/static",
}


def keyed_app(tiny_model: Path, **settings: object) -> FastAPI:
    return create_app(Settings(model_path=tiny_model, ort_threads=1, api_keys=(KEY, OTHER_KEY), **settings))


@pytest.fixture
def keyed(tiny_model: Path) -> Iterator[TestClient]:
    with TestClient(keyed_app(tiny_model)) as client:
        yield client


def concrete(path: str) -> str:
    """A request path for a route template: the served model's name, a static file, else any value."""
    if path == "/static":
        return "/static/app.js"
    return path.replace("{model_name}", "dscnet").replace("{path:path}", "x").replace("{path}", "x")


def assert_unauthorized(response, *, invalid: bool) -> None:
    assert response.status_code == 401, (response.request.url, response.text)
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="dscnet"')
    assert ('error="invalid_token"' in challenge) is invalid
    body = response.json()
    if response.request.url.path.startswith("/v2"):
        assert set(body) == {"error"} and isinstance(body["error"], str)  # the v2 protocol's body
        return
    assert body["error"]["status"] == 401 and body["error"]["code"] == "unauthorized"
    assert body["error"]["field"] is None and body["error"]["detail"]
    assert body["request_id"] == response.headers["x-request-id"]


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every route, included routers flattened."""
    found = []
    for route in iter_route_contexts(app.routes):
        methods = sorted(route.methods or {"GET"})
        found += [(method, route.path) for method in methods if method != "HEAD"]
    return found


# --- keys off -------------------------------------------------------------------------------


def test_without_keys_access_is_open(client: TestClient) -> None:
    response = client.post("/predict", files={"image": ("a.png", images.solid((255, 0, 0)))})
    assert response.status_code == 200
    assert "www-authenticate" not in response.headers
    assert client.get("/model").status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


# --- every route but the open ones needs a key ----------------------------------------------


def test_the_open_paths_are_the_documented_ones() -> None:
    assert {p for p in DOCUMENTED_OPEN if "{" not in p and p != "/static"} == OPEN_PATHS
    assert is_open_path("/v2/models/{model_name}/ready") and is_open_path("/v2/models/dscnet/ready")
    assert is_open_path("/static/app.js")
    for near_miss in ("/health/live/", "/Health/live", "/health", "/v2/models/a/b/ready", "/docs/x", "/metrics",
                      "/static", "/staticx/a", "//", "/predict/"):
        assert not is_open_path(near_miss)


def test_every_route_but_the_open_ones_demands_the_key(keyed: TestClient) -> None:
    checked = []
    for method, path in routes(keyed.app):
        if path in DOCUMENTED_OPEN or path == "/metrics":
            continue
        url = concrete(path)
        assert_unauthorized(keyed.request(method, url), invalid=False)
        assert_unauthorized(keyed.request(method, url, headers={"X-API-Key": WRONG_KEY}), invalid=True)
        assert_unauthorized(keyed.request(method, url, headers={"Authorization": f"Bearer {WRONG_KEY}"}), invalid=True)
        for good in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {OTHER_KEY}"}, {"authorization": f"bearer  {KEY}"}):
            assert keyed.request(method, url, headers=good).status_code != 401, (method, url, good)
        checked.append(path)
    assert {"/predict", "/predict-batch", "/model", "/v2/models/{model_name}/infer", "/v2"} <= set(checked)


def test_the_open_routes_answer_without_a_key(keyed: TestClient) -> None:
    for method, path in routes(keyed.app):
        if path in DOCUMENTED_OPEN or path == "/metrics":
            response = keyed.request(method, concrete(path))
            assert response.status_code == 200, (path, response.text)


def test_routes_added_later_are_protected_by_default(tiny_model: Path) -> None:
    app = keyed_app(tiny_model)

    @app.get("/new")
    def new() -> dict:
        return {"secret": True}

    router = APIRouter(prefix="/extra")

    @router.post("/thing/{name}")
    def thing(name: str) -> dict:
        return {"name": name}

    app.include_router(router)

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    app.add_route("/plain", plain)
    app.mount("/files", PlainTextResponse("mounted"))

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("secret")
        await websocket.close()

    with TestClient(app) as client:
        for method, url in (("GET", "/new"), ("POST", "/extra/thing/x"), ("GET", "/plain"), ("GET", "/files/a.txt")):
            assert_unauthorized(client.request(method, url), invalid=False)
            assert client.request(method, url, headers={"X-API-Key": KEY}).status_code == 200
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/ws"):
            pass
        assert refused.value.code == 1008
        with client.websocket_connect("/ws", headers={"X-API-Key": KEY}) as websocket:
            assert websocket.receive_text() == "secret"


def test_unknown_paths_need_a_key_too(keyed: TestClient) -> None:
    """No route enumeration without a key: a 404 is only told to callers with one."""
    assert_unauthorized(keyed.get("/no/such/path"), invalid=False)
    assert keyed.get("/no/such/path", headers={"X-API-Key": KEY}).status_code == 404


def test_a_refused_upload_is_not_read(tiny_model: Path) -> None:
    """The key is checked before the route: not one byte of the body is pulled."""
    with TestClient(keyed_app(tiny_model)) as client:
        pulled, sent = post_endless_body(client, [(b"x-api-key", WRONG_KEY.encode())])
    assert pulled == []
    assert sent[0]["status"] == 401


def test_refusals_are_counted_and_logged(keyed: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dscnet.access"):
        keyed.post("/predict", headers={"X-Request-ID": "refused-1"})
    (record,) = [r for r in caplog.records if getattr(r, "fields", {}).get("request_id") == "refused-1"]
    assert record.fields["status"] == 401
    metrics = keyed.get("/metrics").text
    assert 'dscnet_requests_total{endpoint="unmatched",status="401"} 1.0' in metrics


# --- metrics --------------------------------------------------------------------------------


def test_metrics_are_open_unless_configured(tiny_model: Path) -> None:
    with TestClient(keyed_app(tiny_model)) as client:
        assert client.get("/metrics").status_code == 200
    with TestClient(keyed_app(tiny_model, metrics_require_key=True)) as client:
        assert_unauthorized(client.get("/metrics"), invalid=False)
        assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


# --- the comparison -------------------------------------------------------------------------


def test_keys_are_compared_in_constant_time_against_every_key(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    policy = security.load_access_policy(Settings(model_path=tiny_model, api_keys=(KEY, OTHER_KEY, WRONG_KEY * 2)))
    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    assert policy.accepts([KEY.encode()])  # the first key matches; the others are still compared
    assert len(calls) == 3
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: equal lengths, no length leak
    calls.clear()
    assert not policy.accepts([KEY[:-1].encode()])
    assert len(calls) == 3


def test_the_policy_keeps_no_plain_key(tiny_model: Path) -> None:
    policy = security.load_access_policy(Settings(model_path=tiny_model, api_keys=(KEY,)))
    assert KEY.encode() not in repr(policy).encode() and all(KEY.encode() not in d for d in policy.key_digests)
    assert KEY not in repr(Settings(model_path=tiny_model, api_keys=(KEY,)))


# --- where keys come from, and which are refused ---------------------------------------------


def test_keys_from_the_environment_and_a_file(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"# lab analysers\n\n  {OTHER_KEY}  \n# retired: {WRONG_KEY}\n")
    monkeypatch.setenv("DSCNET_API_KEYS", f" {KEY} ,")
    monkeypatch.setenv("DSCNET_API_KEYS_FILE", str(key_file))
    monkeypatch.setenv("DSCNET_MODEL_PATH", str(tiny_model))
    policy = security.load_access_policy(Settings())
    assert policy.accepts([KEY.encode()]) and policy.accepts([OTHER_KEY.encode()])
    assert not policy.accepts([WRONG_KEY.encode()]) and not policy.accepts([b"# retired: " + WRONG_KEY.encode()])
    assert len(policy.key_digests) == 2


@pytest.mark.parametrize(
    ("env", "text", "words"),
    [
        ({"DSCNET_API_KEYS": "Zq9Kp"}, None, "DSCNET_API_KEYS: key 1 is shorter than 16"),
        ({"DSCNET_API_KEYS": f"{KEY},Wv7Jx"}, None, "DSCNET_API_KEYS: key 2 is shorter"),
        ({"DSCNET_API_KEYS": "ключ-ключ-ключ-ключ-ключ"}, None, "printable ASCII"),
        ({}, "", "holds no key"),
        ({}, "# only a comment\n", "holds no key"),
        ({}, "Zq9Kp\n", "DSCNET_API_KEYS_FILE: key 1 is shorter"),
        ({}, b"\xff\xfe" + b"x" * 20, "cannot read"),
    ],
)
def test_unsafe_or_unreadable_keys_stop_start_up(
    tiny_model: Path, tmp_path: Path, env: dict, text: str | bytes | None, words: str
) -> None:
    options: dict = {}
    if "DSCNET_API_KEYS" in env:
        options["api_keys"] = env["DSCNET_API_KEYS"]
    if text is not None:
        key_file = tmp_path / "keys"
        key_file.write_bytes(text if isinstance(text, bytes) else text.encode())
        options["api_keys_file"] = key_file
    app = create_app(Settings(model_path=tiny_model, ort_threads=1, **options))
    with pytest.raises(AccessConfigError) as caught, TestClient(app):
        pass
    assert words in str(caught.value)
    assert app.state.service.load_error == str(caught.value)
    for secret in ("Zq9Kp", "Wv7Jx", "ключ", KEY):
        assert secret not in str(caught.value)  # keys are named by position, never shown


def test_serve_exits_nonzero_when_the_key_file_is_missing(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setenv("DSCNET_API_KEYS_FILE", str(tmp_path / "absent"))
    try:
        assert main(["serve", "--port", "0", "--model", str(tiny_model)]) == 1
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    assert "did not start: DSCNET_API_KEYS_FILE: cannot read" in err and "No such file" in err


# --- OpenAPI --------------------------------------------------------------------------------


def test_the_openapi_document_describes_the_keys(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"APIKeyHeader", "BearerKey"}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path in DOCUMENTED_OPEN or path == "/metrics":
                assert "security" not in operation and "401" not in operation["responses"], path
            else:
                assert operation["security"] == [{"APIKeyHeader": []}, {"BearerKey": []}], path
                assert "401" in operation["responses"], path


# --- CORS -----------------------------------------------------------------------------------

PREFLIGHT = {"Origin": "https://lab.example.org", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "x-api-key"}


def test_cors_is_off_unless_configured(client: TestClient) -> None:
    preflight = client.options("/predict", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in preflight.headers
    simple = client.get("/health/live", headers={"Origin": "https://lab.example.org"})
    assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_only_the_configured_origins(tiny_model: Path) -> None:
    app = keyed_app(tiny_model, cors_origins="https://lab.example.org, http://localhost:3000")
    with TestClient(app) as client:
        preflight = client.options("/predict", headers=PREFLIGHT)  # browsers send no key in a preflight
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://lab.example.org"
        assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in preflight.headers
        other = client.options("/predict", headers={**PREFLIGHT, "Origin": "https://evil.example.com"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        answer = client.post("/predict", headers={"Origin": "http://localhost:3000", "X-API-Key": KEY},
                             files={"image": ("a.png", images.solid((0, 255, 0)))})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()
        assert "x-dscnet-label" in answer.headers["access-control-expose-headers"].lower()  # /explain's answer
        lis = client.options("/predict", headers={**PREFLIGHT, "Access-Control-Request-Headers": "x-patient-id, x-order-id"})
        assert lis.status_code == 200


@pytest.mark.parametrize("origin", ["lab.example.org", "https://lab.example.org/", "ftp://x", "https://a b"])
def test_a_malformed_cors_origin_is_refused(tiny_model: Path, origin: str) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        Settings(model_path=tiny_model, cors_origins=origin)


# --- logs hold no image content, file names, patient identifiers or keys -----------------------

PATIENT = "DOE-JOHN-MRN-4711"
MARKER = b"PIXEL-PAYLOAD-7f3a"  # bytes that are in every uploaded file


def png_with_text(colour: tuple[int, int, int]) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", f"{PATIENT} {MARKER.decode()}")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


@pytest.fixture
def every_log_line() -> Iterator[list[str]]:
    """Every record of every logger (the test client's own excepted), rendered as the service writes it."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not record.name.startswith(("httpx", "httpcore")):
                lines.append(JsonFormatter().format(record))

    root = logging.getLogger()
    handler, level = Collect(logging.DEBUG), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lines
    root.removeHandler(handler)
    root.setLevel(level)


def test_logs_hold_no_image_content_file_names_or_keys(tiny_model: Path, every_log_line: list[str]) -> None:
    name = f"{PATIENT}-smear.png"
    good = png_with_text((255, 0, 0))
    bad = MARKER + b" notes about " + PATIENT.encode()
    with TestClient(keyed_app(tiny_model), raise_server_exceptions=False) as client:
        auth = {"X-API-Key": KEY}
        assert client.post("/predict", headers=auth, files={"image": (name, good)}).status_code == 200
        assert client.post("/predict", headers=auth, files={"image": (name, bad)}).status_code == 415
        assert client.post("/predict", headers=auth, files={"image": (name, good[:80])}).status_code == 400
        batch = [("images", (name, good)), ("images", (f"{PATIENT}.txt", bad))]
        assert client.post("/predict-batch", headers=auth, files=batch).status_code == 200
        v2 = {"id": PATIENT, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                         "data": [base64.b64encode(good).decode()]}]}
        assert client.post("/v2/models/dscnet/infer", headers=auth, json=v2).status_code == 200
        assert client.post("/predict", headers={"X-API-Key": WRONG_KEY}, files={"image": (name, good)}).status_code == 401
        classifier = client.app.state.service.classifier
        classifier.session = classifier.wide_session = BrokenSession()  # a server fault's traceback too
        client.app.state.service.batcher = None
        assert client.post("/predict", headers=auth, files={"image": (name, good)}).status_code == 500
    text = "\n".join(every_log_line)
    assert '"status": 415' in text and '"status": 500' in text  # the requests were logged...
    for secret in (PATIENT, MARKER.decode(), "smear.png", KEY, WRONG_KEY, base64.b64encode(good[:30]).decode()[:20]):
        assert secret not in text  # ...and nothing of them but counts, sizes, codes and timings


class BrokenSession:
    def run(self, *args: object, **kwargs: object) -> list:
        raise RuntimeError("onnxruntime failed")


# --- images never touch the disk -------------------------------------------------------------


class DiskWrites:
    """Records every file opened for writing and every temporary file made, through audit hooks."""

    _installed: DiskWrites | None = None
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | getattr(os, "O_TMPFILE", 0)

    def __init__(self) -> None:
        self.active = False
        self.seen: list[str] = []

    @classmethod
    def hook(cls) -> DiskWrites:
        if cls._installed is None:  # audit hooks cannot be removed: install one, switch it on and off
            cls._installed = cls()
            sys.addaudithook(cls._installed._audit)
        return cls._installed

    def _audit(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event in {"tempfile.mkstemp", "tempfile.mkdtemp"}:
            self.seen.append(f"{event} {args}")
        elif event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & self._WRITE_FLAGS)
            if writes and "__pycache__" not in str(path):  # a late import may cache its bytecode
                self.seen.append(f"open {path!r} {mode!r} {flags!r}")


@pytest.fixture
def disk_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[DiskWrites, Path]]:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    writes = DiskWrites.hook()
    writes.seen.clear()
    yield writes, temp
    writes.active = False


def big_png(seed: int) -> bytes:
    """A ~5 MB PNG of noise: over Starlette's 1 MiB in-memory limit for form files."""
    pixels = np.random.default_rng(seed).integers(0, 256, (1300, 1300, 3), dtype=np.uint8)
    return images.encode(Image.fromarray(pixels), "PNG", compress_level=0)


def test_large_uploads_are_never_written_to_disk(client: TestClient, disk_writes: tuple[DiskWrites, Path]) -> None:
    writes, temp = disk_writes
    first, second = big_png(1), big_png(2)
    assert len(first) > 4 * 1024 * 1024
    v2 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(first).decode()]}]}
    requests = [
        ("/predict", {"files": {"image": ("a.png", first)}}),
        ("/predict-batch", {"files": [("images", ("a.png", first)), ("images", ("b.png", second))]}),
        ("/v2/models/dscnet/infer", {"json": v2}),
    ]
    for path, kwargs in requests:  # once to warm up lazy imports, then watched
        assert client.post(path, **kwargs).status_code == 200
    writes.active = True
    for path, kwargs in requests:
        assert client.post(path, **kwargs).status_code == 200
    writes.active = False
    assert writes.seen == []
    assert list(temp.iterdir()) == []


def test_the_disk_write_check_sees_a_spooled_upload(tiny_model: Path, disk_writes: tuple[DiskWrites, Path]) -> None:
    """The check above is not vacuous: Starlette's own form parsing spools a big file to TMPDIR."""
    writes, _ = disk_writes
    app = create_app(Settings(model_path=tiny_model, ort_threads=1))

    @app.post("/spool")
    async def spool(request: Request) -> dict:
        form = await request.form()
        size = len(await form["image"].read())
        await form.close()
        return {"size": size}

    with TestClient(app) as client:
        writes.active = True
        response = client.post("/spool", files={"image": ("a.png", big_png(3))})
        writes.active = False
    assert response.status_code == 200
    assert writes.seen, "a spooled upload was not noticed"


def test_upload_limits_are_enforced(tiny_model: Path) -> None:
    """The limits themselves are tested in test_api_errors; here: they hold with keys on too."""
    settings = {"max_upload_bytes": 20_000}
    with TestClient(keyed_app(tiny_model, **settings)) as client:
        response = client.post("/predict", headers={"X-API-Key": KEY}, files={"image": ("a", b"\0" * 30_000)})
        assert response.status_code == 413 and response.json()["error"]["code"] == "file_too_large"
