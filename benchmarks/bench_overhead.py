"""What a /predict costs the server besides the model: server CPU ms per request with a model
that costs nothing (the tests' tiny ONNX model), for one or more source trees, interleaved.

With the real model's cost taken out, what is left is decoding, the quality checks, the
middlewares, multipart parsing, the JSON answer, the log line and the thread hand-offs: the
part of a request that issue 5's targets say must stay small. Rounds alternate between the
trees so that drifting machine load falls on all of them alike. Prints figures; asserts nothing.

    python benchmarks/bench_overhead.py                                   # this checkout
    python benchmarks/bench_overhead.py --tree old=/tmp/old --tree new=/tmp/new --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks"), str(REPO_ROOT / "tests")]

from bench_compare import DEFAULT_DATA, dataset_images, dscnet_server  # noqa: E402
from bench_floor import measure  # noqa: E402
from helpers_onnx import build_tiny_model, write_card  # noqa: E402


def cpu_ms_per_request(src: Path, model: Path, images: list[tuple[str, bytes]], clients: int,
                       seconds: float) -> tuple[float, float]:
    """(server CPU ms per answered /predict, requests/s) for `dscnet serve` from `src`."""
    with dscnet_server(src, model, {}) as server:
        floor = measure(server, src.name, images, clients, seconds)
    return floor.server_cpu_ms, floor.requests_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="a source tree to measure (default: this checkout)")
    parser.add_argument("--images", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree) or {"checkout": str(REPO_ROOT)}
    images = dataset_images(args.images, 64)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny.onnx")
        write_card(model)
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
        for round_ in range(args.rounds):
            for name, src in trees.items():
                cpu_ms, rate = cpu_ms_per_request(Path(src), model, images, args.clients, args.duration_s)
                figures[name].append((cpu_ms, rate))
                print(f"round {round_ + 1} {name}: {cpu_ms:.2f} CPU ms/request, {rate:.1f} requests/s", flush=True)
    print(f"\n| tree | server CPU ms per /predict (median of {args.rounds}) | requests/s |\n|---|---:|---:|")
    for name, runs in figures.items():
        print(f"| {name} | {statistics.median(c for c, _ in runs):.2f} | {statistics.median(r for _, r in runs):.1f} |")


if __name__ == "__main__":
    main()
