"""`dscnet serve` (the HTTP service under uvicorn) and `dscnet predict IMAGE...` (no server);
the local-file helpers `dscnet validate FOLDER` (app.validation) shares.

`predict` goes through the service's own path: `load_classifier` (card, checksum, warm-up),
then `classify_uploads` (decode_image, one model run per batch), with the service's limits.
Exit codes: 0 all images classified, 1 some image failed, 2 bad settings or model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.classifier import ModelLoadError, OnnxClassifier, load_classifier
from app.labels import CLASS_IDS
from app.pipeline import ImageOutcome, classify_uploads
from app.settings import Settings, describe_settings_error
from app.uploads import EmptyFileError, FileTooLargeError, Upload, UploadError


class UnreadableFileError(UploadError):
    reason = "unreadable_file"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `serve` and `predict` to the `dscnet` command's subparsers."""
    serve = commands.add_parser("serve", help="run the HTTP service (settings from DSCNET_* variables)")
    serve.add_argument("--host", help="bind address (DSCNET_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (DSCNET_PORT, default 8000)")
    serve.add_argument("--model", type=Path, help="the .onnx file (DSCNET_MODEL_PATH); its card is beside it")
    serve.set_defaults(run=run_serve)

    predict = commands.add_parser("predict", help="classify local image files without a server")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument("--model", type=Path, help="the .onnx file (DSCNET_MODEL_PATH); its card is beside it")
    predict.set_defaults(run=run_predict)


def load_settings(args: argparse.Namespace) -> Settings | None:
    """The environment's settings with the command-line options on top; None (and a message) if invalid."""
    options = {"host": getattr(args, "host", None), "port": getattr(args, "port", None), "model_path": args.model}
    try:
        return Settings(**{key: value for key, value in options.items() if value is not None})
    except ValidationError as err:
        print(f"dscnet {args.command}: {describe_settings_error(err)}", file=sys.stderr)
        return None


def build_server(settings: Settings):  # -> uvicorn.Server; uvicorn is imported only to serve
    """A uvicorn server for the app, logging JSON lines through our formatter."""
    import uvicorn

    from app.logs import configure_logging
    from app.main import create_app
    from app.server import GracefulServer

    configure_logging(settings.log_level)
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port,
        log_config=None, access_log=False, log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )
    return GracefulServer(config)


def run_serve(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if settings is None:
        return 2
    server = build_server(settings)
    try:
        server.run()
    except SystemExit as exit_:  # uvicorn exits 3 when the lifespan refuses to start
        if not exit_.code:
            raise
    if not server.started:
        load_error = server.config.app.state.service.load_error
        reason = load_error or "see the log above"
        print(f"dscnet serve: the service did not start: {reason}", file=sys.stderr)
        return 1
    return 0


def run_predict(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if settings is None:
        return 2
    try:
        classifier = load_local_classifier(settings)
    except ModelLoadError as err:
        print(f"dscnet predict: {err}", file=sys.stderr)
        return 2
    outcomes = list(zip(args.images, classify_files(classifier, args.images, settings), strict=True))
    if args.json:
        print(json.dumps(_as_json(classifier, outcomes), indent=2))
    else:
        print(_as_table(outcomes))
    return 1 if any(item.error is not None for _, item in outcomes) else 0


def load_local_classifier(settings: Settings) -> OnnxClassifier:
    """The model for a command without a server: one run at a time, so it may use all the
    CPUs a lone service run would."""
    return load_classifier(settings.model_path, settings.card_path, settings.wide_threads or settings.intra_op_threads)


def classify_files(classifier: OnnxClassifier, paths: Sequence[Path], settings: Settings) -> Iterator[ImageOutcome]:
    """Each file's outcome, in order, through the service's path (its size and pixel limits),
    in model runs of at most DSCNET_MAX_BATCH_IMAGES."""
    for chunk in _chunks(paths, settings.max_batch_images):
        uploads = [read_local_file(path, settings.max_upload_bytes) for path in chunk]
        yield from classify_uploads(classifier, uploads, max_pixels=settings.max_pixels).items


def read_local_file(path: Path, max_bytes: int) -> Upload:
    """A local file as an upload, refused by the same size rules as the service."""
    try:
        if path.stat().st_size > max_bytes:
            error = FileTooLargeError(f"the file is over the limit of {max_bytes:,} bytes", "image")
            return Upload(path.name, b"", error)
        data = path.read_bytes()
    except OSError as err:
        return Upload(path.name, b"", UnreadableFileError(f"cannot read the file: {err.strerror or err}", "image"))
    if not data:
        return Upload(path.name, b"", EmptyFileError("the file is empty (0 bytes)", "image"))
    return Upload(path.name, data)


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _as_json(classifier: OnnxClassifier, outcomes: list[tuple[Path, ImageOutcome]]) -> dict[str, Any]:
    identity = classifier.identity
    results = []
    for path, item in outcomes:
        result: dict[str, Any] = {"file": str(path)}
        if item.error is not None:
            result["error"] = {"code": item.error.reason, "detail": str(item.error)}
        else:
            result.update(
                label=item.label, probabilities=item.probabilities, uncalibrated_probabilities=item.uncalibrated,
                refer_to_human=item.refer_to_human, refer_reason=item.refer_reason,
                warnings=[{"code": w.code, "detail": w.detail} for w in item.warnings],
            )
        results.append(result)
    model = {"name": identity.name, "version": identity.version, "sha256": identity.sha256}
    return {"model": model, "results": results}


def _as_table(outcomes: list[tuple[Path, ImageOutcome]]) -> str:
    width = max([len("FILE")] + [len(str(path)) for path, _ in outcomes])
    # Calibrated probabilities; REFER yes means a person must review it (--json gives the reason).
    header = f"{'FILE':<{width}}  {'LABEL':<12}" + "".join(f"{c:>12}" for c in CLASS_IDS) + "  REFER  WARNINGS"
    lines = [header]
    for path, item in outcomes:
        if item.error is not None:
            lines.append(f"{str(path):<{width}}  error: {item.error.reason}: {item.error}")
        else:
            probabilities = "".join(f"{item.probabilities[c]:>12.4f}" for c in CLASS_IDS)
            refer = "yes" if item.refer_to_human else "no"
            warnings = ",".join(w.code for w in item.warnings) or "-"
            lines.append(f"{str(path):<{width}}  {item.label:<12}{probabilities}  {refer:<5}  {warnings}")
    return "\n".join(lines)
