"""Train DSCNet: KL divergence to smoothed targets, Adam, best validation epoch restored."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from app.labels import CLASS_IDS
from training.augment import WIDE_FIELD_MAX, TrainingFeed, augmenter
from training.data import Dataset, Sample, load_dataset, load_manifest_dataset, split_seed, write_manifest
from training.architectures import build_architecture
from training.model import DSCNetConfig, build_dscnet
from training.recipe import (
    BLUR_SHARE,
    BLUR_SIGMA_MAX,
    CONTEXT_SWAP,
    EPOCHS,
    NARROW_FIELD_MAX,
    NARROW_FIELD_SHARE,
    WIDE_FIELD_SHARE,
)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a run depends on; written to the run folder as training.json."""

    data_dir: Path
    out_dir: Path
    split: str = "blocks"
    epochs: int = EPOCHS
    batch_size: int = 20
    learning_rate: float = 1e-3
    label_smoothing: float = 0.05
    seed: int = 0  # weights, shuffling and augmentation; also the split's, unless split_seed is given
    split_seed: int | None = None  # another training seed on the same split: split_seed=0, seed=1
    block_size: int = 25
    limit_per_class: int | None = None  # for smoke runs only
    arch: str = "dscnet"  # a name from training.architectures.ARCHITECTURES
    # share of training images given another training image's colour statistics (training.augment)
    stain_transfer: float = 0.0
    blur_share: float = BLUR_SHARE  # share of training images blurred (Gaussian, sigma 0.5..blur_sigma_max)
    blur_sigma_max: float = BLUR_SIGMA_MAX
    # share of training images shown in a field 1..wide_field_max times as wide (training.augment)
    wide_field_share: float = WIDE_FIELD_SHARE
    wide_field_max: float = WIDE_FIELD_MAX
    # share of training images whose cells are shown on another training image's surroundings
    context_swap: float = CONTEXT_SWAP
    # share of training images shown in a field 1..narrow_field_max times as narrow (training.augment)
    narrow_field_share: float = NARROW_FIELD_SHARE
    narrow_field_max: float = NARROW_FIELD_MAX
    manifest: Path | None = None  # train on this manifest's split instead of drawing one
    workers: int = 1  # data-loader threads (JPEG re-compression)
    time_limit: float | None = None  # seconds; training stops after the epoch that passes it
    model: DSCNetConfig = field(default_factory=DSCNetConfig)  # used when arch is "dscnet"


class RestoreBestWeights(keras.callbacks.Callback):
    """Keep `target`'s weights of the epoch with the lowest validation loss; restore them at the end."""

    def __init__(self, target: keras.Model) -> None:
        super().__init__()
        self.target = target
        self.best_loss = math.inf
        self.best_epoch = -1
        self._best_weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = float((logs or {}).get("val_loss", math.inf))
        if loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, epoch
            self._best_weights = self.target.get_weights()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._best_weights is not None:
            self.target.set_weights(self._best_weights)


class TimeLimit(keras.callbacks.Callback):
    """Stop training after the first epoch that ends past `seconds` (the best epoch is still restored)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if time.monotonic() - self.started > self.seconds:
            self.model.stop_training = True
            log.warning("time limit of %.0f s reached after epoch %d: training stops", self.seconds, epoch + 1)


def smoothed_targets(labels: np.ndarray, smoothing: float, classes: int = len(CLASS_IDS)) -> np.ndarray:
    """One-hot targets mixed with the uniform distribution (KL needs no zero targets)."""
    return (np.eye(classes)[labels] * (1.0 - smoothing) + smoothing / classes).astype(np.float32)


def balancing_weights(labels: np.ndarray, classes: int = len(CLASS_IDS)) -> np.ndarray:
    """Per-sample weights so that each class carries the same total weight."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    per_class = len(labels) / (classes * np.maximum(counts, 1.0))
    return per_class[labels].astype(np.float32)


def compile_model(model: keras.Model, learning_rate: float, total_steps: int) -> None:
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(total_steps, 1), alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=keras.losses.KLDivergence(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])


def train(config: TrainConfig, dataset: Dataset | None = None) -> Path:
    """Run one training; return the run folder (model.keras, split.csv, history.csv, training.json)."""
    keras.utils.set_random_seed(config.seed)
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if dataset is None and config.manifest is not None:
        # the split drawn elsewhere, e.g. on a machine that holds only the training images
        dataset = load_manifest_dataset(config.data_dir, config.manifest, splits=("train", "val"))
        text = config.manifest.read_bytes()
        (out / "split.csv").write_bytes(text)
        manifest_sha256 = hashlib.sha256(text).hexdigest()
    else:
        if dataset is None:
            dataset = load_dataset(config.data_dir, split=config.split, block_size=config.block_size,
                                   seed=split_seed(asdict(config)))
        manifest_sha256 = write_manifest(dataset.samples, out / "split.csv")
    x_train, y_train, train_samples = dataset.subset("train")
    x_val, y_val, val_samples = dataset.subset("val")
    if config.limit_per_class:
        x_train, y_train, train_samples = _limit(x_train, y_train, train_samples, config.limit_per_class)
        x_val, y_val, val_samples = _limit(x_val, y_val, val_samples, config.limit_per_class)
    log.info("train %d images, validation %d images (%s split)", len(y_train), len(y_val), config.split)

    feed = TrainingFeed(x_train, smoothed_targets(y_train, config.label_smoothing), balancing_weights(y_train),
                        config.batch_size, config.seed, workers=config.workers,
                        wide_field_share=config.wide_field_share, wide_field_max=config.wide_field_max,
                        groups=[sample.group for sample in train_samples], context_swap_share=config.context_swap,
                        narrow_field_share=config.narrow_field_share, narrow_field_max=config.narrow_field_max)
    steps = len(feed)
    val_data = (x_val.astype(np.float32), smoothed_targets(y_val, config.label_smoothing), balancing_weights(y_val))
    model = build_dscnet(config.model) if config.arch == "dscnet" else build_architecture(config.arch)
    # The augmentation runs inside the compiled training step, in front of the model; only the
    # model is saved. In validation (training=False) it is the identity.
    pixels = keras.Input(shape=model.input_shape[1:], dtype="float32", name="image")
    augment = augmenter(x_train, config.stain_transfer, config.seed, blur_share=config.blur_share,
                        blur_sigma_max=config.blur_sigma_max)
    trainer = keras.Model(pixels, model(augment(pixels)))
    compile_model(trainer, config.learning_rate, steps * config.epochs)
    best = RestoreBestWeights(model)
    callbacks = [best, keras.callbacks.CSVLogger(str(out / "history.csv"))]
    if config.time_limit:
        callbacks.append(TimeLimit(config.time_limit - (time.monotonic() - started)))
    history = trainer.fit(feed, epochs=config.epochs, validation_data=val_data, validation_batch_size=50,
                          callbacks=callbacks, verbose=2)
    model.save(out / "model.keras")
    seconds = time.monotonic() - started
    summary = {
        "config": _jsonable(asdict(config)),
        "parameters": int(model.count_params()),
        "train_images": int(len(y_train)),
        "val_images": int(len(y_val)),
        "steps_per_epoch": steps,
        "best_epoch": best.best_epoch + 1,
        "best_val_loss": best.best_loss,
        "epochs_run": len(history.history["loss"]),
        "seconds": round(seconds, 1),
        "manifest_sha256": manifest_sha256,
        "hardware": _hardware(),
        "versions": {"keras": keras.__version__, "backend": keras.backend.backend(),
                     keras.backend.backend(): _backend_version(), "numpy": np.__version__},
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("trained in %.0f s; best epoch %d (val loss %.4f)", seconds, summary["best_epoch"], best.best_loss)
    return out


def _limit(images: np.ndarray, labels: np.ndarray, samples: list[Sample],
           per_class: int) -> tuple[np.ndarray, np.ndarray, list[Sample]]:
    index = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASS_IDS))])
    return images[index], labels[index], [samples[i] for i in index]


def _hardware() -> str:
    """What the training ran on, e.g. "NVIDIA H100 80GB HBM3" or "CPU (2 cores)"."""
    from app.cpus import available_cpus  # affinity and cgroup quota, as the service counts them

    cpu = f"CPU ({available_cpus()} cores)"
    try:
        if keras.backend.backend() == "jax":
            import jax

            device = jax.devices()[0]
            return cpu if device.platform == "cpu" else device.device_kind
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return ", ".join(g.name for g in gpus) if gpus else cpu
    except Exception:  # noqa: BLE001 - a description only; never fail a finished training over it
        pass
    return cpu


def _backend_version() -> str:
    import importlib

    return getattr(importlib.import_module(keras.backend.backend()), "__version__", "?")  # the backend's module


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
