"""`dscnet validate FOLDER`: the served model measured on a lab's own labelled images.

Before a lab relies on the service it should measure it on its own smears: its stain, its
microscope, its camera (the model was trained on one hospital's images; see the model card).
Put images in one folder per class (`Benign/ Early/ Pre/ Pro/`, any case, or the class ids)
and run `dscnet validate FOLDER`. Every image goes through the service's own path
(`classify_uploads`: decode, quality checks, the model, calibration, referral), so the figures
are the ones the service would give: accuracy, per-class sensitivity and precision, the
confusion matrix, how many images it would refer to a person, and how accurate the rest are.
Needs only the serving install. A class may be absent (its row is then empty); nothing found
is left out without a word: folders that name no class and files that are not images are
listed, files that fail to decode are errors, by name.

Exit codes: 0 every image classified, 1 some image failed, 2 no usable folder, bad settings or model.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.calibration import REFER_CAUSES
from app.cli import classify_files, load_local_classifier, load_settings
from app.classifier import ModelLoadError, OnnxClassifier
from app.imaging import IMAGE_SUFFIXES
from app.labels import CLASS_IDS, class_of_folder
from app.pipeline import ImageOutcome
from app.settings import Settings


class ValidationSetError(ValueError):
    """The folder (or the manifest) gives no labelled images to measure."""


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    relative: str  # Class/file.jpg, with forward slashes (as in a split manifest)
    class_id: str


@dataclass
class LabelledFolder:
    files: list[LabelledFile]
    #: what was found and not classified, each with the reason, for the report
    not_used: list[str] = field(default_factory=list)


def find_labelled_files(root: Path, manifest: Path | None = None, split: str | None = None) -> LabelledFolder:
    """The image files under `root`'s class folders; with a manifest, only its `split` rows."""
    if not root.is_dir():
        raise ValidationSetError(f"{root} does not exist or is not a folder")
    found = LabelledFolder([])
    for child in sorted(root.iterdir()):
        class_id = class_of_folder(child.name)
        if not child.is_dir() or child.name.startswith("."):
            continue
        if class_id is None:
            found.not_used.append(f"{child.name}/: not a class folder of this model")
            continue
        for path in sorted(p for p in child.rglob("*") if p.is_file() and not p.name.startswith(".")):
            relative = path.relative_to(root).as_posix()
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.files.append(LabelledFile(path, relative, class_id))
            else:
                found.not_used.append(f"{relative}: not an image file name ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if manifest is not None:
        found.files = _in_manifest(found, manifest, split)
    if not found.files:
        raise ValidationSetError(
            f"no labelled images under {root}{' for that manifest split' if manifest else ''}; expected "
            "subfolders Benign/ Early/ Pre/ Pro/ (any case) or benign/ early_pre_b/ pre_b/ pro_b/ holding images"
        )
    return found


def _in_manifest(found: LabelledFolder, manifest: Path, split: str | None) -> list[LabelledFile]:
    with manifest.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", "class", "split"} <= set(rows[0]):
        raise ValidationSetError(f"{manifest} is not a split manifest (columns file, class, split)")
    wanted = {row["file"]: row["class"] for row in rows if split is None or row["split"] == split}
    kept = [f for f in found.files if f.relative in wanted]
    for item in kept:
        if wanted[item.relative] != item.class_id:
            raise ValidationSetError(
                f"{item.relative} is {wanted[item.relative]} in {manifest} but lies in a {item.class_id} folder"
            )
    missing = len(set(wanted) - {f.relative for f in kept})
    if missing:
        found.not_used.append(f"{missing} file(s) of the manifest's {split or 'all'} rows are not in the folder")
    outside = len(found.files) - len(kept)
    if outside:
        found.not_used.append(f"{outside} image(s) not in the manifest's {split or 'all'} rows")
    return kept


@dataclass
class ValidationReport:
    model: dict[str, str]
    #: rows: true class, columns: predicted class, in CLASS_IDS order
    confusion: np.ndarray
    referred: int = 0
    referred_correct: int = 0
    warnings: Counter = field(default_factory=Counter)
    #: referral causes (app.calibration.REFER_CAUSES): an image may have several
    causes: Counter = field(default_factory=Counter)
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (file, code, detail)
    not_used: list[str] = field(default_factory=list)

    @property
    def classified(self) -> int:
        return int(self.confusion.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    def as_dict(self) -> dict[str, Any]:
        n, accepted = self.classified, self.classified - self.referred
        per_class = {}
        for index, class_id in enumerate(CLASS_IDS):
            support, predicted = int(self.confusion[index].sum()), int(self.confusion[:, index].sum())
            hits = int(self.confusion[index, index])
            recall = hits / support if support else None
            precision = hits / predicted if predicted else None
            f1 = 2 * recall * precision / (recall + precision) if recall and precision else (0.0 if support else None)
            per_class[class_id] = {"support": support, "sensitivity": recall, "precision": precision, "f1": f1}
        present = [v["sensitivity"] for v in per_class.values() if v["support"]]
        return {
            "model": self.model,
            "images": n,
            "accuracy": self.correct / n if n else None,
            "macro_sensitivity": sum(present) / len(present) if present else None,
            "per_class": per_class,
            "confusion": {"classes": list(CLASS_IDS), "rows_true_columns_predicted": self.confusion.tolist()},
            "referral": {
                "referred": self.referred,
                "coverage": accepted / n if n else None,
                "accuracy_accepted": (self.correct - self.referred_correct) / accepted if accepted else None,
                "accuracy_referred": self.referred_correct / self.referred if self.referred else None,
                "quality_warnings": dict(sorted(self.warnings.items())),
                "causes": {cause: self.causes[cause] for cause in REFER_CAUSES if self.causes[cause]},
            },
            "errors": [{"file": f, "code": c, "detail": d} for f, c, d in self.errors],
            "not_used": self.not_used,
        }


def validate(classifier: OnnxClassifier, folder: LabelledFolder, settings: Settings) -> ValidationReport:
    """Classify every file of `folder` through the service's path and count the outcomes."""
    identity = classifier.identity
    report = ValidationReport(
        model={"name": identity.name, "version": identity.version, "sha256": identity.sha256},
        confusion=np.zeros((len(CLASS_IDS), len(CLASS_IDS)), dtype=np.int64),
        not_used=list(folder.not_used),
    )
    outcomes = classify_files(classifier, [item.path for item in folder.files], settings)
    for item, result in zip(folder.files, outcomes, strict=True):
        _count(report, item, result)
    return report


def _count(report: ValidationReport, item: LabelledFile, result: ImageOutcome) -> None:
    if result.error is not None:
        report.errors.append((item.relative, result.error.reason, str(result.error)))
        return
    truth, predicted = CLASS_IDS.index(item.class_id), CLASS_IDS.index(result.label)
    report.confusion[truth, predicted] += 1
    report.warnings.update(w.code for w in result.warnings)
    report.causes.update(result.refer_causes)
    if result.refer_to_human:
        report.referred += 1
        report.referred_correct += truth == predicted


def format_report(figures: dict[str, Any]) -> str:
    """The report as the text a person reads."""
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    model = figures["model"]
    lines = [f"model {model['name']} {model['version']} (sha256 {model['sha256'][:12]}...)",
             f"images classified: {figures['images']}; accuracy {pct(figures['accuracy'])}, "
             f"macro sensitivity {pct(figures['macro_sensitivity'])} (over the classes present)", "",
             f"{'class':<12} {'images':>7} {'sensitivity':>12} {'precision':>10} {'F1':>8}"]
    for class_id, row in figures["per_class"].items():
        lines.append(f"{class_id:<12} {row['support']:>7} {pct(row['sensitivity']):>12} "
                     f"{pct(row['precision']):>10} {pct(row['f1']):>8}")
    lines += ["", "true \\ predicted " + "".join(f"{c:>12}" for c in CLASS_IDS)]
    for class_id, row in zip(CLASS_IDS, figures["confusion"]["rows_true_columns_predicted"], strict=True):
        lines.append(f"{class_id:<17}" + "".join(f"{v:>12}" for v in row))
    referral = figures["referral"]
    warned = ", ".join(f"{code} {count}" for code, count in referral["quality_warnings"].items()) or "none"
    causes = ", ".join(f"{cause} {count}" for cause, count in referral["causes"].items()) or "none"
    lines += ["", f"referred to a person: {referral['referred']} (coverage {pct(referral['coverage'])}); "
                  f"accuracy of the accepted {pct(referral['accuracy_accepted'])}, "
                  f"of the referred {pct(referral['accuracy_referred'])}",
              f"referral causes (an image may have several): {causes}",
              f"quality warnings: {warned}"]
    if figures["errors"]:
        lines += ["", f"{len(figures['errors'])} file(s) could not be classified:"]
        lines += [f"  {e['file']}: {e['code']}: {e['detail']}" for e in figures["errors"]]
    if figures["not_used"]:
        lines += ["", "not used:"] + [f"  {entry}" for entry in figures["not_used"]]
    return "\n".join(lines)


def add_command(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "validate", help="measure the served model on a folder of labelled images (one subfolder per class)"
    )
    command.add_argument("folder", type=Path, metavar="FOLDER")
    command.add_argument("--model", type=Path, help="the .onnx file (DSCNET_MODEL_PATH); its card is beside it")
    command.add_argument("--manifest", type=Path, help="a split manifest (file,class,split columns): only its rows")
    command.add_argument("--split", help="with --manifest: only the rows of this split (e.g. test)")
    command.add_argument("--json", action="store_true", help="print JSON instead of the report")
    command.set_defaults(run=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if settings is None:
        return 2
    try:
        folder = find_labelled_files(args.folder, args.manifest, args.split)
        classifier = load_local_classifier(settings)
    except (ValidationSetError, ModelLoadError, OSError) as err:
        print(f"dscnet validate: {err}", file=sys.stderr)
        return 2
    report = validate(classifier, folder, settings)
    figures = report.as_dict()
    print(json.dumps(figures, indent=2) if args.json else format_report(figures))
    return 1 if report.errors else 0
