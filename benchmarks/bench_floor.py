"""How close any uvicorn service can come to the model alone on these CPUs: issue 5's ceiling.

Issue 5 asks /predict at 16 clients for 85% of the model-alone best, with the load generator
on the same CPUs. On a host whose CPUs the model alone already fills, every CPU millisecond a
request costs besides the model (the server's HTTP, upload parsing and answer; the client's
send and read) comes out of the model's share. If the model costs m CPU ms per image and the
rest f per request, the most a saturated host can answer is cores / (m + f), a ratio to the model
alone of about m / (m + f); 85% needs f <= 0.18 m. This script measures f for servers that do
less and less, all in one run beside m:

1. the model alone: the service's own session, one thread per CPU's run, batch 1 (the
   model-alone best of bench_compare), images/s and CPU ms per image (this process's CPU);
2. over loopback HTTP at `--clients` concurrent keep-alive clients, sending the dataset's JPEGs
   as multipart uploads (the same requests as bench_compare):
   - `raw`: a bare ASGI app that drains the body and answers a fixed JSON (uvicorn's own cost),
   - `upload`: FastAPI with an UploadFile parameter (the framework and multipart parsing),
   - `decode`: `upload` and the service's `decode_image`, on the event loop,
   - `checks`: `decode` and the service's quality checks, on the event loop,
   - `service`: `dscnet serve` with the tests' tiny model (everything the service does besides
     the model: decode, quality checks, referral, metrics, the answer);
   each with requests/s, the server's CPU ms per request (from /proc) and the client's (this
   process's CPU time while the load ran);
then the ceiling each leaves: cores / (m + f), and its ratio to the model-alone best and to
bench_compare's model + decode bound (the two ways of accounting for decode).
Prints figures; asserts nothing.

    python benchmarks/bench_floor.py
    python benchmarks/bench_floor.py --clients 16 --duration-s 10 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks"), str(REPO_ROOT / "tests")]

from app.classifier import load_classifier  # noqa: E402
from app.cpus import available_cpus  # noqa: E402
from app.imaging import decode_image  # noqa: E402
from bench_compare import (  # noqa: E402
    DEFAULT_DATA, dataset_images, dscnet_server, load_average, parallel_runs, per_item_ms, with_cpu,
)
from helpers_onnx import build_tiny_model, write_card  # noqa: E402
from loadgen import ChildServer, free_port, multipart_request, run_load  # noqa: E402

TARGET = 0.85


@dataclass
class Floor:
    name: str
    requests_per_s: float
    server_cpu_ms: float
    client_cpu_ms: float

    @property
    def cpu_ms(self) -> float:
        return self.server_cpu_ms + self.client_cpu_ms


def floor_server(app: str) -> ChildServer:
    """uvicorn serving `benchmarks.floor_server:<app>` as `dscnet serve` runs (default loop and
    HTTP parser, no access log)."""
    port = free_port()
    return ChildServer(
        [sys.executable, "-m", "uvicorn", f"benchmarks.floor_server:{app}", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        port, "/health/ready", cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT)},
    )


def measure(server: ChildServer, name: str, images: list[tuple[str, bytes]], clients: int,
            seconds: float) -> Floor:
    host = server.url.removeprefix("http://")
    requests = [multipart_request("/predict", "image", [image], host) for image in images]
    run_load(server.url, requests, clients, 2.0, warm_up_s=0)  # warm: threads, caches, allocator
    client_start = time.process_time()
    result = with_cpu(server, lambda: run_load(server.url, requests, clients, seconds, warm_up_s=0))
    client_cpu_s = time.process_time() - client_start
    answered = len(result.latencies_s)
    if result.errors:
        print(f"  {name}: {result.errors} answers were not 200: {result.statuses}", flush=True)
    return Floor(name, answered / seconds, 1000 * result.server_cpu_s / max(answered, 1),
                 1000 * client_cpu_s / max(answered, 1))


def model_alone(model: Path, images: list[tuple[str, bytes]], runs: int, seconds: float) -> tuple[float, float]:
    """(images/s, CPU ms per image) of `runs` single-thread runs of the service's session at batch 1."""
    tensors = np.stack([decode_image(data) for _, data in images]).astype(np.float32)
    classifier = load_classifier(model, model.with_suffix(".json"), 1)
    parallel_runs(classifier, tensors, 1, runs, seconds=1.0)  # warm
    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    rate = parallel_runs(classifier, tensors, 1, runs, seconds)
    cpu_s = time.process_time() - cpu_start
    return rate, 1000 * cpu_s / (rate * (time.perf_counter() - wall_start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "dscnet.onnx")
    parser.add_argument("--images", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the servers, interleaved")
    args = parser.parse_args()

    cores = available_cpus()
    images = dataset_images(args.images, 64)
    print(f"{cores} usable CPUs; load average {load_average()}; model {args.model}; "
          f"{len(images)} dataset JPEGs; {args.clients} clients", flush=True)
    rate, model_cpu_ms = model_alone(args.model, images, cores, seconds=5.0)
    decode_ms = per_item_ms(decode_image, [d for _, d in images], seconds=2.0)
    print(f"model alone: {rate:.1f} images/s, {model_cpu_ms:.2f} CPU ms/image; decode {decode_ms:.2f} ms/image",
          flush=True)

    figures: dict[str, list[Floor]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_model(Path(tmp) / "tiny.onnx")
        write_card(tiny)
        starts = {
            "raw": lambda: floor_server("raw"),
            "upload": lambda: floor_server("upload"),
            "decode": lambda: floor_server("decode"),
            "checks": lambda: floor_server("checks"),
            "service": lambda: dscnet_server(REPO_ROOT, tiny, {}),
        }
        for round_ in range(args.rounds):
            for name, start in starts.items():
                with start() as server:
                    floor = measure(server, name, images, args.clients, args.duration_s)
                figures.setdefault(name, []).append(floor)
                print(f"round {round_ + 1} {name}: {floor.requests_per_s:.0f} requests/s, server "
                      f"{floor.server_cpu_ms:.2f} + client {floor.client_cpu_ms:.2f} CPU ms/request", flush=True)

    notes = {
        "raw": "bare ASGI under uvicorn: reads the upload, answers a fixed JSON",
        "upload": "FastAPI, one UploadFile parameter, answers a small JSON",
        "decode": "`upload` + decode_image",
        "checks": "`decode` + the quality checks",
        "service": "dscnet serve with the tests' tiny model (decode, checks, referral, metrics; a run of about 0.2 ms)",
    }
    bound = cores / (cores / rate + decode_ms / 1000)  # as bench_compare: the model alone and decode
    print(f"\nModel alone: {rate:.1f} images/s, {model_cpu_ms:.2f} CPU ms per image; "
          f"85% of it is {TARGET * rate:.1f} images/s; the model + decode bound {bound:.1f} images/s.")
    print(f"\n| server at {args.clients} clients (medians of {args.rounds}) | requests/s | server CPU ms | "
          "client CPU ms | f, CPU ms per request | ceiling with the model, images/s | ceiling / model alone | "
          "ceiling / model + decode bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in figures.items():
        median = {key: statistics.median(getattr(f, key) for f in runs)
                  for key in ("requests_per_s", "server_cpu_ms", "client_cpu_ms", "cpu_ms")}
        ceiling = cores * 1000 / (model_cpu_ms + median["cpu_ms"])
        print(f"| `{name}`: {notes[name]} | {median['requests_per_s']:.0f} | {median['server_cpu_ms']:.2f} | "
              f"{median['client_cpu_ms']:.2f} | {median['cpu_ms']:.2f} | {ceiling:.1f} | {ceiling / rate:.0%} | "
              f"{ceiling / bound:.0%} |")
    print(f"\n85% of the model alone leaves f <= {cores * 1000 / (TARGET * rate) - model_cpu_ms:.2f} CPU ms per "
          f"request (server and client together) on {cores} CPUs (decode alone, in a loop: {decode_ms:.2f} ms).")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
