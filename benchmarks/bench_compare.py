"""One run, one table: the model alone, the service over HTTP, and a Keras-in-FastAPI server.

1. the model alone: onnxruntime images/s at batch 1, 4, 8, 16, 32 on preprocessed float
   tensors, with the service's own session (`load_classifier`); decode+resize ms per image
   for dataset JPEGs and for a 2000x1500 camera-like JPEG made in code, and the quality
   checks' ms per decoded image;
2. the service (`dscnet serve` in a child process) over loopback HTTP: /predict at each
   concurrency (p50, p99, images/s, errors), /predict-batch images/s, its RSS under load;
   once per configuration (the shipped defaults, micro-batching on, and optionally others:
   the code before this work from another source tree, extra settings);
3. `benchmarks/keras_server.py` (Keras `model.predict` in FastAPI), same clients, same images;
then the ratios. Prints figures; asserts nothing. The load generator runs in this process on
the same CPUs as the servers, as any loopback benchmark does.

    python benchmarks/bench_compare.py --model models/dscnet.onnx
    python benchmarks/bench_compare.py --tree before=/tmp/dscnet-before --duration-s 15
    python benchmarks/bench_compare.py --config small:DSCNET_BATCH_MAX_SIZE=8 --skip-keras
    python benchmarks/bench_compare.py --config two-workers:WEB_CONCURRENCY=2 --only two-workers
    python benchmarks/bench_compare.py --int8 models/dscnet-int8.onnx     # after python -m training.quantize
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks")]

from app.classifier import OnnxClassifier, load_classifier  # noqa: E402
from app.cpus import available_cpus  # noqa: E402
from app.imaging import decode_image  # noqa: E402
from app.quality import assess_quality  # noqa: E402
from loadgen import ChildServer, LoadResult, MemorySampler, free_port, multipart_request, run_load  # noqa: E402

BATCH_SIZES = (1, 4, 8, 16, 32)
DEFAULT_DATA = Path(os.environ.get("DSCNET_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "all-taleqani"))


# -- inputs -------------------------------------------------------------------------------


def dataset_images(folder: Path, count: int) -> list[tuple[str, bytes]]:
    files = sorted(folder.rglob("*.jpg"))
    if not files:
        sys.exit(f"no JPEGs under {folder}; set --images or DSCNET_DATA_DIR")
    files = files[:: max(1, len(files) // count)][:count]  # spread over every class folder
    return [(f.name, f.read_bytes()) for f in files]


def camera_jpeg(width: int = 2000, height: int = 1500) -> bytes:
    """A camera-sized JPEG with smooth structure and sensor-like noise (compresses like a photo)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cells = 60 * np.sin(x / 37.0) * np.cos(y / 53.0)
    pixels = np.stack([200 + cells, 170 - cells / 2, 210 + cells / 3], axis=-1) + rng.normal(0, 6, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# -- 1. the model alone ---------------------------------------------------------------------


def time_calls(call, min_seconds: float, min_calls: int = 3) -> tuple[float, float]:
    """Median wall seconds per call and mean CPU seconds per call (this process), after a warm-up call."""
    call()
    times: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times), (time.process_time() - cpu_start) / len(times)


def model_alone(classifier: OnnxClassifier, tensors: np.ndarray, seconds: float) -> dict[int, tuple[float, float]]:
    """Wall and CPU seconds per session run at each batch size, on ready float32 tensors."""
    session, name = classifier.session, classifier.input_name
    per_run = {}
    for batch in BATCH_SIZES:
        x = np.ascontiguousarray(np.resize(tensors, (batch, *tensors.shape[1:])))
        per_run[batch] = time_calls(lambda x=x: session.run([classifier.output_name], {name: x}), seconds)
    return per_run


def parallel_runs(classifier: OnnxClassifier, tensors: np.ndarray, batch: int, runs: int, seconds: float) -> float:
    """Images/s with `runs` threads each calling the session at once (for single-thread sessions)."""
    session, name = classifier.session, classifier.input_name
    x = np.ascontiguousarray(np.resize(tensors, (batch, *tensors.shape[1:])))
    session.run([classifier.output_name], {name: x})
    counts = [0] * runs
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            session.run([classifier.output_name], {name: x})
            counts[i] += batch

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(runs)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def per_item_ms(step, items: list, seconds: float) -> float:
    """Milliseconds per item of `step(item)` over all `items`, repeated for about `seconds`."""
    per_round, _ = time_calls(lambda: [step(item) for item in items], seconds, min_calls=2)
    return per_round / len(items) * 1000


# -- 2 and 3. servers over HTTP -------------------------------------------------------------


@dataclass
class ServerFigures:
    name: str
    note: str
    predict: list[LoadResult]
    batch: LoadResult | None
    rss_idle_mib: float
    rss_peak_mib: float


def measure_server(server: ChildServer, name: str, note: str, images: list[tuple[str, bytes]],
                   concurrency: list[int], seconds: float, batch_size: int | None) -> ServerFigures:
    host = server.url.removeprefix("http://")
    singles = [multipart_request("/predict", "image", [image], host) for image in images]
    run_load(server.url, singles, 2, 2.0, warm_up_s=0.0)  # warm caches and lazy paths
    rss_idle = server.memory_mib()
    results = []
    with MemorySampler(server) as memory:
        for c in concurrency:
            results.append(with_cpu(server, lambda c=c: run_load(server.url, singles, c, seconds, min_requests=c)))
            print(f"  {name}: /predict x{c}: {results[-1].images_per_s:.1f} images/s, "
                  f"{results[-1].cpu_ms_per_image:.1f} CPU ms/image", flush=True)
        batch = None
        if batch_size:
            files = (images * batch_size)[:batch_size]
            request = multipart_request("/predict-batch", "images", files, host)
            batch = with_cpu(server, lambda: run_load(server.url, [request], 1, seconds,
                                                      images_per_request=batch_size, min_requests=3))
    return ServerFigures(name, note, results, batch, rss_idle, max(memory.peak_mib, server.memory_mib("VmHWM")))


def with_cpu(server: ChildServer, load) -> LoadResult:
    """Run `load()` and record the server's CPU seconds over it."""
    before = server.cpu_seconds()
    result = load()
    result.server_cpu_s = server.cpu_seconds() - before
    return result


def dscnet_server(src: Path, model: Path, env: dict[str, str]) -> ChildServer:
    """`dscnet serve` from the source tree `src`; DSCNET_MODEL_PATH in `env` replaces `model`.

    With WEB_CONCURRENCY in `env`, the container's start command (docker/serve.py) instead, which
    runs that many uvicorn workers; CPU and memory are then those of all its processes.
    """
    port = free_port()
    model = Path(env.get("DSCNET_MODEL_PATH", model)).resolve()
    if "WEB_CONCURRENCY" in env:
        command = [sys.executable, str(src / "docker" / "serve.py")]
    else:
        command = [sys.executable, "-m", "dscnet_cli", "serve", "--model", str(model)]
    return ChildServer(
        command, port, "/health/ready",
        cwd=src, env={"DSCNET_PORT": str(port), "DSCNET_HOST": "127.0.0.1", "DSCNET_LOG_LEVEL": "info", **env,
                      "DSCNET_MODEL_PATH": str(model),
                      "PYTHONPATH": os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)},
    )


def keras_server(keras_model: Path) -> ChildServer:
    port = free_port()
    return ChildServer(
        [sys.executable, "-m", "uvicorn", "benchmarks.keras_server:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        port, "/info", cwd=REPO_ROOT, env={"KERAS_MODEL_PATH": str(keras_model), "PYTHONPATH": str(REPO_ROOT)},
    )


# -- the report -----------------------------------------------------------------------------


def print_report(args: argparse.Namespace, per_run: dict[int, tuple[float, float]], parallel: dict[int, float],
                 dataset_decode_ms: float, camera_decode_ms: float, quality_ms: float, servers: list[ServerFigures],
                 threads: int, int8_per_run: dict[int, tuple[float, float]]) -> None:
    cpus = available_cpus()
    print("\n## Model alone (onnxruntime, the service's session options, float32 tensors ready)\n")
    print(f"| batch | ms per run | images/s ({threads} intra-op threads) | CPU ms/image "
          f"| images/s ({cpus} runs x 1 thread) | int8 images/s ({threads} threads) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch in BATCH_SIZES:
        wall, cpu = per_run[batch]
        par = parallel.get(batch)
        int8 = f"{batch / int8_per_run[batch][0]:.1f}" if batch in int8_per_run else "-"
        print(f"| {batch} | {wall * 1000:.1f} | {batch / wall:.1f} | {cpu * 1000 / batch:.1f} | "
              f"{f'{par:.1f}' if par else '-'} | {int8} |")
    best = max([b / s[0] for b, s in per_run.items()] + list(parallel.values()))  # float32 only
    batch1_ms = per_run[1][0] * 1000
    print(f"\nmodel-alone best: {best:.1f} images/s; batch-1 latency {batch1_ms:.1f} ms")
    print(f"decode+resize (decode_image): dataset JPEGs {dataset_decode_ms:.2f} ms/image, "
          f"2000x1500 camera JPEG {camera_decode_ms:.1f} ms/image")
    print(f"quality checks (assess_quality, on the decoded dataset images): {quality_ms:.2f} ms/image")
    # CPU-seconds per image if the CPUs did decode and the model, nothing else:
    bound = cpus / (cpus / best + dataset_decode_ms / 1000)
    print(f"model + decode bound on {cpus} CPUs: {bound:.1f} images/s")

    print("\n## Over HTTP on loopback (dataset JPEGs; closed-loop clients)\n")
    print("| server | clients | p50 ms | p99 ms | images/s | errors | server CPU ms/image | vs model alone "
          "| vs model+decode |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for figures in servers:
        for r in figures.predict:
            print(f"| {figures.name} /predict | {r.concurrency} | {r.percentile_ms(50):.1f} | "
                  f"{r.percentile_ms(99):.1f} | {r.images_per_s:.1f} | {r.errors} | {r.cpu_ms_per_image:.1f} | "
                  f"{r.images_per_s / best:.0%} | {r.images_per_s / bound:.0%} |")
        if figures.batch is not None:
            b = figures.batch
            print(f"| {figures.name} /predict-batch x{b.images_per_request} | 1 | {b.percentile_ms(50):.1f} | "
                  f"{b.percentile_ms(99):.1f} | {b.images_per_s:.1f} | {b.errors} | {b.cpu_ms_per_image:.1f} | "
                  f"{b.images_per_s / best:.0%} | {b.images_per_s / bound:.0%} |")
    print("\n| server | RSS idle MiB | RSS peak under load MiB | what |")
    print("|---|---:|---:|---|")
    for figures in servers:
        print(f"| {figures.name} | {figures.rss_idle_mib:.0f} | {figures.rss_peak_mib:.0f} | {figures.note} |")

    keras = next((f for f in servers if f.name == "keras"), None)
    print("\n## Ratios\n")
    target_latency = 1.3 * (dataset_decode_ms + batch1_ms)
    for figures in servers:
        if figures is keras:
            continue
        at = {r.concurrency: r for r in figures.predict}
        line = []
        if 16 in at:
            line.append(f"/predict@16 / model-alone best = {at[16].images_per_s / best:.2f}")
            line.append(f"/ model+decode bound = {at[16].images_per_s / bound:.2f}")
        if 1 in at:
            line.append(f"p50@1 {at[1].percentile_ms(50):.1f} ms vs 1.3x(decode+batch-1) = {target_latency:.1f} ms")
        if keras is not None:
            k = {r.concurrency: r for r in keras.predict}
            ratios = [f"x{c}: {at[c].images_per_s / k[c].images_per_s:.1f}x" for c in at if c in k and k[c].ok]
            line.append("vs Keras server " + ", ".join(ratios))
        print(f"- {figures.name}: " + "; ".join(line))


def parse_assignments(text: str) -> dict[str, str]:
    """`VAR=VALUE,VAR=VALUE` (as --tree and --config take them) as a dict; empty text, no variables."""
    return dict(item.split("=", 1) for item in text.split(",") if item)


def parse_tree(spec: str) -> tuple[str, Path, dict[str, str]]:
    """`NAME=PATH[:VAR=VALUE,...]` (a --tree value) as its name, source tree and settings."""
    name, _, rest = spec.partition("=")
    path, _, assignments = rest.partition(":")
    return name, Path(path), parse_assignments(assignments)


def git_describe(tree: Path) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    return f"{tree} at {commit.stdout.strip()}" if commit.returncode == 0 else f"{tree} (not a git checkout)"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "dscnet.onnx")
    parser.add_argument("--keras-model", type=Path, default=REPO_ROOT / "runs" / "blocks" / "model.keras")
    parser.add_argument("--images", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured seconds per load level")
    parser.add_argument("--batch", type=int, default=32, help="images per /predict-batch request")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH[:VAR=VALUE,...]",
                        help="also measure the service from another source tree, e.g. before=/tmp/old:DSCNET_BATCHING=false")
    parser.add_argument("--config", action="append", default=[], metavar="NAME:VAR=VALUE,...",
                        help="an extra service configuration to measure (repeatable)")
    parser.add_argument("--only", nargs="+", help="measure only these server names")
    parser.add_argument("--src", type=Path, default=REPO_ROOT,
                        help="the source tree the service configurations run from (default: this one)")
    parser.add_argument("--int8", type=Path, help="also measure this int8 model (training.quantize), alone and served")
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args()

    images = dataset_images(args.images, 64)
    threads = available_cpus()
    print(f"{threads} usable CPUs ({os.cpu_count()} on the host); load average {load_average()}; "
          f"model {args.model}; {len(images)} dataset JPEGs, mean {statistics.mean(len(d) for _, d in images) / 1024:.0f} KiB; "
          f"source {git_describe(args.src)}",
          flush=True)

    decoded = [decode_image(d) for _, d in images]
    tensors = np.stack(decoded).astype(np.float32)
    classifier = load_classifier(args.model, args.model.with_suffix(".json"), threads)
    per_run = model_alone(classifier, tensors, seconds=2.0)
    single = load_classifier(args.model, args.model.with_suffix(".json"), 1)
    parallel = {b: parallel_runs(single, tensors, b, threads, seconds=3.0) for b in (1, 8)} if threads > 1 else {}
    del classifier, single
    int8_per_run = {}
    if args.int8:
        int8 = load_classifier(args.int8, args.int8.with_suffix(".json"), threads)
        int8_per_run = model_alone(int8, tensors, seconds=2.0)
        del int8
    dataset_decode = per_item_ms(decode_image, [d for _, d in images], seconds=2.0)
    camera = camera_jpeg()
    camera_decode = per_item_ms(decode_image, [camera], seconds=2.0)
    # the service's other per-image step before the model (not in the targets' decode figure)
    quality = per_item_ms(assess_quality, decoded, seconds=2.0)
    print(f"model alone and decode done; load average {load_average()}", flush=True)

    configs: list[tuple[str, Path, dict[str, str], str]] = []
    for spec in args.tree:
        name, path, env = parse_tree(spec)
        configs.append((name, path, env, f"the service from {path} {' '.join(f'{k}={v}' for k, v in env.items())}"))
    configs.append(("service", args.src, {}, "the shipped defaults (micro-batching off)"))
    configs.append(("batched", args.src, {"DSCNET_BATCHING": "true"}, "micro-batching on"))
    if args.int8:
        configs.append(("int8", args.src, {"DSCNET_MODEL_PATH": str(args.int8)}, f"the shipped defaults, {args.int8.name}"))
    for spec in args.config:
        name, _, assignments = spec.partition(":")
        env = parse_assignments(assignments)
        configs.append((name, args.src, env, ", ".join(f"{k}={v}" for k, v in env.items())))

    servers: list[ServerFigures] = []
    for name, src, env, note in configs:
        if args.only and name not in args.only:
            continue
        with dscnet_server(src, args.model, env) as server:
            servers.append(measure_server(server, name, note, images, args.concurrency, args.duration_s, args.batch))
    if not args.skip_keras and (not args.only or "keras" in args.only):
        with keras_server(args.keras_model) as server:
            import httpx

            served = httpx.get(server.url + "/info").json()["model"]
            servers.append(measure_server(server, "keras", f"Keras model.predict in FastAPI: {served}",
                                          images, args.concurrency, args.duration_s, None))
    print_report(args, per_run, parallel, dataset_decode, camera_decode, quality, servers, threads, int8_per_run)
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
