"""The least an HTTP upload service can do under uvicorn, as a yardstick for issue 5's ratios.

Apps that answer `POST /predict` with a small JSON after reading the whole upload, each doing a
little more than the one before, all on the event loop (no thread hand-off, no model, no metrics,
no log line):

- `raw`: a bare ASGI callable, no framework: what uvicorn itself costs per request;
- `upload`: FastAPI with an `UploadFile` parameter, as the service declares its upload: uvicorn,
  the framework, its dependency resolution and the multipart parser;
- `decode`: `upload`, then the service's `decode_image` (the least a classifier must do);
- `checks`: `decode`, then the service's quality checks (`assess_quality`).

`benchmarks/bench_floor.py` serves them with the settings `dscnet serve` uses and puts their
cost per request beside the model's. Not part of the service.

    uvicorn benchmarks.floor_server:raw --port 8002 --no-access-log
"""

from __future__ import annotations

from fastapi import FastAPI, File, UploadFile

from app.imaging import decode_image
from app.quality import assess_quality

ANSWER = b'{"label":"benign","probabilities":{"benign":1.0,"early_pre_b":0.0,"pre_b":0.0,"pro_b":0.0}}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def raw(scope, receive, send) -> None:
    """ASGI without a framework: drain the request body, answer ANSWER (GET /health/ready too)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def _upload_app(work) -> FastAPI:
    """FastAPI with one upload route that reads the file whole and answers after `work(data)`."""
    app = FastAPI(title="upload floor", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health/ready")
    async def ready() -> dict:
        return {"status": "ready"}

    @app.post("/predict")
    async def predict(image: UploadFile = File(...)) -> dict:  # noqa: B008  (FastAPI's idiom)
        data = await image.read()
        return {"label": "benign", "bytes": len(data), "warnings": work(data)}

    return app


upload = _upload_app(lambda data: 0)
decode = _upload_app(lambda data: int(decode_image(data)[0, 0, 0]))
checks = _upload_app(lambda data: [w.code for w in assess_quality(decode_image(data))])
