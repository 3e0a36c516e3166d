"""Bad input, fuzzed and listed: nothing a client sends gets a 5xx, breaks the contract of
`decode_image`, or leaves the service unready.

- `decode_image` under hypothesis: random bytes, and mutated files of every format (bytes
  flipped, cut, inserted, removed, size fields overwritten). Only `ImageDecodeError`s may
  escape; what decodes is a (224, 224, 3) uint8 array.
- schemathesis against the service's own OpenAPI document, API keys on: no 5xx, every status
  and content type documented, bodies matching their schemas, no access without the key.
- A table of named bad requests (truncated, corrupt, empty, lying names and content types,
  pixel bombs, animations, oversized streams, batches too big or empty, duplicated fields,
  non-UTF-8 names), each followed by a readiness check and a good prediction.

Example counts are modest so that CI on two shared cores stays fast; runs are derandomized
(the same examples every run, so CI cannot flake). `DSCNET_FUZZ_EXAMPLES=2000` and
`DSCNET_FUZZ_RANDOM=1` explore further by hand.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import helpers_images as images
from helpers_asgi import post_endless_body, response_body
from app.imaging import IMAGE_SIZE, ImageDecodeError, decode_image
from app.main import create_app
from app.settings import Settings
from helpers_onnx import build_tiny_model, write_card

EXAMPLES = int(os.environ.get("DSCNET_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # two shared cores: time per example says nothing here
    derandomize=not os.environ.get("DSCNET_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ_MAX_PIXELS = 4_000_000  # mutated headers may declare big images; keep each example cheap
KEY = "fuzz-key-0123456789abcdef"


# --- seeds: one small file per format and mode decode_image accepts, and ones it refuses -----


def _noise(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    array = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


def _frames(fmt: str, count: int = 3, **options: object) -> bytes:
    frames = [Image.new("RGB", (40, 32), (80 * i, 0, 0)) for i in range(count)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], **options)
    return buffer.getvalue()


SEEDS: dict[str, bytes] = {
    "jpeg": images.encode(_noise((48, 40)), "JPEG", quality=90),
    "jpeg_grey": images.grey_jpeg(),
    "jpeg_cmyk": images.cmyk_jpeg(),
    "jpeg_exif": images.exif_rotated_jpeg(),
    "png": images.encode(_noise((40, 48)), "PNG"),
    "png_rgba": images.png_with_alpha(),
    "png_16bit": images.png_16bit_grey(),
    "png_palette": images.encode(_noise((32, 32), "P"), "PNG", transparency=0),
    "tiff": images.encode(_noise((40, 40)), "TIFF"),
    "tiff_lzw": images.encode(_noise((40, 40)), "TIFF", compression="tiff_lzw"),
    "bmp": images.encode(_noise((36, 32)), "BMP"),
    "webp": images.encode(_noise((40, 40)), "WEBP", quality=80),
    "webp_lossless": images.encode(_noise((40, 40)), "WEBP", lossless=True),
    # refused as a whole (415), but their mutations must be refused cleanly too
    "gif": images.gif(),
    "gif_animated": _frames("GIF"),
    "tiff_multipage": _frames("TIFF"),
    "webp_animated": _frames("WEBP"),
    "png_animated": _frames("PNG"),
}


def check_contract(data: bytes) -> None:
    """decode_image either returns the model input or raises an ImageDecodeError; nothing else."""
    try:
        pixels = decode_image(data, max_pixels=FUZZ_MAX_PIXELS)
    except ImageDecodeError as err:
        assert err.reason in {"unsupported_format", "corrupt_image", "too_many_pixels", "image_too_small"}
        assert str(err)
        return
    assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous


# A mutation: ("flip", at, value) sets a byte, ("cut", at) truncates, ("insert", at, bytes),
# ("delete", at, length), ("int", at, value) writes a big-endian or little-endian uint32 (sizes).
mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 16)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 64)),
    st.tuples(st.just("int"), st.integers(0, 64), st.sampled_from([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 70_000]),
              st.booleans()),
)


def mutate(data: bytes, mutations: list[tuple]) -> bytes:
    out = bytearray(data)
    for op in mutations:
        at = op[1] % (len(out) + 1)
        if op[0] == "flip" and out:
            out[at % len(out)] = op[2]
        elif op[0] == "cut":
            del out[at:]
        elif op[0] == "insert":
            out[at:at] = op[2]
        elif op[0] == "delete":
            del out[at:at + op[2]]
        elif op[0] == "int":
            out[at:at + 4] = struct.pack(">I" if op[3] else "<I", op[2])
    return bytes(out)


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_break_no_contract(data: bytes) -> None:
    check_contract(data)


@FUZZ
@given(prefix=st.sampled_from([s[:16] for s in SEEDS.values()]), tail=st.binary(max_size=2048))
def test_a_valid_signature_on_random_bytes_breaks_no_contract(prefix: bytes, tail: bytes) -> None:
    check_contract(prefix + tail)


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_mutated_files_break_no_contract(seed: str) -> None:
    original = SEEDS[seed]
    check_contract(original)

    @FUZZ
    @given(mutations=st.lists(mutation, min_size=1, max_size=4))
    def run(mutations: list[tuple]) -> None:
        check_contract(mutate(original, mutations))

    run()


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_every_truncation_point_of_the_header_is_refused_cleanly(seed: str) -> None:
    """Deterministic: each of the first 300 cut points, where parsers are most fragile."""
    original = SEEDS[seed]
    for length in range(min(300, len(original))):
        check_contract(original[:length])


# --- schemathesis against the app's own OpenAPI document ------------------------------------

CHECKS = [
    not_a_server_error, status_code_conformance, content_type_conformance,
    response_schema_conformance, response_headers_conformance, ignored_auth,
]


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    model = build_tiny_model(tmp_path_factory.mktemp("models") / "dscnet.onnx")
    write_card(model)
    app = create_app(Settings(model_path=model, ort_threads=1, api_keys=(KEY,)))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_the_api_keeps_to_its_openapi_document(keyed_service: TestClient) -> None:
    """Every operation, positive and negative examples: failures are collected across operations.

    (schemathesis's `from_fixture` pytest integration does not run under pytest 9, so the
    operations are driven here through their hypothesis strategies.)
    """
    schema = schemathesis.openapi.from_asgi("/openapi.json", keyed_service.app)
    failures: dict[str, BaseException] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /predict", "POST /predict-batch", "GET /model"}
    for operation in operations:

        @settings(FUZZ, max_examples=max(10, EXAMPLES // 3), suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"X-API-Key": KEY}, checks=CHECKS)

        try:
            run()
        except Exception as err:  # noqa: BLE001 - reported for every operation below
            failures[operation.label] = err
        except BaseExceptionGroup as group:
            failures[operation.label] = group
    assert not failures, "\n\n".join(f"{label}:\n{err}" for label, err in failures.items())
    assert keyed_service.get("/health/ready").status_code == 200


# --- named bad requests ---------------------------------------------------------------------


def raw_multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"FuzzBoundary") -> tuple[bytes, dict]:
    """A multipart body from raw Content-Disposition values and data (any bytes at all)."""
    body = b""
    for disposition, data in parts:
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + data + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    return body, {"Content-Type": "multipart/form-data; boundary=" + boundary.decode()}


def png_damaged(where: bytes, offset: int) -> bytes:
    """A noise PNG with one byte flipped `offset` bytes after the chunk type `where`."""
    data = bytearray(images.encode(_noise((64, 64)), "PNG"))
    data[data.index(where) + offset] ^= 0xFF
    return bytes(data)


def tiff_bomb() -> bytes:
    """A TIFF whose header declares 60000 x 60000 pixels, with almost no data."""
    entries = [(256, 4, 1, 60000), (257, 4, 1, 60000), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, 60000), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\0" + struct.pack("<I", 24) + b"\0" * 16 + ifd


def jpeg_bomb() -> bytes:
    """A real JPEG whose frame header is rewritten to declare 65000 x 65000 pixels."""
    data = bytearray(images.solid((1, 2, 3), fmt="JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def deflate_bomb() -> bytes:
    """A PNG within the pixel limit whose few kilobytes inflate to 36 MB of pixels: allowed, decoded."""
    width = height = 6000
    raw = zlib.compress(b"\0" * ((width * 1 + 1) * height), 9)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


GOOD_JPEG = images.solid((0, 255, 0), fmt="JPEG")
Request = Callable[[TestClient], object]


def predict(data: bytes, filename: str = "smear.png", content_type: str = "image/png") -> Request:
    return lambda client: client.post("/predict", files={"image": (filename, data, content_type)})


def raw(path: str, parts: list[tuple[bytes, bytes]]) -> Request:
    body, headers = raw_multipart(parts)
    return lambda client: client.post(path, content=body, headers=headers)


IMAGE = b'form-data; name="image"; filename="a.png"'
IMAGES = b'form-data; name="images"; filename="a.png"'

# (name, request, status, code): code is the error code, or the label for a 200.
BAD_INPUT: list[tuple[str, Request, int, str]] = [
    *[(f"truncated {fmt}", predict(images.encode(_noise((64, 64)), fmt)[:200]), 400, "corrupt_image")
      for fmt in ("JPEG", "PNG", "TIFF", "BMP", "WEBP")],
    ("corrupt PNG pixel data", predict(png_damaged(b"IDAT", 200)), 400, "corrupt_image"),
    # Pillow no longer recognises a PNG with a damaged header; its signature still says PNG.
    ("corrupt PNG header (IHDR CRC)", predict(png_damaged(b"IHDR", 17)), 400, "corrupt_image"),
    ("a JPEG signature and nothing more", predict(b"\xff\xd8\xff"), 400, "corrupt_image"),
    ("zero bytes", predict(b""), 422, "empty_file"),
    ("a 1x1 image", predict(images.solid((200, 150, 220), (1, 1))), 422, "image_too_small"),
    ("a 4000x8 strip", predict(images.solid((200, 150, 220), (4000, 8))), 422, "image_too_small"),
    ("not an image", predict(images.text_file()), 415, "unsupported_format"),
    ("a PDF", predict(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"), 415, "unsupported_format"),
    ("wrong part content type, a real image", predict(GOOD_JPEG, "a.jpg", "text/plain"), 200, "early_pre_b"),
    ("a name that lies: .png holding a JPEG", predict(GOOD_JPEG, "smear.png"), 200, "early_pre_b"),
    ("a name that lies: .jpg holding text", predict(images.text_file(), "smear.jpg", "image/jpeg"), 415,
     "unsupported_format"),
    ("request body as JSON", lambda c: c.post("/predict", json={"image": "aGVsbG8="}), 415, "not_multipart"),
    ("raw image body, no multipart", lambda c: c.post("/predict", content=GOOD_JPEG,
                                                      headers={"Content-Type": "image/jpeg"}), 415, "not_multipart"),
    ("PNG pixel bomb", predict(images.png_bomb()), 413, "too_many_pixels"),
    ("TIFF pixel bomb", predict(tiff_bomb()), 413, "too_many_pixels"),
    ("JPEG pixel bomb", predict(jpeg_bomb()), 413, "too_many_pixels"),
    ("deflate bomb within the pixel limit", predict(deflate_bomb()), 200, "pro_b"),
    ("animated GIF", predict(_frames("GIF")), 415, "unsupported_format"),
    ("multi-page TIFF", predict(_frames("TIFF")), 415, "unsupported_format"),
    ("animated WebP", predict(_frames("WEBP")), 415, "unsupported_format"),
    ("animated PNG", predict(_frames("PNG")), 415, "unsupported_format"),
    ("batch over the image limit", lambda c: c.post("/predict-batch", files=[
        ("images", (f"{i}.jpg", GOOD_JPEG)) for i in range(33)]), 413, "too_many_files"),
    ("empty batch: no part at all", raw("/predict-batch", []), 422, "missing_field"),
    ("empty batch: only other fields", raw("/predict-batch", [(b'form-data; name="note"', b"hi")]), 422,
     "unexpected_field"),
    ("a text field beside the image", raw("/predict", [(IMAGE, GOOD_JPEG), (b'form-data; name="note"', b"hi")]),
     422, "unexpected_field"),
    ("a part with no field name", raw("/predict", [(b"form-data", GOOD_JPEG)]), 422, "unexpected_field"),
    ("an empty Content-Disposition", raw("/predict", [(b"", GOOD_JPEG)]), 422, "unexpected_field"),
    ("duplicated field in /predict", raw("/predict", [(IMAGE, GOOD_JPEG), (IMAGE, GOOD_JPEG)]), 422, "extra_file"),
    ("duplicated field, second empty", raw("/predict", [(IMAGE, GOOD_JPEG), (IMAGE, b"")]), 422, "extra_file"),
    ("a field with no file name", raw("/predict", [(b'form-data; name="image"', GOOD_JPEG)]), 200, "early_pre_b"),
    ("non-UTF-8 file name", raw("/predict", [(b'form-data; name="image"; filename="\xff\xfe\xe9t\xe9.jpg"',
                                              GOOD_JPEG)]), 200, "early_pre_b"),
    ("a file name of 1,000 characters", predict(GOOD_JPEG, "x" * 1_000 + ".jpg"), 200, "early_pre_b"),
    ("part headers over the parser's limit", predict(GOOD_JPEG, "x" * 10_000 + ".jpg"), 400, "malformed_multipart"),
    ("path traversal in the file name", predict(GOOD_JPEG, "../../../etc/passwd"), 200, "early_pre_b"),
    ("a boundary that never appears", lambda c: c.post("/predict", content=GOOD_JPEG, headers={
        "Content-Type": "multipart/form-data; boundary=nowhere"}), 400, "malformed_multipart"),
]


@pytest.mark.parametrize(("send", "status", "code"), [case[1:] for case in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_answered_and_the_service_stays_ready(
    client: TestClient, send: Request, status: int, code: str
) -> None:
    response = send(client)
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["label"] if status == 200 else body["error"]["code"]) == code
    assert client.get("/health/ready").status_code == 200
    again = client.post("/predict", files={"image": ("ok.png", images.solid((0, 0, 255)))})
    assert again.status_code == 200 and again.json()["label"] == "pre_b"


def test_a_non_utf8_file_name_is_echoed_replaced_in_a_batch(client: TestClient) -> None:
    body, headers = raw_multipart([(b'form-data; name="images"; filename="\xff\xe9.jpg"', GOOD_JPEG),
                                   (IMAGES, images.text_file())])
    answer = client.post("/predict-batch", content=body, headers=headers).json()
    assert answer["results"][0]["filename"] == "\ufffd\ufffd.jpg" and answer["results"][0]["label"] == "early_pre_b"
    assert answer["results"][1]["error"]["code"] == "unsupported_format"


# --- an endless upload is cut off at the limit, while it streams ------------------------------


@pytest.mark.parametrize(
    ("path", "content_type", "head", "code"),
    [
        ("/predict", b"multipart/form-data; boundary=B", b'--B\r\nContent-Disposition: form-data; name="image"; '
         b'filename="a"\r\n\r\n', b"too_large"),  # file_too_large or request_too_large: both stop it
        # a file over the per-file limit is that item's error and skipped; the body limit stops it
        ("/predict-batch", b"multipart/form-data; boundary=B", b'--B\r\nContent-Disposition: form-data; '
         b'name="images"; filename="a"\r\n\r\n', b"request_too_large"),
        ("/v2/models/dscnet/infer", b"application/json", b'{"inputs": [{"data": ["', b"over the limit"),
    ],
)
def test_an_endless_upload_is_cut_off_at_the_limit(
    tiny_model: Path, path: str, content_type: bytes, head: bytes, code: bytes
) -> None:
    limits = {"max_upload_bytes": 64 * 1024, "max_batch_bytes": 256 * 1024}
    with TestClient(create_app(Settings(model_path=tiny_model, ort_threads=1, **limits))) as client:
        chunks, sent = post_endless_body(client, [], path=path, content_type=content_type, head=head)
        pulled = sum(map(len, chunks))
        assert sent[0]["status"] == 413 and code in response_body(sent)
        limit = limits["max_batch_bytes"] if path != "/predict" else limits["max_upload_bytes"]
        assert pulled <= limit + 2 * 65536 + 64 * 1024  # stopped within a chunk or two of its limit
        assert client.get("/health/ready").status_code == 200
