"""`dscnet train | export | evaluate`: the offline commands (need the [train] extra).

This module imports no TensorFlow itself, so `dscnet --help` works in a serving install;
a command that needs the extra says how to install it in one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from training import recipe

REPO_ROOT = Path(__file__).resolve().parents[1]
# Kept in step with training.architectures.ARCHITECTURES (which imports Keras; this module must not).
ARCHITECTURE_NAMES = ("dscnet", "lenet5", "vgg16-bn-w0.125", "darknet53-w0.125", "plain-cnn", "plain-cnn-128")
MISSING_EXTRA = "dscnet {command}: this command needs the training extra; install it with: pip install -e '.[train]'"


def default_data_dir() -> Path:
    """DSCNET_DATA_DIR, or the shared dataset beside the checkout."""
    return Path(os.environ.get("DSCNET_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "all-taleqani"))


def _needs(command: str, *modules: str) -> None:
    """Import `modules` or stop with one line that names the install command (no traceback)."""
    import importlib

    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError:
        print(MISSING_EXTRA.format(command=command), file=sys.stderr)
        raise SystemExit(2) from None


def _needs_training_extra(command: str) -> None:
    """Export, evaluation and the reports: TensorFlow, tf2onnx, scikit-learn, matplotlib."""
    _needs(command, "tensorflow", "tf2onnx", "sklearn", "matplotlib")


def _needs_keras_backend(command: str) -> None:
    """Training and cross-validation: Keras and whichever backend it is set to (TensorFlow, JAX)."""
    _needs(command, "keras")
    import keras

    _needs(command, keras.backend.backend())


def _setup_logging() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_train(args: argparse.Namespace) -> int:
    # Training needs Keras and one of its backends (TensorFlow here; JAX on an accelerator
    # machine, with KERAS_BACKEND set); export and evaluate need TensorFlow.
    _needs_keras_backend("train")
    _setup_logging()
    from training.data import DatasetError
    from training.model import DSCNetConfig
    from training.train import TrainConfig, train

    dscnet_only = (("--filter-space", args.filter_space, "keeps the optical-density filter"),
                   ("--filter-epsilon", args.filter_epsilon, "keeps the optical-density filter"),
                   ("--stem-strides", args.stem_strides, "has a stem of its own"),
                   ("--input-pool", args.input_pool, "sees the full field"))
    for option, value, because in dscnet_only:
        if args.arch != "dscnet" and value is not None:
            raise SystemExit(f"{option} applies to dscnet only; {args.arch} {because}")
    default_out = REPO_ROOT / "runs" / (args.split if args.arch == "dscnet" else args.arch)
    config = TrainConfig(data_dir=args.data_dir, out_dir=args.out or default_out, split=args.split,
                         epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, split_seed=args.split_seed,
                         arch=args.arch, stain_transfer=args.stain_transfer, manifest=args.manifest,
                         workers=args.workers, time_limit=args.time_limit, blur_share=args.blur_share,
                         blur_sigma_max=args.blur_sigma_max, wide_field_share=args.wide_field_share,
                         context_swap=args.context_swap, narrow_field_share=args.narrow_field_share,
                         model=DSCNetConfig(filter_space=args.filter_space or recipe.FILTER_SPACE,
                                            filter_epsilon=args.filter_epsilon or recipe.FILTER_EPSILON,
                                            stem_strides=tuple(args.stem_strides or recipe.STEM_STRIDES),
                                            input_pool=args.input_pool or recipe.INPUT_POOL))
    try:
        folder = train(config)
    except DatasetError as err:
        print(f"dscnet train: {err}", file=sys.stderr)
        return 2
    print(f"trained: {folder}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    _needs_training_extra("export")
    _setup_logging()
    import json

    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from app.labels import CLASS_IDS
    from training.card import build_card, write_card
    from training.evaluate import load_run
    from training.export import export_onnx, load_keras_model
    from training.familiarity import fit_familiarity
    from training.model import is_dscnet

    run = load_run(args.run_dir, args.data_dir)
    model = load_keras_model(args.run_dir / "model.keras")
    statistics = familiarity = None
    if is_dscnet(model):  # a single DSCNet: its unfamiliarity output, fitted on this run's split
        x_train, y_train, _ = run.dataset.subset("train")
        x_val, _, _ = run.dataset.subset("val")
        statistics, familiarity = fit_familiarity(model, (x_train, y_train), x_val, len(CLASS_IDS))
    record = export_onnx(model, args.out, run.dataset.images[:64], opset=args.opset, familiarity=statistics)
    if familiarity is not None:
        record["familiarity"] = familiarity
    versions = {**run.summary["versions"], "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "tensorflow_export": tf.__version__}
    card = build_card(args.out, run.summary, record, versions)
    write_card(card, args.out.with_suffix(".json"))
    manifest = args.out.parent / "split.csv"
    if manifest.resolve() != (args.run_dir / "split.csv").resolve():
        shutil.copyfile(args.run_dir / "split.csv", manifest)
    print(json.dumps({"onnx": str(args.out), "sha256": card["sha256"], "parity": record["max_abs_difference"]}))
    return 0


def run_ensemble(args: argparse.Namespace) -> int:
    _needs_training_extra("ensemble")
    _setup_logging()
    import json

    from training.ensemble import build_ensemble_run, validation_audit
    from training.evaluate import load_runs

    runs = load_runs(args.runs, args.data_dir)
    try:
        summary, model = build_ensemble_run(runs, args.out)
    except ValueError as err:
        print(f"dscnet ensemble: {err}", file=sys.stderr)
        return 2
    result = {"out": str(args.out), "val_loss": round(summary["best_val_loss"], 4),
              "val_accuracy": round(summary["val_accuracy"], 4),
              "members": {m["run"]: round(m["best_val_loss"], 4) for m in summary["members"]}}
    if args.audit_validation:
        result["validation_audit"] = _rounded_audit(validation_audit(model, runs[0]))  # the members' split
    print(json.dumps(result, indent=2))
    return 0


def run_audit_validation(args: argparse.Namespace) -> int:
    _needs_training_extra("audit-validation")
    _setup_logging()
    import json

    from training.ensemble import validation_audit
    from training.evaluate import load_run
    from training.model import load_keras_model

    run = load_run(args.run_dir, args.data_dir)
    found = validation_audit(load_keras_model(args.run_dir / "model.keras"), run)
    print(json.dumps({"run": str(args.run_dir), "validation_audit": _rounded_audit(found)}, indent=2))
    return 0


def _rounded_audit(found: dict) -> dict:
    return {"clean_accuracy": round(found["clean_accuracy"], 4), "worst_shift": found["worst_shift"],
            "worst_cost": round(found["worst_cost"], 4), "costs": {k: round(v, 4) for k, v in found["costs"].items()},
            "context": {row: {k: round(v, 4) for k, v in figures.items()} for row, figures in found["context"].items()}}


def run_folds(args: argparse.Namespace) -> int:
    from training.crossval import write_folds
    from training.data import DatasetError

    try:
        paths = write_folds(args.manifest, args.folds, args.out, seed=args.seed)
    except (DatasetError, ValueError, OSError) as err:
        print(f"dscnet folds: {err}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in paths))
    return 0


def run_crossval(args: argparse.Namespace) -> int:
    _needs_keras_backend("crossval")
    import json
    import statistics

    from training.crossval import held_out_accuracy

    try:
        rows = [held_out_accuracy([Path(part) for part in fold.split("+")], args.data_dir, args.views)
                for fold in args.runs]
    except ValueError as error:
        print(f"dscnet crossval: {error}", file=sys.stderr)
        return 2
    if args.views > 1:
        print(f"each image's probability averaged over {args.views} of its turns and flips")
    print("| run | held-out images | blocks | accuracy |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['run']} | {row['images']} | {row['blocks']} | {100 * row['accuracy']:.2f}% |")
    accuracies = [100 * row["accuracy"] for row in rows]
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    print(f"\nmean {statistics.mean(accuracies):.2f}%, standard deviation {spread:.2f} points over {len(rows)} folds")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    _needs_training_extra("evaluate")
    _setup_logging()
    from training.card import (
        LIMITATIONS,
        calibration_for_card,
        read_card,
        render_readme,
        summary_metrics,
        write_card,
    )
    from training.evaluate import evaluate_run, familiarity_on_test, load_run
    from training.markdown import render
    from training.report import write_figures, write_metrics

    card_path = args.model.with_suffix(".json")
    reports = args.reports
    reports.mkdir(parents=True, exist_ok=True)
    run = load_run(args.run_dir, args.data_dir)
    results = {"blocks": evaluate_run(run, args.model)}
    if args.compare_run:
        results["random"] = evaluate_run(load_run(args.compare_run, args.data_dir),
                                         args.compare_run / "model.onnx", full_audit=False)
    figures = write_figures(results["blocks"], args.run_dir / "history.csv", reports)
    write_metrics(results, reports / "metrics.json")
    notes = args.notes.read_text(encoding="utf-8") if args.notes else ""
    (reports / "report.md").write_text(render(results, run.summary, figures, notes), encoding="utf-8")
    if card_path.exists():
        card = read_card(card_path)
        card["metrics"] = {split: summary_metrics(result) for split, result in results.items()}
        card["calibration"] = calibration_for_card(results["blocks"]["calibration"])
        card["limitations"] = LIMITATIONS  # what this evaluation found belongs in the card
        if "familiarity" in card:  # the service's whole referral rule on the test split
            card["familiarity"]["test"] = familiarity_on_test(run, args.model, card)
        write_card(card, card_path)
        (args.model.parent / "README.md").write_text(render_readme(card), encoding="utf-8")
    else:
        print(f"dscnet evaluate: no model card at {card_path}; metrics not added to a card", file=sys.stderr)
    print(f"report: {reports / 'report.md'}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    _needs_training_extra("compare")
    _setup_logging()
    from training.compare import compare

    notes = args.notes.read_text(encoding="utf-8") if args.notes else ""
    rows = compare(args.runs, args.data_dir, args.reports, notes)
    for row in rows:
        print(f"{row['arch']:>18}: accuracy {100 * row['accuracy']:.2f}%, macro F1 {100 * row['macro']['f1']:.2f}%")
    print(f"report: {args.reports / 'comparison.md'}")
    return 0


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a number") from None
    if not value > 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number above 0")
    return value


def add_commands(commands) -> None:
    """Add train, export and evaluate to the `dscnet` argument parser."""
    train = commands.add_parser("train", help="train DSCNet on a class-folder dataset")
    train.add_argument("--data-dir", type=Path, default=default_data_dir(),
                       help="folder with Benign/ Early/ Pre/ Pro/ (default: $DSCNET_DATA_DIR or ../shared/data/all-taleqani)")
    train.add_argument("--split", choices=("blocks", "random"), default="blocks")
    train.add_argument("--arch", choices=ARCHITECTURE_NAMES, default="dscnet",
                       help="the model to train; the comparison models are reports, not shipped")
    train.add_argument("--epochs", type=int, default=recipe.EPOCHS, help="default %(default)s (the paper's)")
    train.add_argument("--batch-size", type=int, default=20)
    train.add_argument("--seed", type=int, default=0, help="seed of the weights, shuffling, augmentation and split")
    train.add_argument("--split-seed", type=int, default=None,
                       help="draw the split with this seed instead (e.g. --seed 1 --split-seed 0: a second "
                            "training of the same split)")
    train.add_argument("--stain-transfer", type=_share, default=0.0, metavar="SHARE",
                       help="share of training images (0..1) given another training image's colour statistics")
    train.add_argument("--blur-share", type=_share, default=recipe.BLUR_SHARE, metavar="SHARE",
                       help="share of training images blurred (Gaussian; default %(default)s)")
    train.add_argument("--blur-sigma-max", type=float, default=recipe.BLUR_SIGMA_MAX, metavar="SIGMA",
                       help="largest blur sigma in pixels (drawn from 0.5 to this; default %(default)s)")
    train.add_argument("--wide-field-share", type=_share, default=recipe.WIDE_FIELD_SHARE, metavar="SHARE",
                       help="share of training images shown in a field 1 to 2 times as wide, with smaller cells "
                            "(a mosaic of the image's smear session; default %(default)s)")
    train.add_argument("--context-swap", type=_share, default=recipe.CONTEXT_SWAP, metavar="SHARE",
                       help="share of training images whose white cells are shown on another training image's "
                            "surroundings, of any class (training/context.py; default %(default)s)")
    train.add_argument("--narrow-field-share", type=_share, default=recipe.NARROW_FIELD_SHARE, metavar="SHARE",
                       help="share of training images shown in a field 1 to 2 times as narrow, with larger cells "
                            "(a random square of the image, enlarged; default %(default)s)")
    train.add_argument("--filter-space", choices=recipe.FILTER_SPACES, default=None,
                       help="DSCNet's image filter standardises each image per channel in l-alpha-beta "
                            f"(Reinhard's space) or in optical density (default {recipe.FILTER_SPACE})")
    train.add_argument("--filter-epsilon", type=_positive_float, default=None, metavar="EPSILON",
                       help="floor under each channel's variance in DSCNet's image filter; a large one leaves "
                            f"each image's channel amplitudes in the output (default {recipe.FILTER_EPSILON:g})")
    train.add_argument("--stem-strides", type=int, nargs=2, choices=(1, 2), default=None, metavar="STRIDE",
                       help="strides of DSCNet's two stem convolutions; 1 2 keeps the first at full resolution "
                            f"and max-pools after the second (default {' '.join(map(str, recipe.STEM_STRIDES))})")
    train.add_argument("--input-pool", type=int, choices=(1, 2, 4), default=None, metavar="N",
                       help="average the filtered 224 x 224 field over N x N pixels before DSCNet's stem: the "
                            f"network then works at 224 / N, at about 1 / N^2 of the compute (default {recipe.INPUT_POOL})")
    train.add_argument("--manifest", type=Path, default=None,
                       help="train on this split manifest (e.g. models/split.csv) instead of drawing a split; "
                            "only its training and validation images need to be in --data-dir")
    train.add_argument("--workers", type=int, default=1, help="data-loader threads (JPEG re-compression)")
    train.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                       help="stop after the epoch that ends past this many seconds (best epoch still restored)")
    train.add_argument("--out", type=Path, help="run folder (default runs/<split>)")
    train.set_defaults(run=run_train)

    export = commands.add_parser("export", help="export a trained run to ONNX, verify parity, write the card")
    export.add_argument("--run", dest="run_dir", type=Path, default=REPO_ROOT / "runs" / "blocks")
    export.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "dscnet.onnx")
    export.add_argument("--data-dir", type=Path, default=default_data_dir())
    export.add_argument("--opset", type=int, default=17)
    export.set_defaults(run=run_export)

    evaluate = commands.add_parser("evaluate", help="evaluate an exported model; write models/reports/")
    evaluate.add_argument("--run", dest="run_dir", type=Path, default=REPO_ROOT / "runs" / "blocks")
    evaluate.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "dscnet.onnx")
    evaluate.add_argument("--compare-run", type=Path, default=None,
                          help="a run trained with --split random, exported to <run>/model.onnx")
    evaluate.add_argument("--reports", type=Path, default=REPO_ROOT / "models" / "reports")
    evaluate.add_argument("--notes", type=Path, default=None,
                          help="a markdown file appended to the report (e.g. how the model was chosen)")
    evaluate.add_argument("--data-dir", type=Path, default=default_data_dir())
    evaluate.set_defaults(run=run_evaluate)

    ensemble = commands.add_parser("ensemble", help="average several trained runs of one split into one model")
    ensemble.add_argument("runs", type=Path, nargs="+", help="run folders trained on the same split")
    ensemble.add_argument("--out", type=Path, required=True, help="the ensemble's run folder")
    ensemble.add_argument("--data-dir", type=Path, default=default_data_dir())
    ensemble.add_argument("--audit-validation", action="store_true",
                          help="also run the shift audit on the validation split (for choosing a model)")
    ensemble.set_defaults(run=run_ensemble)

    audit_validation = commands.add_parser(
        "audit-validation", help="the shift audit of a trained run (one model or an ensemble) on its validation split")
    audit_validation.add_argument("run_dir", type=Path, help="a run folder (train or ensemble --out)")
    audit_validation.add_argument("--data-dir", type=Path, default=default_data_dir())
    audit_validation.set_defaults(run=run_audit_validation)

    folds = commands.add_parser("folds", help="write grouped cross-validation manifests over a split's train/val blocks")
    folds.add_argument("--manifest", type=Path, default=REPO_ROOT / "models" / "split.csv")
    folds.add_argument("--folds", type=int, default=5)
    folds.add_argument("--seed", type=int, default=0)
    folds.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "folds")
    folds.set_defaults(run=run_folds)

    crossval = commands.add_parser("crossval", help="held-out accuracy of runs trained on fold manifests")
    crossval.add_argument("runs", nargs="+",
                          help="run folders, one per fold (train --manifest fold-k.csv); runs of one fold joined "
                               "by '+' (runs/a0+runs/a1) count as their mean probability, a seed ensemble")
    crossval.add_argument("--data-dir", type=Path, default=default_data_dir())
    crossval.add_argument("--views", type=int, choices=(1, 2, 4, 8), default=1,
                          help="average each image over this many of its turns and flips (test-time "
                               "augmentation): 2 adds the transpose, 4 the quarter turns, 8 all")
    crossval.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    crossval.set_defaults(run=run_crossval)

    compare = commands.add_parser("compare", help="compare trained runs of several architectures")
    compare.add_argument("runs", type=Path, nargs="+", help="run folders (dscnet first), e.g. runs/blocks runs/lenet5")
    compare.add_argument("--reports", type=Path, default=REPO_ROOT / "models" / "reports")
    compare.add_argument("--data-dir", type=Path, default=default_data_dir())
    compare.add_argument("--notes", type=Path, default=None,
                         help="a markdown file of observations to append to comparison.md")
    compare.set_defaults(run=run_compare)


def main(argv: list[str] | None = None) -> int:
    """`python -m training.cli train|export|evaluate|compare ...`: the offline commands without the
    serving package's imports (for a training machine that has only Keras and a backend)."""
    parser = argparse.ArgumentParser(prog="python -m training.cli")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
