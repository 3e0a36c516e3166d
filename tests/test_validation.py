"""`dscnet validate FOLDER`: the served model measured on labelled images, through the real parser.

The tiny test model reads colour: red -> benign, green -> early_pre_b, blue -> pre_b, black
-> pro_b. The real-data test reproduces the shipped report's test-split figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import helpers_images as images
from app.labels import CLASS_IDS
from dscnet_cli import main
from training.data import Sample, write_manifest

pytestmark = pytest.mark.usefixtures("restore_root_logging")

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def lab_folder(tmp_path: Path) -> Path:
    """Benign: two red and one green (one error of the model); early: two green, one broken file;
    no pre-B or pro-B folder; a folder and a file that are not images of a class."""
    root = tmp_path / "lab"
    files = {
        "Benign/a.png": images.solid(RED), "Benign/b.jpg": images.solid(RED, fmt="JPEG"),
        "Benign/c.png": images.solid(GREEN), "Benign/notes.txt": images.text_file(),
        "early_pre_b/d.png": images.solid(GREEN), "early_pre_b/sub/e.png": images.solid(GREEN),
        "early_pre_b/broken.jpg": images.truncated_jpeg(), "Normal/f.png": images.solid(BLUE),
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["validate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_figures_errors_and_what_was_not_used(lab_folder: Path, tiny_model: Path, capsys) -> None:
    code, out, _ = run(capsys, str(lab_folder), "--model", str(tiny_model), "--json")
    figures = json.loads(out)
    assert code == 1  # a file failed
    assert figures["images"] == 5 and figures["accuracy"] == pytest.approx(4 / 5)
    assert figures["confusion"]["rows_true_columns_predicted"] == [[2, 1, 0, 0], [0, 2, 0, 0], [0] * 4, [0] * 4]
    benign, early = figures["per_class"]["benign"], figures["per_class"]["early_pre_b"]
    assert (benign["support"], benign["sensitivity"], benign["precision"]) == (3, pytest.approx(2 / 3), 1.0)
    assert (early["sensitivity"], early["precision"]) == (1.0, pytest.approx(2 / 3))
    assert figures["per_class"]["pre_b"] == {"support": 0, "sensitivity": None, "precision": None, "f1": None}
    assert figures["macro_sensitivity"] == pytest.approx((2 / 3 + 1) / 2)  # over the classes present
    assert [(e["file"], e["code"]) for e in figures["errors"]] == [("early_pre_b/broken.jpg", "corrupt_image")]
    assert any(entry.startswith("Normal/: not a class folder") for entry in figures["not_used"])
    assert any(entry.startswith("Benign/notes.txt: not an image file name") for entry in figures["not_used"])
    # plain colours are flagged by the quality checks, so every image is referred (the test card has no threshold)
    assert figures["referral"]["referred"] == 5 and figures["referral"]["coverage"] == 0.0
    assert figures["referral"]["quality_warnings"]["not_smear_like"] == 5


def test_the_text_report(lab_folder: Path, tiny_model: Path, capsys) -> None:
    (lab_folder / "early_pre_b" / "broken.jpg").unlink()
    code, out, _ = run(capsys, str(lab_folder), "--model", str(tiny_model))
    assert code == 0
    assert "images classified: 5; accuracy 80.00%" in out
    assert out.splitlines()[4].split() == ["benign", "3", "66.67%", "100.00%", "80.00%"]
    assert "benign                      2           1           0           0" in out
    assert "Normal/: not a class folder of this model" in out


def test_a_manifest_split_selects_the_images(lab_folder: Path, tiny_model: Path, tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "split.csv"
    rows = [("Benign/a.png", "benign", "test"), ("Benign/c.png", "benign", "train"),
            ("early_pre_b/d.png", "early_pre_b", "test"), ("Pre/gone.png", "pre_b", "test")]
    write_manifest([Sample(file, "0" * 64, CLASS_IDS.index(label), "g", split) for file, label, split in rows],
                   manifest)
    code, out, _ = run(capsys, str(lab_folder), "--model", str(tiny_model), "--manifest", str(manifest),
                       "--split", "test", "--json")
    figures = json.loads(out)
    assert code == 0 and figures["images"] == 2 and figures["accuracy"] == 1.0
    assert "1 file(s) of the manifest's test rows are not in the folder" in figures["not_used"]
    assert "4 image(s) not in the manifest's test rows" in figures["not_used"]


def test_a_folder_without_classes_is_refused_with_exit_2(tmp_path: Path, tiny_model: Path, capsys) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(images.solid(RED))
    code, out, err = run(capsys, str(tmp_path), "--model", str(tiny_model))
    assert code == 2 and out == ""
    assert "no labelled images" in err and "Benign/ Early/ Pre/ Pro/" in err
    code, _, err = run(capsys, str(tmp_path / "nowhere"), "--model", str(tiny_model))
    assert code == 2 and "does not exist" in err


def test_the_shipped_model_reproduces_its_report_on_the_test_split(data_dir: Path, capsys) -> None:
    """Through the service's path, the block-grouped test split gives the report's figures."""
    code, out, _ = run(capsys, str(data_dir), "--manifest", str(REPO_ROOT / "models" / "split.csv"),
                       "--split", "test", "--json")
    figures = json.loads(out)
    report = json.loads((REPO_ROOT / "models" / "reports" / "metrics.json").read_text())["blocks"]
    assert code == 0 and figures["images"] == report["test_images"] and not figures["errors"]
    assert figures["accuracy"] == pytest.approx(report["model"]["accuracy"], abs=1e-6)
    # the service refers by confidence, quality warnings and (since 2.4.1) unfamiliarity: the card's
    # familiarity block holds that whole rule's test figures (the report's calibration block, confidence alone)
    whole_rule = json.loads((REPO_ROOT / "models" / "dscnet.json").read_text())["familiarity"]["test"]
    accepted = round(whole_rule["accepted"] * whole_rule["images"])
    assert figures["referral"]["referred"] == whole_rule["images"] - accepted
    assert figures["referral"]["accuracy_accepted"] == pytest.approx(whole_rule["accepted_accuracy"], abs=1e-4)
    assert figures["referral"]["referred"] >= report["calibration"]["test"]["referred"]
    # the causes say which rule referred them: on the dataset's own images, confidence and unfamiliarity
    causes = figures["referral"]["causes"]
    assert causes.get("unfamiliar", 0) == round(whole_rule["flagged"] * whole_rule["images"])
    assert causes.get("low_confidence", 0) == report["calibration"]["test"]["referred"]
