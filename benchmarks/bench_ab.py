"""Servers side by side: all of them up at once, load levels taken in turns, order alternating.

A service configuration measured after another one meets another machine: on these shared
CPUs the same server's figures moved by up to 2x within the hour (docs/PERFORMANCE.md). Here
each round starts every server afresh, all before any is measured (an idle one costs nothing:
onnxruntime's threads do not spin), then runs every load level on every server in turn, the
order reversed every other round, so that drift falls on all of them alike. Fresh processes,
because two processes of the same code differed by 7 % in images/s here, one ahead in most
rounds, when each kept its process through all of them (eleventh session). Per level it prints
each server's median images/s (with the range over rounds), p50 and p99 latency and CPU ms per
image, and in how many rounds it was ahead of the first server. The real model by default;
prints figures, asserts nothing.

    python benchmarks/bench_ab.py --server lanes=. --server batched=.:DSCNET_BATCHING=true
    git archive <commit> | tar -x -C /tmp/old
    python benchmarks/bench_ab.py --server before=/tmp/old --server after=. --clients 1 --rounds 12
"""

from __future__ import annotations

import argparse
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks")]

from bench_compare import DEFAULT_DATA, dataset_images, dscnet_server, load_average, parse_tree, with_cpu  # noqa: E402
from loadgen import LoadResult, multipart_request, run_load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", action="append", required=True, metavar="NAME=PATH[:VAR=VALUE,...]",
                        help="a service to measure: its source tree (. for this checkout) and settings; repeat")
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "dscnet.onnx")
    parser.add_argument("--images", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration-s", type=float, default=8.0, help="measured seconds per level and round")
    args = parser.parse_args()
    specs = [parse_tree(spec) for spec in args.server]
    if len({name for name, _, _ in specs}) != len(specs):
        parser.error("give every --server its own name")
    images = dataset_images(args.images, 64)
    print(f"load average {load_average()}; model {args.model}; servers "
          + "; ".join(f"{name}: {path} {env or ''}" for name, path, env in specs), flush=True)

    results: dict[tuple[str, int], list[LoadResult]] = {}
    for round_ in range(args.rounds):
        order = specs if round_ % 2 == 0 else specs[::-1]
        with ExitStack() as stack:
            # New processes every round, all up before any is measured (an idle one costs nothing).
            servers = {name: stack.enter_context(dscnet_server(path.resolve(), args.model,
                                                               {"DSCNET_LOG_LEVEL": "warning", **env}))
                       for name, path, env in order}
            requests = {name: [multipart_request("/predict", "image", [image], server.url.removeprefix("http://"))
                               for image in images] for name, server in servers.items()}
            for name, server in servers.items():
                run_load(server.url, requests[name], 4, 2.0, warm_up_s=0.0)  # warm caches and lazy paths
            for clients in args.clients:
                for name, server in servers.items():
                    result = with_cpu(server, lambda: run_load(server.url, requests[name], clients, args.duration_s,
                                                               min_requests=clients))
                    results.setdefault((name, clients), []).append(result)
                    print(f"round {round_ + 1} x{clients} {name}: {result.images_per_s:.1f} images/s, "
                          f"p50 {result.percentile_ms(50):.1f} ms, {result.cpu_ms_per_image:.1f} CPU ms/image, "
                          f"{result.errors} errors", flush=True)

    first = specs[0][0]
    print(f"\n| clients | server | images/s, median (range) | p50 ms, median | p99 ms, median | CPU ms/image, median | "
          f"rounds ahead of {first} | errors |\n|---:|---|---:|---:|---:|---:|---:|---:|")
    for clients in args.clients:
        for name, _, _ in specs:
            runs = results[(name, clients)]
            rates = [r.images_per_s for r in runs]
            ahead = "" if name == first else str(sum(
                r.images_per_s > b.images_per_s for r, b in zip(runs, results[(first, clients)], strict=True)))
            print(f"| {clients} | {name} | {statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f}) | "
                  f"{statistics.median(r.percentile_ms(50) for r in runs):.1f} | "
                  f"{statistics.median(r.percentile_ms(99) for r in runs):.1f} | "
                  f"{statistics.median(r.cpu_ms_per_image for r in runs):.1f} | {ahead} | "
                  f"{sum(r.errors for r in runs)} |")
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
