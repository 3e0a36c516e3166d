"""`dscnet compare`: DSCNet against the paper's comparison models, on the same split.

For each trained run (its folder has training.json and model.keras): export to ONNX (the
run's model.onnx, parity checked), classify the block-grouped test split, and measure
parameters, FLOPs per image, onnxruntime latency at batch 1 and the recorded training time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import shape_inference  # noqa: E402

from training.evaluate import RunData, load_runs, onnx_predictor  # noqa: E402
from training.export import export_onnx, load_keras_model  # noqa: E402
from training.metrics import classification_report  # noqa: E402
from training.report import PAPER_CLAIMS, _pct  # noqa: E402
from training.shifts import fill_corner  # noqa: E402

LATENCY_RUNS = 50
# The comparison models are reports, not shipped: deep nets such as Darknet-53 differ from
# Keras by a few 1e-5 in float32, so their exports are checked to 1e-4.
COMPARISON_TOLERANCE = 1e-4


def onnx_flops(path: Path) -> int:
    """FLOPs (2 x multiply-adds) of one image through the Conv, MatMul and Gemm nodes."""
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {}
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out = shapes.get(node.output[0])
            weight = shapes.get(node.input[1])
            if out and weight:
                total += 2 * int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type in {"MatMul", "Gemm"}:
            out = shapes.get(node.output[0])
            left = shapes.get(node.input[0])
            if out and left:
                total += 2 * int(np.prod(out)) * left[-1]
    return total


def latency_ms(path: Path, threads: int = 2) -> float:
    """Median onnxruntime latency of one 224x224 image, after warm-up."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    output = session.get_outputs()[0].name
    image = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    for _ in range(5):
        session.run([output], {name: image})
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        session.run([output], {name: image})
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def compare_run(run: RunData) -> dict:
    folder = run.folder
    onnx_path = folder / "model.onnx"
    if not onnx_path.exists():
        export_onnx(load_keras_model(folder / "model.keras"), onnx_path, run.dataset.images[:64],
                    tolerance=COMPARISON_TOLERANCE)
    x_test, y_test, _ = run.dataset.subset("test")
    predict = onnx_predictor(onnx_path)
    report = classification_report(y_test, predict(x_test))
    masked = classification_report(y_test, predict(fill_corner(x_test)))
    return {
        "arch": run.summary["config"].get("arch", "dscnet"),
        "run": folder.name,
        "test_images": int(len(y_test)),
        "accuracy": report["accuracy"],
        "macro": report["macro"],
        "corner_masked_accuracy": masked["accuracy"],
        "parameters": run.summary["parameters"],
        "flops": onnx_flops(onnx_path),
        "latency_ms_batch1": latency_ms(onnx_path),
        "training_minutes": run.summary["seconds"] / 60,
        # runs from before the option existed were trained without it
        "stain_transfer": run.summary["config"].get("stain_transfer", 0.0),
        "epochs": run.summary["epochs_run"],
    }


def model_label(row: dict) -> str:
    """The model's name, with its run folder where that says more (two DSCNet recipes, say)."""
    return row["arch"] if row["run"] == row["arch"] else f"{row['arch']} ({row['run']})"


def render(rows: list[dict], notes: str = "") -> str:
    lines = [
        "# DSCNet against the paper's comparison models",
        "",
        "Produced by `dscnet compare`. Every model was trained from scratch with the same split (block-grouped,",
        "seed 0), the same augmentation, loss (KL divergence, smoothed targets), optimiser (Adam, cosine decay),",
        "batch 20 and the same fixed image filter; figures are on the block-grouped test split, through",
        "onnxruntime. Reduced-width models carry the width in their name. Latency: onnxruntime, batch 1,",
        "2 threads, median of 50, on the 2-core CPU of the development machine (conditions in the observations).",
        "",
        "| model | accuracy | macro precision | macro recall | macro specificity | macro F1 | macro AUC | "
        "corner-masked accuracy | parameters | MFLOPs / image | latency ms | training min (epochs) | stain transfer |",
        "|---|" + "---:|" * 12,
    ]
    for r in rows:
        m = r["macro"]
        lines.append(
            f"| {model_label(r)} | {_pct(r['accuracy'])} | {_pct(m['precision'])} | {_pct(m['recall'])} | "
            f"{_pct(m['specificity'])} | {_pct(m['f1'])} | {_pct(m['auc'])} | {_pct(r['corner_masked_accuracy'])} | "
            f"{r['parameters']:,} | {r['flops'] / 1e6:,.0f} | {r['latency_ms_batch1']:.1f} | "
            f"{r['training_minutes']:.1f} ({r['epochs']}) | {r.get('stain_transfer', 0.0):.0%} |")
    lines += [
        "",
        "## The paper's figures",
        "",
        f"DSCNet as reported by the paper (its own split and protocol): accuracy {PAPER_CLAIMS['accuracy']}, "
        f"precision {PAPER_CLAIMS['precision']}, recall {PAPER_CLAIMS['recall']}, F1 {PAPER_CLAIMS['f1']} (%).",
        "The paper's Table 2 figures for VGG-16 and YOLO-v3, and its LeNet and sequential-CNN figures, could not be",
        "verified from a copy of the paper available to us, so they are not reproduced here rather than guessed.",
        "",
        "![comparison](comparison.png)",
        "",
    ]
    if notes:
        lines += ["## Observations", "", notes.strip(), ""]
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> None:
    metrics = [("accuracy", lambda r: r["accuracy"]), ("macro F1", lambda r: r["macro"]["f1"]),
               ("macro AUC", lambda r: r["macro"]["auc"]), ("corner-masked", lambda r: r["corner_masked_accuracy"])]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(metrics)
    x = np.arange(len(rows))
    for i, (label, value) in enumerate(metrics):
        ax.bar(x + i * width, [100 * value(r) for r in rows], width, label=label)
    ax.set_xticks(x + width * (len(metrics) - 1) / 2, [model_label(r) for r in rows], rotation=15)
    ax.set_ylabel("% on the block-grouped test split")
    lowest = min(100 * value(r) for _, value in metrics for r in rows)
    ax.set_ylim(max(0.0, 10 * np.floor((lowest - 5) / 10)), 100)  # a zero baseline hides the gaps
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(metrics))  # below: no bar hidden
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def compare(runs: list[Path], data_dir: Path, out_dir: Path, notes: str = "") -> list[dict]:
    """Evaluate every run; write comparison.md, comparison.json and comparison.png."""
    rows = [compare_run(run) for run in load_runs(runs, data_dir)]  # one dataset rebuild per split
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    (out_dir / "comparison.md").write_text(render(rows, notes), encoding="utf-8")
    plot(rows, out_dir / "comparison.png")
    return rows
