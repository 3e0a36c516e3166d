"""Does saving onnxruntime's graph optimisation offline pay? Session creation and run time, both ways.

Online: the service's way, the .onnx file optimised at every start (ORT_ENABLE_ALL).
Offline: the file optimised once and saved (`optimized_model_filepath`), then loaded with
optimisation off. Prints figures; asserts nothing.

    python benchmarks/bench_graph_opt.py --model models/dscnet.onnx
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from app.cpus import available_cpus  # noqa: E402

Level = ort.GraphOptimizationLevel


def options(level: Level, save_to: Path | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = available_cpus()
    opts.graph_optimization_level = level
    opts.log_severity_level = 3
    if save_to is not None:
        opts.optimized_model_filepath = str(save_to)
    return opts


def median_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "dscnet.onnx")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    batch = np.random.default_rng(0).integers(0, 256, (8, 224, 224, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        saved = Path(scratch) / "optimised.onnx"
        ort.InferenceSession(str(args.model), options(Level.ORT_ENABLE_ALL, saved), providers=["CPUExecutionProvider"])
        variants = {
            "online (the service)": (args.model, Level.ORT_ENABLE_ALL),
            "offline, loaded without optimising": (saved, Level.ORT_DISABLE_ALL),
        }
        print("| graph optimisation | session creation ms | batch-8 run ms |")
        print("|---|---:|---:|")
        for name, (path, level) in variants.items():
            def create(path: Path = path, level: Level = level) -> ort.InferenceSession:
                return ort.InferenceSession(str(path), options(level), providers=["CPUExecutionProvider"])

            created_ms = median_ms(create, args.repeats)
            session = create()
            session.run(["probabilities"], {"image": batch})
            run_ms = median_ms(lambda s=session: s.run(["probabilities"], {"image": batch}), args.repeats)
            print(f"| {name} | {created_ms:.0f} | {run_ms:.0f} |")


if __name__ == "__main__":
    main()
