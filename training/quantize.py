"""Static int8 quantisation of the exported model, shipped only if it keeps its accuracy.

    float32 ONNX -> quant_pre_process -> quantize_static (QDQ, per-channel int8 convolution
    weights, uint8 activations, calibrated on training images decoded by decode_image)
    -> accuracy of both on the test split of the manifest -> dscnet-int8.onnx + its card

Only convolutions and matrix products are quantised: the smear filter (logarithm and
per-image standardisation) and the softmax stay in float, where int8 would cost accuracy
for no speed. The int8 model is written only when its test accuracy is at least the float
model's minus `--max-drop-points` (0.5 by default); either way both figures are printed and
recorded. It is an option: the service serves it only when `DSCNET_MODEL_PATH` names it.

    python -m training.quantize --model models/dscnet.onnx --manifest models/split.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from app.cpus import available_cpus
from app.imaging import decode_image
from app.labels import CLASS_IDS
from training.card import read_card, sha256_file, write_card

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CALIBRATION_BATCH = 16


class _Batches(CalibrationDataReader):
    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self._feeds = iter(
            {input_name: images[i:i + CALIBRATION_BATCH].astype(np.float32)}
            for i in range(0, len(images), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def split_rows(manifest: Path, split: str, limit: int | None = None) -> list[dict[str, str]]:
    """The manifest's rows of one split, in order; `limit` spreads a subset over the split."""
    with manifest.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == split]
    if not rows:
        raise ValueError(f"{manifest} has no rows with split={split}")
    if limit is not None and len(rows) > limit:
        rows = rows[:: len(rows) // limit][:limit]
    return rows


def read_split(manifest: Path, data_dir: Path, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images and class indices of one split (`split_rows`)."""
    rows = split_rows(manifest, split, limit)
    images = np.stack([decode_image((data_dir / row["file"]).read_bytes()) for row in rows])
    labels = np.array([CLASS_IDS.index(row["class"]) for row in rows])
    return images, labels


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = available_cpus()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_outputs(sess: ort.InferenceSession, names: list[str], images: np.ndarray,
                batch: int = 32) -> list[np.ndarray]:
    """The session's `names` outputs for uint8 NHWC `images`, run `batch` images at a time and joined."""
    name = sess.get_inputs()[0].name
    parts = [sess.run(names, {name: images[i:i + batch].astype(np.float32)}) for i in range(0, len(images), batch)]
    return [np.concatenate([part[k] for part in parts]) for k in range(len(names))]


def predict(sess: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    (probabilities,) = run_outputs(sess, ["probabilities"], images)
    return probabilities


def images_per_s(sess: ort.InferenceSession, images: np.ndarray, batch: int, seconds: float = 3.0) -> float:
    name = sess.get_inputs()[0].name
    x = np.resize(images, (batch, *images.shape[1:])).astype(np.float32)
    sess.run(["probabilities"], {name: x})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sess.run(["probabilities"], {name: x})
        runs += 1
    return runs * batch / (time.perf_counter() - start)


FLOAT_LAYERS = ("smear_filter", "unfamiliarity")


def filter_nodes(model: Path) -> list[str]:
    """The nodes that stay float: the smear filter's (its l-alpha-beta colour matrices are MatMuls,
    and int8 steps on their input would drown the beta channel, whose spread is a few thousandths)
    and the unfamiliarity's (a squared distance through a precision matrix, whose terms cancel)."""
    return [node.name for node in onnx.load(str(model)).graph.node if any(n in node.name for n in FLOAT_LAYERS)]


def refit_familiarity(block: dict | None, int8_model: Path, train: tuple[np.ndarray, np.ndarray],
                      validation: np.ndarray) -> dict | None:
    """Refit the int8 model's unfamiliarity on its own features; rewrite the file; return the card block.

    Quantisation noise moves the features, and the float model's precision matrix amplifies it in
    the directions where the training features hardly vary: with the float statistics every image
    looked far (validation median 1,559 against 325) and fields three times as wide got through.
    So the class means and the shared covariance are fitted again on the int8 network's features of
    the training images (`training.familiarity.FeatureStatistics`), written into the distance's
    constants, and the threshold set at the same quantile of its validation distances.
    """
    if not block:
        return None
    from training.familiarity import FeatureStatistics  # imports Keras: only for a model with this output

    model = onnx.load(str(int8_model))
    nodes = [node for node in model.graph.node if block["output"] in node.name]
    features_name = next(node for node in nodes if node.op_type == "Unsqueeze").input[0]
    constants = {node.op_type: node.input[1] for node in nodes if node.op_type in ("Sub", "MatMul")}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(features_name, onnx.TensorProto.FLOAT, None))
    probe_session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])

    def features(images: np.ndarray) -> np.ndarray:
        return run_outputs(probe_session, [features_name], images)[0]

    images, labels = train
    statistics = FeatureStatistics.fit(features(images), labels, len(CLASS_IDS))
    for initializer in model.graph.initializer:
        if initializer.name == constants["Sub"]:
            initializer.CopyFrom(onnx.numpy_helper.from_array(statistics.means, initializer.name))
        elif initializer.name == constants["MatMul"]:
            initializer.CopyFrom(onnx.numpy_helper.from_array(statistics.precision, initializer.name))
    onnx.save(model, str(int8_model))
    distances = statistics.distance(features(validation))
    return {**{key: value for key, value in block.items() if key != "test"},
            "method": block["method"] + "; refitted on the int8 network's own features",
            "threshold": float(np.quantile(distances, block["validation_quantile"])),
            "validation_median": float(np.median(distances)),
            "float32_threshold": block["threshold"]}


def quantize(model: Path, output: Path, calibration: np.ndarray) -> None:
    """Write the static QDQ int8 model of `model` to `output`."""
    input_name = session(model).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(output), _Batches(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            nodes_to_exclude=filter_nodes(prepared),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "dscnet.onnx")
    parser.add_argument("--manifest", type=Path, default=REPO_ROOT / "models" / "split.csv")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get(
        "DSCNET_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "all-taleqani")))
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--max-drop-points", type=float, default=0.5)
    parser.add_argument("--output", type=Path, help="default: <model>-int8.onnx beside the model")
    parser.add_argument("--report", type=Path, help="default: <model folder>/reports/quantization.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    output = args.output or args.model.with_name(args.model.stem + "-int8.onnx")
    report_path = args.report or args.model.parent / "reports" / "quantization.json"
    calibration, _ = read_split(args.manifest, args.data_dir, "train", args.calibration_images)
    test_images, test_labels = read_split(args.manifest, args.data_dir, "test")
    log.info("calibrating on %d training images; testing on %d", len(calibration), len(test_images))

    with tempfile.TemporaryDirectory() as scratch:
        candidate = Path(scratch) / output.name
        quantize(args.model, candidate, calibration)
        float_sess, int8_sess = session(args.model), session(candidate)
        float_probs, int8_probs = predict(float_sess, test_images), predict(int8_sess, test_images)
        acc_float = float(np.mean(float_probs.argmax(1) == test_labels))
        acc_int8 = float(np.mean(int8_probs.argmax(1) == test_labels))
        speed = {f"batch{b}": {"float32": images_per_s(float_sess, test_images, b),
                               "int8": images_per_s(int8_sess, test_images, b)} for b in (1, 16)}
        drop_points = (acc_float - acc_int8) * 100
        shipped = drop_points <= args.max_drop_points
        report = {
            "test_images": len(test_images),
            "accuracy_float32": round(acc_float, 4),
            "accuracy_int8": round(acc_int8, 4),
            "drop_points": round(drop_points, 2),
            "max_drop_points": args.max_drop_points,
            "label_agreement": round(float(np.mean(float_probs.argmax(1) == int8_probs.argmax(1))), 4),
            "max_probability_difference": round(float(np.abs(float_probs - int8_probs).max()), 4),
            "images_per_s": {k: {m: round(v, 1) for m, v in d.items()} for k, d in speed.items()},
            "calibration_images": len(calibration),
            "method": "static QDQ; Conv/MatMul/Gemm outside the smear filter and the unfamiliarity; per-channel "
                      "int8 weights; uint8 activations; MinMax",
            "shipped": shipped,
            "file": output.name if shipped else None,
            "source_file": args.model.name,
            "source_sha256": sha256_file(args.model),
        }
        if shipped:
            # the unfamiliarity's statistics are refitted only for a file that ships (they leave the
            # probabilities, and so the accuracy above, unchanged)
            familiarity = refit_familiarity(read_card(args.model.with_suffix(".json")).get("familiarity"),
                                            candidate, read_split(args.manifest, args.data_dir, "train"),
                                            read_split(args.manifest, args.data_dir, "val")[0])
            candidate.replace(output)
            card = int8_card(args.model, output, report)
            if familiarity is not None:
                card["familiarity"] = familiarity
            write_card(card, output.with_suffix(".json"))
        else:
            # an int8 file left from an earlier float model would serve that model's weights as "the option"
            for stale in (output, output.with_suffix(".json")):
                if stale.exists():
                    log.warning("removing %s: it was made from another float model", stale)
                    stale.unlink()
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("%s", json.dumps(report, indent=2))
    log.info("int8 %s: test accuracy %.2f%% vs float32 %.2f%% (drop %.2f points, limit %.2f)",
             f"written to {output}" if shipped else "NOT shipped", acc_int8 * 100, acc_float * 100,
             drop_points, args.max_drop_points)


def int8_card(float_model: Path, int8_model: Path, report: dict) -> dict:
    """The float model's card for the int8 file: its own file name and sha256, its accuracy."""
    card = read_card(float_model.with_suffix(".json"))
    card["file"] = int8_model.name
    card["sha256"] = sha256_file(int8_model)
    card["quantization"] = {**report, "source_file": float_model.name, "source_sha256": sha256_file(float_model)}
    card["float32_metrics"] = card.get("metrics")
    card["metrics"] = {"accuracy": report["accuracy_int8"], "test_images": report["test_images"],
                       "note": "int8: test accuracy re-measured; other figures are the float model's, "
                               "in float32_metrics"}
    return card


if __name__ == "__main__":
    main()
