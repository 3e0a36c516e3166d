"""What one training step of the shipped configuration costs on this CPU, for one or more
source trees, interleaved: the augmentation layer alone, and a whole step (augmentation, the
model's forward and backward, the Adam update) on a batch of 20 at 224 px.

Training time is issue 2's 60-minute budget; on a shared host the wall clock of a 40-epoch run
moves with whatever else the machine does, so this reports the process's CPU time per step
beside the wall clock, and alternates the trees round by round so that drift falls on all alike.
Each tree runs in its own process (its own `training` package), with TensorFlow, the backend
that trains on a CPU. Needs the [train] extra. Prints
figures; asserts nothing.

    python benchmarks/bench_train_step.py                                   # this checkout
    git archive db1273f | tar -x -C /tmp/old
    python benchmarks/bench_train_step.py --tree old=/tmp/old --tree new=. --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Run inside the child process, with the tree's own `training` package first on the path.
_MEASURE = """
import json, sys, time
import numpy as np, keras, tensorflow as tf
from training.augment import SmearAugment
from training.model import build_dscnet
from training.train import compile_model, smoothed_targets

steps = int(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (20, 224, 224, 3)).astype(np.float32)
y = smoothed_targets(rng.integers(0, 4, 20), 0.1)

def timed(run):
    for _ in range(3):
        run()  # graph building and warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        run()
    return 1000 * (time.perf_counter() - wall) / steps, 1000 * (time.process_time() - cpu) / steps

layer = SmearAugment(seed=0)
augment = tf.function(lambda batch: layer(batch, training=True))  # compiled, as in the training step
batch = tf.constant(x)
aug_wall, aug_cpu = timed(lambda: augment(batch).numpy())
model = build_dscnet()
pixels = keras.Input(shape=model.input_shape[1:], dtype="float32", name="image")
trainer = keras.Model(pixels, model(SmearAugment(seed=0)(pixels)))
compile_model(trainer, 1e-3, 1000)
step_wall, step_cpu = timed(lambda: trainer.train_on_batch(x, y))
print(json.dumps({"augment_wall": aug_wall, "augment_cpu": aug_cpu, "step_wall": step_wall, "step_cpu": step_cpu}))
"""


def measure(tree: Path, steps: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(steps)], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: the measurement failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="a source tree to measure (default: this checkout)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    args = parser.parse_args(argv)
    trees = [(name, Path(path).resolve()) for name, _, path in (t.partition("=") for t in args.tree)] \
        or [("this", REPO_ROOT)]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    for round_ in range(args.rounds):
        order = trees if round_ % 2 == 0 else trees[::-1]
        for name, tree in order:
            figures = measure(tree, args.steps)
            results[name].append(figures)
            print(f"round {round_ + 1} {name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in figures.items()),
                  flush=True)
    print()
    print("| tree | augmentation, wall ms | augmentation, CPU ms | training step, wall ms | training step, CPU ms |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in results.items():
        cells = []
        for key in ("augment_wall", "augment_cpu", "step_wall", "step_cpu"):
            values = [row[key] for row in rows]
            cells.append(f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nmedians (range) of {args.rounds} rounds of {args.steps} steps; batch 20 at 224 px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
