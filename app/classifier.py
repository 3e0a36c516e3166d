"""The ONNX model behind the service: load it only after it is verified, then classify batches.

`load_classifier` refuses to return a model it could not verify: the card must be valid and
match this service, the file's sha256 must equal the card's, the session's input and output
must be the ones the card names, and a warm-up batch must give one probability row per
image. The session is built from the very bytes that were hashed, so the file cannot change
between the check and the load.

Exceptions:
    ModelLoadError      (any reason the model cannot be served; the message says which)
    ModelOutputError    (the model returned something that is not a probability row: a server fault)
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.imaging import IMAGE_SIZE
from app.labels import CLASS_IDS
from app.model_card import ModelCard, ModelCardError, load_model_card

#: The optional second output: (N, h, w, classes) class activation maps (app.explain).
ACTIVATION_OUTPUT = "class_activation"


class ModelLoadError(RuntimeError):
    """The model cannot be served."""


class ModelOutputError(RuntimeError):
    """The model's output is not a batch of probability rows."""


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    sha256: str


MAX_RUN_IMAGES = 4  # images per onnxruntime run; larger batches are cut (memory, see OnnxClassifier._run)


class RunLanes:
    """How model runs share the CPUs: `runs` lanes at once, and a lone run takes them all.

    A run that finds no other run in flight or waiting is "wide": it holds every lane and uses
    the session with all the usable CPUs' threads (lowest latency for one request). A run that
    has company, or had to wait, takes one lane of the narrow session (its share of the CPUs),
    so concurrent requests run side by side: on two cores, two single-thread runs give more
    images/s than one two-thread run at a time (docs/PERFORMANCE.md, run F).
    """

    def __init__(self, runs: int, wide: bool) -> None:
        self.runs = runs
        self.wide = wide and runs > 1
        self._busy = 0  # lanes held
        self._waiting = 0
        self._ready = threading.Condition()

    @contextmanager
    def take(self) -> Iterator[bool]:
        """Hold a lane (or all of them) for one run; yields True when the run is wide."""
        with self._ready:
            wide = self.wide and self._busy == 0 and self._waiting == 0
            if wide:
                self._busy = self.runs
            else:
                self._waiting += 1
                try:
                    self._ready.wait_for(lambda: self._busy < self.runs)
                finally:
                    self._waiting -= 1
                self._busy += 1
        try:
            yield wide
        finally:
            freed = self.runs if wide else 1
            with self._ready:
                self._busy -= freed
                # Wake one waiter per freed lane, not all of them: under load most requests
                # wait here, and waking them all on every run's end cost each a GIL trip.
                # A waiter whose lane a newcomer took waits again, and that newcomer's own
                # end wakes the next, so no wake-up is lost.
                self._ready.notify(freed)


class OnnxClassifier:
    """Runs the verified ONNX session on uint8 image batches; safe to share between threads.

    `session` serves concurrent runs, one lane each; `wide_session`, when given, serves a run
    that is alone (RunLanes). Both are built from the same verified bytes.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        card: ModelCard,
        raw_card: dict[str, Any],
        runs: int = 1,
        wide_session: ort.InferenceSession | None = None,
    ) -> None:
        self.session = session
        self.wide_session = wide_session
        self.card = card
        self.raw_card = raw_card
        self.identity = ModelIdentity(card.name, card.version, card.sha256)
        self.input_name = session.get_inputs()[0].name
        self.output_name = card.output.name
        self.has_activation = _has_activation_output(session)
        #: the output holding each image's unfamiliarity (the card's familiarity block), or None
        self.unfamiliarity_output = card.familiarity.output if card.familiarity is not None else None
        # `runs` at a time (one per share of the CPUs): each run already spreads over its
        # threads, so more runs would only contend.
        self.lanes = RunLanes(runs, wide=wide_session is not None)
        self.max_run_images = MAX_RUN_IMAGES

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (N, 4) float64 rows summing to 1.

        Args:
            images: uint8 array (N, 224, 224, 3), RGB, as `decode_image` returns them stacked.
        """
        _check_images(images)
        (output,) = self._run([self.output_name], images)
        return _check_probabilities(np.asarray(output, dtype=np.float64), len(images))

    def score_batch(self, images: np.ndarray) -> np.ndarray:
        """Rows (N, 5) float64: the class probabilities as `predict_batch` gives them, then the
        image's unfamiliarity (NaN for a model without that output). One row per image, so a
        shared run's rows split between requests as probabilities do (app.batching)."""
        rows, _ = self._score(images, activation=False)
        return rows

    def score_with_activation(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`score_batch`'s rows and the class activation maps (N, h, w, 4) float32.

        Only explanations ask for the maps: the other runs skip computing them.
        """
        if not self.has_activation:
            raise ModelOutputError(f"the model has no {ACTIVATION_OUTPUT!r} output")
        rows, activation = self._score(images, activation=True)
        assert activation is not None
        return rows, activation

    def predict_with_activation(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities as `predict_batch` gives them, and the class activation maps (N, h, w, 4) float32."""
        rows, activation = self.score_with_activation(images)
        return rows[:, :len(CLASS_IDS)], activation

    def _score(self, images: np.ndarray, activation: bool) -> tuple[np.ndarray, np.ndarray | None]:
        _check_images(images)
        names = [self.output_name]
        if activation:
            names.append(ACTIVATION_OUTPUT)
        if self.unfamiliarity_output is not None:
            names.append(self.unfamiliarity_output)
        outputs = self._run(names, images)
        probabilities = _check_probabilities(np.asarray(outputs[0], dtype=np.float64), len(images))
        unfamiliarity = np.full(len(images), np.nan)
        if self.unfamiliarity_output is not None:
            unfamiliarity = np.asarray(outputs[-1], dtype=np.float64).reshape(-1)
            if unfamiliarity.shape != (len(images),) or not np.all(np.isfinite(unfamiliarity)):
                raise ModelOutputError(f"the model's {self.unfamiliarity_output!r} is not one finite value per image")
        maps = None
        if activation:
            maps = np.asarray(outputs[1], dtype=np.float32)
            if maps.ndim != 4 or maps.shape[0] != len(images) or maps.shape[3] != len(CLASS_IDS):
                raise ModelOutputError(f"the model's {ACTIVATION_OUTPUT!r} has shape {maps.shape}")
            if not np.all(np.isfinite(maps)):
                raise ModelOutputError(f"the model's {ACTIVATION_OUTPUT!r} is not finite")
        return np.column_stack([probabilities, unfamiliarity]), maps

    def _run(self, names: list[str], images: np.ndarray) -> list[np.ndarray]:
        """The session's `names` outputs for uint8 images, in runs of at most `max_run_images`.

        A run's working memory grows with its batch (2.0.0 at 32 images: about 470 MiB more than
        at 8), while images/s is flat from batch 4 up (docs/PERFORMANCE.md), so larger batches
        are cut into runs; a narrow run, which may have company, takes its lane's share of them.
        """
        parts: list[list[np.ndarray]] = []
        start = 0
        while start < len(images):
            with self.lanes.take() as wide:
                size = self.max_run_images if wide else max(1, self.max_run_images // self.lanes.runs)
                batch = images[start:start + size].astype(np.float32)  # raw 0..255 pixels
                session = self.wide_session if wide else self.session
                parts.append(session.run(names, {self.input_name: batch}))
            start += size
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate([part[i] for part in parts]) for i in range(len(names))]

    def warm_up(self) -> None:
        """One inference on a grey image in each session: allocates buffers and proves the model runs."""
        grey = np.full((1, IMAGE_SIZE, IMAGE_SIZE, 3), 128, dtype=np.float32)
        for session in (self.session, self.wide_session):
            if session is not None:
                (output,) = session.run([self.output_name], {self.input_name: grey})
                _check_probabilities(np.asarray(output, dtype=np.float64), 1)


def _has_activation_output(session: ort.InferenceSession) -> bool:
    """True when the session has a (N, h, w, 4) float "class_activation" output."""
    for output in session.get_outputs():
        if output.name == ACTIVATION_OUTPUT:
            return output.type == "tensor(float)" and len(output.shape) == 4 and output.shape[3] == len(CLASS_IDS)
    return False


def _check_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"expected uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3), got {images.dtype} {images.shape}")


def _check_probabilities(output: np.ndarray, count: int) -> np.ndarray:
    if output.shape != (count, len(CLASS_IDS)):
        raise ModelOutputError(f"the model returned shape {output.shape}, expected ({count}, {len(CLASS_IDS)})")
    if not np.all(np.isfinite(output)) or np.any(output < 0):
        raise ModelOutputError("the model returned non-finite or negative probabilities")
    sums = output.sum(axis=1, keepdims=True)
    if np.any(np.abs(sums - 1.0) > 1e-3):
        raise ModelOutputError(f"the model's rows sum to {sums.ravel().tolist()}, not 1")
    return output / sums  # float32 softmax drifts by ~1e-7; make rows sum to 1 exactly-ish


def load_classifier(
    model_path: Path, card_path: Path, threads: int, runs: int = 1, wide_threads: int | None = None
) -> OnnxClassifier:
    """Verify the card and the file, build the session(s), and warm them up.

    Args:
        model_path: the .onnx file.
        card_path: its model card (JSON).
        threads: onnxruntime intra-op threads of each run.
        runs: model runs allowed at once (with `threads` each).
        wide_threads: when given (and runs > 1), a second session with this many threads
            serves a run that is alone (RunLanes).
    """
    try:
        card, raw_card = load_model_card(card_path)
    except ModelCardError as err:
        raise ModelLoadError(str(err)) from err
    if card.file != model_path.name:
        raise ModelLoadError(f"the model card {card_path} describes {card.file!r}, not {model_path.name!r}")
    data = _read_model(model_path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.sha256:
        raise ModelLoadError(
            f"the sha256 of {model_path} is {digest}, but the model card says {card.sha256}: "
            "the file is corrupt or the card belongs to another model"
        )
    session = _create_session(data, model_path, threads)
    _check_session_matches_card(session, card, model_path)
    wide = _create_session(data, model_path, wide_threads) if wide_threads and runs > 1 else None
    classifier = OnnxClassifier(session, card, raw_card, runs, wide)
    try:
        classifier.warm_up()
    except Exception as err:  # onnxruntime's errors share no base class but Exception
        raise ModelLoadError(f"the warm-up inference of {model_path} failed: {err}") from err
    return classifier


def _read_model(model_path: Path) -> bytes:
    try:
        return model_path.read_bytes()
    except FileNotFoundError as err:
        raise ModelLoadError(f"the model file {model_path} does not exist") from err
    except OSError as err:
        raise ModelLoadError(f"the model file {model_path} is not readable: {err}") from err


def _create_session(data: bytes, model_path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The CPUs are shared with decoding and HTTP: idle pool threads must sleep, not spin
    # (spinning halved throughput when anything else ran; docs/PERFORMANCE.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Batch sizes vary run to run, and a memory pattern is planned and kept per input shape.
    options.enable_mem_pattern = False
    options.log_severity_level = 3  # errors only; onnxruntime's notices are not our log lines
    try:
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's errors share no base class but Exception
        raise ModelLoadError(f"onnxruntime cannot load {model_path}: {err}") from err


def _check_session_matches_card(session: ort.InferenceSession, card: ModelCard, model_path: Path) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != card.input.name:
        names = [i.name for i in inputs]
        raise ModelLoadError(f"{model_path} takes inputs {names}; the card names {card.input.name!r}")
    spec = inputs[0]
    if spec.type != "tensor(float)" or len(spec.shape) != 4 or list(spec.shape[1:]) != [IMAGE_SIZE, IMAGE_SIZE, 3]:
        raise ModelLoadError(
            f"{model_path} takes {spec.type} {spec.shape}; expected float [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3]"
        )
    outputs = [o.name for o in session.get_outputs()]
    if card.output.name not in outputs:
        raise ModelLoadError(f"{model_path} has outputs {outputs}; the card names {card.output.name!r}")
    if card.familiarity is not None and card.familiarity.output not in outputs:
        raise ModelLoadError(f"{model_path} has outputs {outputs}; the card's familiarity block names "
                             f"{card.familiarity.output!r}")
