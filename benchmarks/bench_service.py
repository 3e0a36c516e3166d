"""Latency of POST /predict and throughput of POST /predict-batch, over real HTTP on loopback.

Starts the service in this process (uvicorn on a free loopback port) unless --url names a
running one. Sends real dataset images when it finds them, else synthetic ones. Prints
figures; asserts nothing.

    python benchmarks/bench_service.py --model models/dscnet.onnx --requests 200 --batch 32 --rounds 10
    python benchmarks/bench_service.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from app.cpus import available_cpus  # noqa: E402


def load_images(folder: Path, count: int) -> list[tuple[str, bytes]]:
    files = sorted(folder.rglob("*.jpg"))
    files = files[:: max(1, len(files) // count)][:count]  # spread over every class folder
    if files:
        return [(f.name, f.read_bytes()) for f in files]
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        images.append((f"synthetic-{i}.jpg", buffer.getvalue()))
    return images


def start_server(model: Path):
    from app.cli import build_server
    from app.settings import Settings

    server = build_server(Settings(model_path=model, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            sys.exit("the service did not start; see the log above")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def bench_predict(http: httpx.Client, images: list[tuple[str, bytes]], requests: int, concurrency: int) -> None:
    def one(i: int) -> tuple[float, dict]:
        name, data = images[i % len(images)]
        start = time.perf_counter()
        response = http.post("/predict", files={"image": (name, data, "image/jpeg")})
        elapsed = time.perf_counter() - start
        response.raise_for_status()
        return elapsed, response.json()["timing_ms"]

    for i in range(min(5, requests)):
        one(i)  # warm the connection and the caches
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    latencies_ms = np.array([r[0] for r in results]) * 1000
    decode = statistics.median(r[1]["decode"] for r in results)
    inference = statistics.median(r[1]["inference"] for r in results)
    print(f"/predict        {requests} requests, concurrency {concurrency}: "
          f"p50 {np.percentile(latencies_ms, 50):.1f} ms, p99 {np.percentile(latencies_ms, 99):.1f} ms, "
          f"mean {latencies_ms.mean():.1f} ms, {requests / wall:.1f} requests/s")
    print(f"                server-side medians: decode {decode:.1f} ms, inference {inference:.1f} ms")


def bench_batch(http: httpx.Client, images: list[tuple[str, bytes]], batch: int, rounds: int) -> None:
    files = [("images", (name, data, "image/jpeg")) for name, data in (images * batch)[:batch]]
    http.post("/predict-batch", files=files).raise_for_status()  # warm-up
    start = time.perf_counter()
    inference = []
    for _ in range(rounds):
        response = http.post("/predict-batch", files=files)
        response.raise_for_status()
        assert response.json()["failed"] == 0, response.json()
        inference.append(response.json()["timing_ms"]["inference"])
    wall = time.perf_counter() - start
    print(f"/predict-batch  {rounds} batches of {batch}: {rounds * batch / wall:.1f} images/s, "
          f"{wall / rounds * 1000:.0f} ms per batch (model run median {statistics.median(inference):.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service; default: start one in this process")
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "dscnet.onnx")
    parser.add_argument("--images", type=Path, default=Path(os.environ.get(
        "DSCNET_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "all-taleqani")))
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    images = load_images(args.images, 64)
    server = None
    if args.url:
        url = args.url
    else:
        server, thread, url = start_server(args.model)
    print(f"service {url}, {len(images)} distinct images "
          f"(mean {statistics.mean(len(d) for _, d in images) / 1024:.0f} KiB), "
          f"{available_cpus()} usable CPUs, {os.cpu_count()} host CPUs")
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            model = http.get("/health/ready").json().get("model")
            print(f"model {model}")
            bench_predict(http, images, args.requests, args.concurrency)
            bench_batch(http, images, args.batch, args.rounds)
    finally:
        if server is not None:
            server.should_exit = True
            thread.join(timeout=30)


if __name__ == "__main__":
    main()
