"""Overload: closed-loop load at, above and far above capacity, then back down.

Starts `dscnet serve` in a child process on a free loopback port (or uses --url), then runs
phases of N keep-alive connections, each sending POST /predict as soon as its previous answer
came. For each phase it prints: answers by status, whether every 503 carried Retry-After,
latency of the admitted (200) answers and of the refused (503) ones, images per second, and
the latency of /health/ready probes sent during the phase. The last phase, back at the
first concurrency, shows the recovery. Asserts nothing.

    python benchmarks/load_test.py                                  # 4, 32, 128, 256 then 4 connections
    python benchmarks/load_test.py --phases 2,64,2 --phase-s 20 --env DSCNET_BATCH_QUEUE_IMAGES=32
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --phases 8,128,8
    python benchmarks/load_test.py --honour-retry-after       # clients that back off as told
    python benchmarks/load_test.py --env DSCNET_MAX_CONCURRENT_REQUESTS=10000   # no admission limit

The client is raw asyncio HTTP/1.1 (requests built once, answers read by Content-Length), so
it takes little of the CPU it shares with the service on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import multipart_request, read_response  # noqa: E402
from service_process import ServiceProcess, env_assignment, resolve_model  # noqa: E402


def probe_request(host: str) -> bytes:
    return f"GET /health/ready HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


@dataclass
class Phase:
    concurrency: int
    seconds: float
    latencies: dict[int, list[float]] = field(default_factory=dict)
    retry_after_missing: int = 0
    retry_after_values: list[int] = field(default_factory=list)
    connection_errors: int = 0
    probe_latencies: list[float] = field(default_factory=list)
    probe_failures: int = 0

    def record(self, status: int, seconds: float, headers: dict[str, str]) -> None:
        self.latencies.setdefault(status, []).append(seconds)
        if status == 503:
            if "retry-after" in headers:
                self.retry_after_values.append(int(headers["retry-after"]))
            else:
                self.retry_after_missing += 1

    def summary(self) -> dict:
        def ms(values: list[float], q: float) -> float | None:
            return round(float(np.percentile(values, q)) * 1000, 1) if values else None

        ok, refused = self.latencies.get(200, []), self.latencies.get(503, [])
        answered = sum(len(v) for v in self.latencies.values())
        return {
            "connections": self.concurrency,
            "answers": answered,
            "statuses": {str(k): len(v) for k, v in sorted(self.latencies.items())},
            "refused_share": round(len(refused) / answered, 3) if answered else None,
            "503_without_retry_after": self.retry_after_missing,
            "retry_after_s": sorted(set(self.retry_after_values)),
            "connection_errors": self.connection_errors,
            "images_per_s": round(len(ok) / self.seconds, 1),
            "ok_p50_ms": ms(ok, 50), "ok_p99_ms": ms(ok, 99), "ok_max_ms": ms(ok, 100),
            "refused_p50_ms": ms(refused, 50), "refused_p99_ms": ms(refused, 99),
            "probe_p99_ms": ms(self.probe_latencies, 99), "probe_failures": self.probe_failures,
        }


async def connection(host: str, port: int, request: bytes, stop_at: float, phase: Phase, backoff: bool) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            start = time.perf_counter()
            writer.write(request)
            status, headers = await read_response(reader)
            phase.record(status, time.perf_counter() - start, headers)
            if headers.get("connection", "").lower() == "close":
                writer.close()
                writer = None
            if backoff and status == 503:  # a well-behaved client waits as told
                await asyncio.sleep(min(float(headers.get("retry-after", "1")), max(0.0, stop_at - time.perf_counter())))
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            phase.connection_errors += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()


async def prober(host: str, port: int, stop_at: float, phase: Phase) -> None:
    """A readiness probe every half second on its own connection, as an orchestrator sends them."""
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            writer.write(probe_request(f"{host}:{port}"))
            status, _ = await asyncio.wait_for(read_response(reader), 10)
            writer.close()
            phase.probe_latencies.append(time.perf_counter() - start)
            phase.probe_failures += status != 200
        except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
            phase.probe_failures += 1
        await asyncio.sleep(0.5)


async def run_phase(url: str, image: bytes, concurrency: int, seconds: float, backoff: bool) -> Phase:
    host, port = url.removeprefix("http://").split(":")
    request = multipart_request("/predict", "image", [("s.jpg", image)], f"{host}:{port}")
    phase = Phase(concurrency, seconds)
    stop_at = time.perf_counter() + seconds
    await asyncio.gather(
        prober(host, int(port), stop_at, phase),
        *(connection(host, int(port), request, stop_at, phase, backoff) for _ in range(concurrency)),
    )
    return phase


def smear_like_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service; default: start one in a child process")
    parser.add_argument("--model", type=Path, help="default: models/dscnet.onnx if present, else the tiny test model")
    parser.add_argument("--phases", default="4,32,128,256,4", help="connections per phase, comma-separated")
    parser.add_argument("--phase-s", type=float, default=30)
    parser.add_argument("--env", action="append", default=[], type=env_assignment, metavar="NAME=VALUE",
                        help="an environment variable for the service (repeatable)")
    parser.add_argument("--honour-retry-after", action="store_true",
                        help="clients wait Retry-After after a 503 (default: retry at once, the worst case)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    image = smear_like_jpeg()
    phases = [int(n) for n in args.phases.split(",")]
    env = dict(args.env)
    service = None
    if args.url:
        url = args.url
    else:
        model = resolve_model(args.model, Path(tempfile.mkdtemp(prefix="dscnet-load-")))
        service = ServiceProcess(model, env={"DSCNET_LOG_LEVEL": "warning", **env})
        url = service.url
        print(f"service {url}, model {model}, env {env}", flush=True)
    results = []
    try:
        for concurrency in phases:
            phase = asyncio.run(run_phase(url, image, concurrency, args.phase_s, args.honour_retry_after))
            summary = phase.summary()
            results.append(summary)
            print(json.dumps(summary), flush=True)
    finally:
        if service is not None:
            service.stop()
    print_table(results)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


def print_table(results: list[dict]) -> None:
    print(f"\n{'conns':>5} {'answers':>7} {'200':>6} {'503':>6} {'other':>5} {'no RA':>5} "
          f"{'img/s':>6} {'ok p50':>7} {'ok p99':>7} {'ok max':>7} {'503 p99':>7} {'probe p99':>9} {'probe fail':>10}")
    for r in results:
        other = r["answers"] - r["statuses"].get("200", 0) - r["statuses"].get("503", 0)
        print(f"{r['connections']:>5} {r['answers']:>7} {r['statuses'].get('200', 0):>6} "
              f"{r['statuses'].get('503', 0):>6} {other:>5} {r['503_without_retry_after']:>5} {r['images_per_s']:>6} "
              f"{r['ok_p50_ms'] or '-':>7} {r['ok_p99_ms'] or '-':>7} {r['ok_max_ms'] or '-':>7} "
              f"{r['refused_p99_ms'] or '-':>7} {r['probe_p99_ms'] or '-':>9} {r['probe_failures']:>10}")


if __name__ == "__main__":
    main()
