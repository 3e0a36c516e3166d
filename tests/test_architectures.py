"""The comparison architectures: each builds small, trains a step and exports to ONNX."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="the [train] extra is not installed")  # CI installs it

from synthetic import smear_like  # noqa: E402
from training.architectures import ARCHITECTURES, BUILDERS, build_architecture  # noqa: E402
from training.cli import ARCHITECTURE_NAMES  # noqa: E402
from training.compare import COMPARISON_TOLERANCE, onnx_flops  # noqa: E402
from training.export import export_onnx  # noqa: E402


def test_cli_names_match_the_registry():
    assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_architecture("resnet")


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_each_architecture_trains_a_step_and_exports(family, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_architecture(family, width=0.0625)
    assert model.input.name == "image" and model.output_shape == (None, 4)
    assert model.layers[1].name == "smear_filter"
    model.compile(optimizer="adam", loss=keras.losses.KLDivergence())
    images = smear_like(32).astype("float32")
    before = [w.copy() for w in model.get_weights()]
    model.fit(images, np.eye(4, dtype="float32")[np.arange(32) % 4], batch_size=16, epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    record = export_onnx(model, tmp_path / f"{family}.onnx", images, tolerance=COMPARISON_TOLERANCE)
    assert set(k.split("@")[0] for k in record["max_abs_difference"]) == {"probabilities"}
    assert onnx_flops(tmp_path / f"{family}.onnx") > 0


def test_flops_of_a_single_convolution_are_counted_exactly(tmp_path):
    inputs = keras.Input((224, 224, 3), name="image")
    conv = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(conv)
    outputs = keras.layers.Softmax(name="probabilities")(keras.layers.Dense(4, use_bias=False)(pooled))
    model = keras.Model(inputs, outputs)
    export_onnx(model, tmp_path / "one.onnx", smear_like(32).astype("float32"))
    assert onnx_flops(tmp_path / "one.onnx") == 2 * 224 * 224 * 8 * 27 + 2 * 4 * 8


def _row(arch: str, accuracy: float, stain_transfer: float | None, run: str | None = None) -> dict:
    macro = {"precision": 0.9, "recall": 0.91, "specificity": 0.97, "f1": 0.905, "auc": 0.99}
    row = {"arch": arch, "run": run or arch, "test_images": 484, "accuracy": accuracy, "macro": macro,
           "corner_masked_accuracy": accuracy - 0.01, "parameters": 292359, "flops": 1.5e9,
           "latency_ms_batch1": 11.44, "training_minutes": 34.26, "epochs": 20}
    if stain_transfer is not None:
        row["stain_transfer"] = stain_transfer
    return row


def test_comparison_table_has_a_row_per_model_with_its_recipe(tmp_path):
    from training.compare import plot, render

    text = render([_row("dscnet", 0.9339, 0.5, run="blocks"), _row("lenet5", 0.80, None)])
    assert "| dscnet (blocks) | 93.39 | 90.00 | 91.00 | 97.00 | 90.50 | 99.00 | 92.39 | 292,359 | 1,500 | 11.4 | 34.3 (20) | 50% |" in text
    assert "| lenet5 | 80.00 |" in text and text.rstrip().endswith("![comparison](comparison.png)")
    assert text.count("| lenet5 |") == 1 and "| 0% |" in text  # a run from before the option: none
    assert "## Observations" not in text
    assert render([_row("dscnet", 0.9, 0.0)], notes="Darknet overfits.\n").endswith(
        "## Observations\n\nDarknet overfits.\n")
    plot([_row("dscnet", 0.9339, 0.5), _row("lenet5", 0.80, None)], tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_the_plain_cnn_at_128_resizes_the_filtered_field_and_keeps_the_input(tmp_path):
    model = build_architecture("plain-cnn-128")
    assert model.input_shape == (None, 224, 224, 3)
    assert model.get_layer("resize").output.shape[1:3] == (128, 128)
    assert model.get_layer("conv0_conv").output.shape[1:3] == (64, 64)
    images = smear_like(32).astype("float32")
    record = export_onnx(model, tmp_path / "plain128.onnx", images, tolerance=COMPARISON_TOLERANCE)
    assert max(record["max_abs_difference"].values()) <= COMPARISON_TOLERANCE
    model.save(tmp_path / "plain128.keras")  # and it reloads, as crossval and export read runs
    reloaded = keras.saving.load_model(tmp_path / "plain128.keras", compile=False)
    np.testing.assert_allclose(np.asarray(reloaded(images[:2])), np.asarray(model(images[:2])), atol=1e-6)
