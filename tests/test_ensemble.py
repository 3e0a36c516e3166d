"""Seed ensembles: one graph averaging trained DSCNets, exported with parity; `dscnet ensemble` on runs."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the [train] extra is not installed")  # CI installs it

import keras  # noqa: E402
import onnxruntime as ort  # noqa: E402

from synthetic import make_dataset, smear_like  # noqa: E402
from test_training_pipeline import run_command  # noqa: E402
from training.data import load_dataset, write_manifest  # noqa: E402
from training.ensemble import build_ensemble_run  # noqa: E402
from training.evaluate import RunData, load_run  # noqa: E402
from training.export import export_onnx, load_keras_model  # noqa: E402
from training.model import DSCNetConfig, build_dscnet, build_ensemble, ensemble_members, with_class_activation  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402


def _member(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_dscnet(DSCNetConfig.tiny())


def test_ensemble_gives_the_mean_of_its_members_and_its_heatmap_is_their_mean(tmp_path):
    members = [_member(0), _member(1)]
    images = smear_like(32).astype("float32")
    ensemble = build_ensemble(members)
    assert len(ensemble_members(ensemble)) == 2
    each = [m.predict(images[:6], verbose=0) for m in members]
    assert not np.allclose(each[0], each[1])
    np.testing.assert_allclose(ensemble.predict(images[:6], verbose=0), (each[0] + each[1]) / 2, atol=1e-6)

    ensemble.save(tmp_path / "ensemble.keras")
    record = export_onnx(load_keras_model(tmp_path / "ensemble.keras"), tmp_path / "ensemble.onnx", images)
    assert max(v for k, v in record["max_abs_difference"].items() if k.startswith("probabilities")) <= 1e-5
    session = ort.InferenceSession(str(tmp_path / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "class_activation"]
    probabilities, activation = session.run(None, {"image": images[:3]})
    maps = [np.asarray(with_class_activation(m)(images[:3], training=False)[1]) for m in members]
    np.testing.assert_allclose(activation, (maps[0] + maps[1]) / 2, atol=1e-4)
    np.testing.assert_allclose(probabilities, (each[0][:3] + each[1][:3]) / 2, atol=1e-5)


def test_ensemble_needs_two_members():
    with pytest.raises(ValueError, match="at least two"):
        build_ensemble([_member(0)])


def test_runs_of_different_splits_are_not_averaged(tmp_path):
    runs = [RunData(tmp_path / name, {"manifest_sha256": digest}, None) for name, digest in (("a", "1" * 64),
                                                                                            ("b", "2" * 64))]
    with pytest.raises(ValueError, match="different splits"):
        build_ensemble_run(runs, tmp_path / "out")


@pytest.mark.slow
def test_manifest_runs_with_a_time_limit_average_export_and_carry_their_members_into_the_card(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class=12)
    dataset = load_dataset(data, block_size=3, seed=0)
    manifest = tmp_path / "split.csv"
    digest = write_manifest(dataset.samples, manifest)
    # a machine that holds only the training and validation images trains on the manifest's split
    copy = tmp_path / "copy"
    for s in dataset.samples:
        if s.split in ("train", "val"):
            (copy / s.file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data / s.file, copy / s.file)
    folders = []
    for seed in (1, 2):
        folders.append(train(TrainConfig(data_dir=copy, out_dir=tmp_path / f"run{seed}", epochs=3, block_size=3,
                                         seed=seed, split_seed=0, manifest=manifest, time_limit=0.001,
                                         model=DSCNetConfig.tiny())))
    for folder in folders:
        summary = json.loads((folder / "training.json").read_text())
        assert summary["epochs_run"] == 1  # stopped after the first epoch past the limit
        assert (folder / "split.csv").read_bytes() == manifest.read_bytes()
        assert summary["manifest_sha256"] == digest == hashlib.sha256(manifest.read_bytes()).hexdigest()
        assert summary["hardware"]
        assert load_run(folder, data).summary is not None  # evaluation rebuilds the same split from all images
    # held-out accuracy of a run on its manifest's test blocks (what `dscnet crossval` tabulates per fold)
    assert run_command("crossval", str(folders[0]), "--data-dir", str(data), "--json", str(tmp_path / "cv.json")) == 0
    (row,) = json.loads((tmp_path / "cv.json").read_text())
    assert row["images"] == sum(1 for s in dataset.samples if s.split == "test") and 0 <= row["accuracy"] <= 1

    out = tmp_path / "ensemble"
    assert run_command("ensemble", *map(str, folders), "--out", str(out), "--data-dir", str(data)) == 0
    capsys.readouterr()
    # the validation shift audit of one run and of the ensemble, as a choice between them needs
    for folder in (folders[0], out):
        assert run_command("audit-validation", str(folder), "--data-dir", str(data)) == 0
        found = json.loads(capsys.readouterr().out)["validation_audit"]
        counted = {k: v for k, v in found["costs"].items() if "grayscale" not in k}
        assert "grayscale" in " ".join(found["costs"]) and len(counted) >= 5
        assert found["worst_cost"] == max(counted.values()) == counted[found["worst_shift"]]
        val = [s for s in dataset.samples if s.split == "val"]
        right = found["clean_accuracy"] * len(val)  # a count of validation images (rounded to 4 places)
        assert abs(right - round(right)) < 0.01
    summary = json.loads((out / "training.json").read_text())
    assert [m["seed"] for m in summary["members"]] == [1, 2] and summary["config"]["seeds"] == [1, 2]
    assert summary["manifest_sha256"] == digest and summary["best_val_loss"] > 0
    onnx_path = tmp_path / "models" / "dscnet.onnx"
    assert run_command("export", "--run", str(out), "--data-dir", str(data), "--out", str(onnx_path)) == 0
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    assert [m["seed"] for m in card["training"]["members"]] == [1, 2]
    assert card["architecture"]["parameters"] == 2 * build_dscnet(DSCNetConfig.tiny()).count_params()


def test_crossval_fold_of_two_runs_is_scored_by_their_mean_probability(tmp_path, monkeypatch):
    import training.model
    from training.crossval import held_out_accuracy

    data = make_dataset(tmp_path / "data", per_class=12)
    dataset = load_dataset(data, block_size=3, seed=0)
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"fold0-seed{seed}"
        run.mkdir()
        write_manifest(dataset.samples, run / "split.csv")
        _member(seed).save(run / "model.keras")
        runs.append(run)
    labels = np.array([s.label for s in dataset.samples if s.split == "test"])
    assert len(set(labels.tolist())) == 4
    # the real models: loaded, run and scored on the fold's test blocks
    row = held_out_accuracy(runs, data)
    assert row["members"] == 2 and row["run"] == "fold0-seed0+fold0-seed1" and row["images"] == len(labels)

    # member 0 is wrong with 0.4 on every image, member 1 right with 0.7: only their mean is right
    truth = np.eye(4)[labels]
    wrong = np.roll(truth, 1, axis=1)
    outputs = {runs[0].name: 0.4 * wrong + 0.2 * truth, runs[1].name: 0.7 * truth + 0.1 * wrong}
    monkeypatch.setattr(training.model, "load_keras_model", lambda path: path.parent.name)
    monkeypatch.setattr(training.model, "predict_probabilities", lambda name, images: outputs[name])
    assert held_out_accuracy([runs[0]], data)["accuracy"] == 0.0
    assert held_out_accuracy([runs[1]], data)["accuracy"] == 1.0
    outputs[runs[1].name] = 0.3 * truth + 0.35 * wrong  # now the mean is wrong everywhere
    assert held_out_accuracy(runs, data)["accuracy"] == 0.0
    outputs[runs[1].name] = 0.7 * truth + 0.1 * wrong
    assert held_out_accuracy(runs, data)["accuracy"] == 1.0

    out = tmp_path / "cv.json"
    assert run_command("crossval", f"{runs[0]}+{runs[1]}", "--data-dir", str(data), "--json", str(out)) == 0
    assert [(r["members"], r["accuracy"]) for r in json.loads(out.read_text())] == [(2, 1.0)]

    # with views, every member reads every turn and flip, and the mean over all of them decides: each
    # member right with 0.7 on the images as they are (its first view), wrong with 0.6 on every turn
    calls = []

    def by_view(name, images):
        first = not calls or calls[-1][0] != name
        calls.append((name, images.shape))
        return 0.7 * truth + 0.1 * wrong if first else 0.6 * wrong + 0.1 * truth

    monkeypatch.setattr(training.model, "predict_probabilities", by_view)
    assert held_out_accuracy(runs, data, views=1)["accuracy"] == 1.0
    calls.clear()
    row = held_out_accuracy([runs[0]], data, views=4)
    assert row["views"] == 4 and row["accuracy"] == 0.0  # (0.7 + 3 x 0.1) / 4 < (0.1 + 3 x 0.6) / 4
    assert [name for name, _ in calls] == [runs[0].name] * 4
    calls.clear()
    assert run_command("crossval", f"{runs[0]}+{runs[1]}", "--data-dir", str(data), "--views", "2", "--json",
                       str(out)) == 0  # per member (0.7 + 0.1) / 2 > (0.1 + 0.6) / 2: right
    assert [name for name, _ in calls] == [runs[0].name] * 2 + [runs[1].name] * 2
    assert [(r["views"], r["accuracy"]) for r in json.loads(out.read_text())] == [(2, 1.0)]

    # runs of another fold (another split) are refused, not averaged
    other = tmp_path / "fold1-seed0"
    shutil.copytree(runs[1], other)
    write_manifest(load_dataset(data, block_size=3, seed=5).samples, other / "split.csv")
    with pytest.raises(ValueError, match="different folds"):
        held_out_accuracy([runs[0], other], data)
    assert run_command("crossval", f"{runs[0]}+{other}", "--data-dir", str(data)) == 2
