"""Soak: steady mixed traffic against `dscnet serve` for a long time; is its memory flat?

Starts the service in a child process (or uses --url with --pid), sends a mix of good
images, bad ones (not an image, truncated, a pixel bomb), batches and probes from a few
client threads, and samples the service's resident memory (RSS) as it goes. Prints the
samples and the figures: RSS at the start (after a warm-up), at the end, the growth, and
the slope over the second half. Asserts nothing.

    python benchmarks/soak.py --duration-s 600                  # the tiny model unless models/dscnet.onnx exists
    python benchmarks/soak.py --model models/dscnet.onnx --duration-s 3600 --concurrency 4
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_process import ServiceProcess, env_assignment, resolve_model  # noqa: E402


def encoded(size: tuple[int, int], fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def workload() -> list[tuple[str, list[tuple[str, bytes]]]]:
    """(path, files) pairs cycled by the clients: mostly good images, some bad, some batches."""
    good = [encoded((640, 480), "JPEG", 1), encoded((300, 300), "PNG", 2), encoded((1024, 768), "JPEG", 3)]
    bomb = _png_bomb()
    bad = [b"not an image" * 50, good[0][: len(good[0]) // 2], bomb]
    items: list[tuple[str, list[tuple[str, bytes]]]] = []
    items += [("/predict", [("image", g)]) for g in good] * 3
    items += [("/predict", [("image", b)]) for b in bad]
    items.append(("/predict-batch", [("images", g) for g in good * 3] + [("images", bad[0])]))
    items.append(("/health/ready", []))
    return items


def _png_bomb() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def client(url: str, items: list, offset: int, stop: threading.Event, counts: Counter, lock: threading.Lock) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        i = offset
        while not stop.is_set():
            path, files = items[i % len(items)]
            i += 1
            try:
                if files:
                    response = http.post(path, files=[(f, (f"x{n}", d)) for n, (f, d) in enumerate(files)])
                else:
                    response = http.get(path)
                key = str(response.status_code)
            except httpx.HTTPError as err:
                key = type(err).__name__
            with lock:
                counts[key] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="default: models/dscnet.onnx if present, else the tiny test model")
    parser.add_argument("--duration-s", type=float, default=600)
    parser.add_argument("--warmup-s", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sample-every-s", type=float, default=30)
    parser.add_argument("--json-out", type=Path, help="also write the figures here")
    parser.add_argument("--env", action="append", default=[], type=env_assignment, metavar="NAME=VALUE",
                        help="an environment variable for the service (repeatable), e.g. MALLOC_ARENA_MAX=2")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="dscnet-soak-"))
    model = resolve_model(args.model, scratch)
    items = workload()
    counts: Counter = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    env = dict(args.env)
    with ServiceProcess(model, env=env) as service:
        print(f"service {service.url} pid {service.pid}, model {model}, {args.concurrency} clients, "
              f"{args.duration_s:.0f} s after a {args.warmup_s:.0f} s warm-up, env {env}", flush=True)
        threads = [threading.Thread(target=client, args=(service.url, items, n * 3, stop, counts, lock), daemon=True)
                   for n in range(args.concurrency)]
        for thread in threads:
            thread.start()
        time.sleep(args.warmup_s)
        with lock:
            counts.clear()
        samples: list[tuple[float, float]] = []
        start = time.monotonic()
        while True:
            elapsed = time.monotonic() - start
            samples.append((elapsed, service.rss_mib()))
            with lock:
                done = sum(counts.values())
            print(f"  t={elapsed:6.0f} s  RSS {samples[-1][1]:7.1f} MiB  requests {done}", flush=True)
            if elapsed >= args.duration_s:
                break
            time.sleep(min(args.sample_every_s, max(0.0, args.duration_s - elapsed)))
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        ready = httpx.get(service.url + "/health/ready", timeout=30).status_code
    figures = {**summarise(samples, counts, args.duration_s, ready), "env": env}
    print(json.dumps(figures, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))


def summarise(samples: list[tuple[float, float]], counts: Counter, duration_s: float, ready: int) -> dict:
    times = np.array([t for t, _ in samples])
    rss = np.array([r for _, r in samples])
    half = times >= times[-1] / 2
    slope = float(np.polyfit(times[half], rss[half], 1)[0] * 60) if half.sum() >= 2 else float("nan")
    total = sum(counts.values())
    return {
        "duration_s": duration_s,
        "requests": total,
        "requests_per_s": round(total / duration_s, 1),
        "statuses": dict(sorted(counts.items())),
        "rss_start_mib": round(float(rss[0]), 1),
        "rss_end_mib": round(float(rss[-1]), 1),
        "rss_max_mib": round(float(rss.max()), 1),
        "rss_growth_mib": round(float(rss[-1] - rss[0]), 1),
        "rss_slope_second_half_mib_per_min": round(slope, 3),
        "ready_after": ready,
    }


if __name__ == "__main__":
    main()
