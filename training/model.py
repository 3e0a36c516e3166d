"""DSCNet: a dense skip-connection CNN with a fixed image-filter layer in front.

The paper ("Leukemia Identification from Blood Smear Images Using Dense Skip Connection
Net") fixes the ingredients: an image-filter layer first, dense blocks with skip
connections, ReLU/LeakyReLU, dropout 0.1, a 4-way softmax, 224x224x3 input. It leaves the
rest open; our choices, each for this 2-core CPU budget and this dataset:

- `SmearFilter` (the image filter, fixed and non-trainable): optical density
  -log((I + 1) / 256) per channel, then per-image, per-channel standardisation over the
  field, with the lower-right corner (where the scale bar is burned in) excluded from the
  statistics and set to zero. In optical density a change of illumination is an additive
  shift and a change of stain amount or gamma is a scale factor, so standardisation removes
  both: what is left is the pattern of stain, the cells' morphology. With
  `colour_space="lab"` (`dscnet train --filter-space lab`) the same standardisation is done in
  l-alpha-beta, the log-LMS space of Reinhard et al. (2001), instead: a change of stain hue
  that mixes the RGB channels, modelled as a per-channel affine change there (the Reinhard
  transfer of the audit), then leaves the filter's output unchanged for float images, though not
  for 8-bit ones, whose rounding weighs on the nearly constant beta channel of smears. The floor
  under each channel's variance is 1e-6 from 2.5.0 on (`training/recipe.py` FILTER_EPSILON); the
  earlier 1e-3 was above the beta channel's variance and left each slide's beta and alpha amplitude
  in the output, a colour statistic that differed by class (models/selection-notes.md, round v18).
  The shipped 2.4.0 and 2.5.0 use l-alpha-beta (`training/recipe.py` FILTER_SPACE).
- A strided two-convolution stem (224 -> 56) instead of a 7x7 convolution: measured here,
  a full-resolution stem was a third of all compute. With this stem and these blocks
  (292K parameters) a training step of 20 images takes 0.33 s here; the first layout we
  tried (4, 6, 8, 6 layers, 493K parameters) took 1.0 s, too slow for 20 epochs in budget.
  `DSCNetConfig.input_pool` 2 (`dscnet train --input-pool 2`) averages the filtered field to
  112 x 112 before the stem, a quarter of the compute; it read wider fields of view worse and
  did not ship (round v23, models/selection-notes.md).
- Four dense blocks (3, 4, 6, 6 layers; growth 12, 12, 16, 24), each layer BN-ReLU-conv3x3
  seeing the concatenation of all earlier feature maps of its block; transitions
  BN-LeakyReLU-conv1x1 (compression 0.5) and 2x2 average pooling.
- Skip connections across blocks: every block's output is globally averaged and all four
  are concatenated for the classifier, so fine (early) and coarse (late) features both reach
  the decision.
- Dropout 0.1 before the classifier, softmax over the 4 classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from app.imaging import IMAGE_SIZE
from app.labels import CLASS_IDS
from training.recipe import FILTER_EPSILON, FILTER_SPACE, FILTER_SPACES, INPUT_POOL, STEM_STRIDES
from training.shifts import CORNER_HEIGHT, CORNER_WIDTH, LAB_FROM_LOGLMS, LMS_FROM_RGB


@keras.saving.register_keras_serializable(package="dscnet")
class SmearFilter(layers.Layer):
    """Fixed image filter: optical density (or l-alpha-beta), corner mask, per-image channel standardisation."""

    def __init__(self, corner_height: int = CORNER_HEIGHT, corner_width: int = CORNER_WIDTH,
                 epsilon: float = FILTER_EPSILON, colour_space: str = "density", **kwargs):
        kwargs.pop("trainable", None)  # a fixed filter: never trainable, also when reloaded
        super().__init__(trainable=False, **kwargs)
        if colour_space not in FILTER_SPACES:
            raise ValueError(f"colour_space must be one of {FILTER_SPACES}, not {colour_space!r}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be above 0 (a floor under each channel's variance), not {epsilon!r}")
        self.corner_height = corner_height
        self.corner_width = corner_width
        self.epsilon = epsilon
        self.colour_space = colour_space

    def call(self, pixels):
        x = ops.cast(pixels, "float32")
        if self.colour_space == "lab":
            # training.shifts' l-alpha-beta, as the audit's Reinhard transfer computes it (the
            # per-channel scale of log10 and of the matrix rows cancels in the standardisation)
            lms = ops.matmul(ops.maximum(x, 1.0) / 255.0, ops.convert_to_tensor(LMS_FROM_RGB.T, "float32"))
            density = ops.matmul(ops.log(lms), ops.convert_to_tensor(LAB_FROM_LOGLMS.T, "float32"))
        else:
            density = -ops.log((x + 1.0) / 256.0)
        height, width = ops.shape(x)[1], ops.shape(x)[2]
        rows = ops.expand_dims(ops.arange(height) >= height - self.corner_height, 1)
        cols = ops.expand_dims(ops.arange(width) >= width - self.corner_width, 0)
        keep = ops.cast(ops.logical_not(ops.logical_and(rows, cols)), "float32")
        keep = ops.reshape(keep, (1, height, width, 1))
        count = ops.sum(keep)
        mean = _spatial_sum(density * keep) / count
        centred = (density - mean) * keep
        variance = _spatial_sum(ops.square(centred)) / count
        return centred / ops.sqrt(variance + self.epsilon)

    def get_config(self):
        return {**super().get_config(), "corner_height": self.corner_height,
                "corner_width": self.corner_width, "epsilon": self.epsilon, "colour_space": self.colour_space}


def _spatial_sum(x):
    """Sum over rows, then over columns: two short float32 sums instead of one of 50,000 terms,
    so TensorFlow and onnxruntime (which order a long reduction differently) agree to ~1e-7."""
    return ops.sum(ops.sum(x, axis=2, keepdims=True), axis=1, keepdims=True)


@dataclass(frozen=True)
class DSCNetConfig:
    """Architecture hyper-parameters; `tiny()` gives a fast one for tests."""

    image_size: int = IMAGE_SIZE
    stem_filters: tuple[int, int] = (16, 24)
    # the stem's convolution strides; (1, 2) keeps the first convolution at full resolution (cell
    # texture at the pixel scale) and max-pools after the second, so the blocks see the same 56x56
    stem_strides: tuple[int, int] = STEM_STRIDES
    # the filtered field averaged over input_pool x input_pool pixels before the stem (1: none); the
    # input stays 224 x 224, the network behind the filter works at 224 / input_pool
    input_pool: int = INPUT_POOL
    block_layers: tuple[int, ...] = (3, 4, 6, 6)
    growth_rates: tuple[int, ...] = (12, 12, 16, 24)
    compression: float = 0.5
    dropout: float = 0.1
    leaky_slope: float = 0.1
    filter_space: str = FILTER_SPACE  # SmearFilter's colour space (training.recipe.FILTER_SPACES)
    filter_epsilon: float = FILTER_EPSILON  # SmearFilter's floor under each channel's variance

    @classmethod
    def tiny(cls) -> "DSCNetConfig":
        return cls(stem_filters=(4, 8), block_layers=(2, 2), growth_rates=(4, 4))

    def as_dict(self) -> dict:
        return asdict(self)


def build_dscnet(config: DSCNetConfig = DSCNetConfig(), num_classes: int = len(CLASS_IDS)) -> keras.Model:
    """Build DSCNet taking raw RGB pixels (NHWC, float32 in 0..255) and giving probabilities."""
    if len(config.block_layers) != len(config.growth_rates):
        raise ValueError("block_layers and growth_rates need one entry per dense block")
    size = config.image_size
    pixels = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = SmearFilter(colour_space=config.filter_space, epsilon=config.filter_epsilon, name="smear_filter")(pixels)
    if len(config.stem_strides) != len(config.stem_filters) or any(s not in (1, 2) for s in config.stem_strides):
        raise ValueError(f"stem_strides must give 1 or 2 for each stem convolution, not {config.stem_strides}")
    if config.input_pool not in (1, 2, 4) or size % config.input_pool:
        raise ValueError(f"input_pool must be 1, 2 or 4 and divide the input side, not {config.input_pool}")
    if config.input_pool > 1:
        x = layers.AveragePooling2D(config.input_pool, name="input_pool")(x)
    for i, (filters, stride) in enumerate(zip(config.stem_filters, config.stem_strides, strict=True)):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"stem_conv{i}")(x)
        x = layers.BatchNormalization(name=f"stem_bn{i}")(x)
        x = layers.LeakyReLU(config.leaky_slope, name=f"stem_act{i}")(x)
    reduced = int(np.prod(config.stem_strides))
    if reduced < 2 ** len(config.stem_filters):  # the blocks always start at 1/4 of the side
        x = layers.MaxPooling2D(2 ** len(config.stem_filters) // reduced, name="stem_pool")(x)
    pooled = []
    last = len(config.block_layers) - 1
    for b, (count, growth) in enumerate(zip(config.block_layers, config.growth_rates)):
        x = _dense_block(x, count, growth, name=f"block{b}")
        pooled.append(layers.GlobalAveragePooling2D(name=f"block{b}_gap")(x))
        if b < last:
            x = _transition(x, config, name=f"transition{b}")
    features = layers.Concatenate(name="skip_features")(pooled)
    features = layers.Dropout(config.dropout, name="dropout")(features)
    logits = layers.Dense(num_classes, name="logits")(features)
    probabilities = layers.Softmax(name="probabilities")(logits)
    return keras.Model(pixels, probabilities, name="dscnet")


def _dense_block(x, count: int, growth: int, name: str):
    for i in range(count):
        y = layers.BatchNormalization(name=f"{name}_l{i}_bn")(x)
        y = layers.ReLU(name=f"{name}_l{i}_relu")(y)
        y = layers.Conv2D(growth, 3, padding="same", use_bias=False, name=f"{name}_l{i}_conv")(y)
        x = layers.Concatenate(name=f"{name}_l{i}_concat")([x, y])
    return x


def _transition(x, config: DSCNetConfig, name: str):
    filters = max(1, int(x.shape[-1] * config.compression))
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    x = layers.LeakyReLU(config.leaky_slope, name=f"{name}_act")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_conv")(x)
    return layers.AveragePooling2D(2, name=f"{name}_pool")(x)


def bilinear_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) weights of bilinear resizing with half-pixel centres, antialiased when
    shrinking (the triangle widened by source / target, as `tf.image.resize(..., antialias=True)`);
    when enlarging, plain bilinear with the edges clamped (as Keras's `Resizing`)."""
    scale = min(target / source, 1.0)  # the triangle's width in source pixels is 1 / scale
    matrix = np.zeros((target, source), dtype=np.float64)
    for i in range(target):
        centre = (i + 0.5) * source / target  # in source pixels, from the first pixel's left edge
        first = max(int(np.floor(centre - 1.0 / scale)), 0)
        last = min(int(np.ceil(centre + 1.0 / scale)), source)
        for j in range(first, last):
            matrix[i, j] = max(0.0, 1.0 - abs((j + 0.5 - centre) * scale))
        matrix[i] /= matrix[i].sum()
    return matrix.astype(np.float32)


@keras.saving.register_keras_serializable(package="dscnet")
class BilinearResize(layers.Layer):
    """Bilinear resizing of (N, h, w, C) maps to a fixed size, as two products with fixed matrices
    (`bilinear_matrix`), antialiased when shrinking.

    The same values as Keras's `Resizing(bilinear, antialias=True)`, but exportable and with the
    output size in the ONNX graph itself: tf2onnx turns `Resizing` into an ONNX Resize by scales,
    and a scale that is not a whole number (28 / 3) gives one row less than asked (27), which
    onnxruntime then refuses to add to the other blocks' maps; and it cannot convert the
    antialiased kind (TensorFlow's ScaleAndTranslate) at all.
    """

    def __init__(self, size: tuple[int, int], **kwargs):
        kwargs.pop("trainable", None)  # fixed weights: never trainable, also when reloaded
        super().__init__(trainable=False, **kwargs)
        self.size = tuple(int(n) for n in size)

    def call(self, maps):
        rows = bilinear_matrix(maps.shape[1], self.size[0])
        columns = bilinear_matrix(maps.shape[2], self.size[1])
        maps = ops.einsum("Hh,nhwc->nHwc", ops.convert_to_tensor(rows), maps)
        return ops.einsum("Ww,nHwc->nHWc", ops.convert_to_tensor(columns), maps)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, input_shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "size": list(self.size)}


def with_class_activation(model: keras.Model, name: str | None = None) -> keras.Model:
    """The same network with a second output, "class_activation": (N, h0, w0, classes) maps.

    The classifier sees the spatial mean of every block's features, so its logit for class c
    is a sum over blocks of the spatial mean of (features_k . W_k[:, c]), plus a bias. Those
    per-block maps, each computed by a fixed 1x1 convolution with the classifier's weights and
    resized to the first block's resolution, are summed: a class activation map whose mean is
    the logit (minus its bias). Serving reads it to draw heatmaps; no weights are trained.
    """
    kernel = np.asarray(model.get_layer("logits").kernel)
    gap_layers = sorted((layer for layer in model.layers if layer.name.endswith("_gap")), key=lambda l: l.name)
    size = tuple(gap_layers[0].input.shape[1:3])
    maps, offset = [], 0
    for layer in gap_layers:
        features = layer.input
        channels = features.shape[-1]
        project = layers.Conv2D(kernel.shape[1], 1, use_bias=False, trainable=False, name=f"{layer.name}_cam")
        block_map = project(features)
        project.set_weights([kernel[offset:offset + channels][None, None]])
        offset += channels
        if tuple(features.shape[1:3]) != size:
            block_map = BilinearResize(size, name=f"{layer.name}_cam_resize")(block_map)
        maps.append(block_map)
    activation = layers.Add(name="class_activation")(maps) if len(maps) > 1 else maps[0]
    return keras.Model(model.input, [model.output, activation], name=name or f"{model.name}_with_cam")


def load_keras_model(path: Path) -> keras.Model:
    """A saved .keras model (this module's layers registered), for inference: not compiled."""
    return keras.saving.load_model(path, compile=False)


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
    """The model's outputs for uint8 or float NHWC images, in inference mode, `batch_size` at a time."""
    return np.concatenate([keras.ops.convert_to_numpy(model(images[i:i + batch_size].astype(np.float32),
                                                            training=False))
                           for i in range(0, len(images), batch_size)])


def is_dscnet(model: keras.Model) -> bool:
    return any(layer.name == "skip_features" for layer in model.layers)


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The DSCNets a `dscnet_ensemble` model averages (empty for any other model)."""
    return [layer for layer in model.layers if isinstance(layer, keras.Model) and is_dscnet(layer)]


def build_ensemble(members: list[keras.Model]) -> keras.Model:
    """One graph giving the mean probability of several trained DSCNets on the same input.

    Averaging the probabilities of independently trained seeds lowers the variance that a
    single training run carries (on this dataset, seeds differ by 3 points on one test split).
    """
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    shapes = {tuple(m.input_shape[1:]) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"the members take different inputs: {sorted(shapes)}")
    pixels = keras.Input(shape=shapes.pop(), dtype="float32", name="image")
    outputs = [keras.Model(m.input, m.output, name=f"member{i}")(pixels) for i, m in enumerate(members)]
    probabilities = layers.Average(name="probabilities")(outputs)
    return keras.Model(pixels, probabilities, name="dscnet_ensemble")


def with_heatmaps(model: keras.Model) -> keras.Model:
    """A DSCNet or an ensemble of DSCNets with its "class_activation" output added (see below);
    an ensemble's map is the mean of its members' maps, as its probability is."""
    members = ensemble_members(model)
    if not members:
        return with_class_activation(model)
    pixels = keras.Input(shape=model.input_shape[1:], dtype="float32", name="image")
    outputs = [with_class_activation(m, name=f"member{i}_with_cam")(pixels) for i, m in enumerate(members)]
    probabilities = layers.Average(name="probabilities")([o[0] for o in outputs])
    activation = layers.Average(name="class_activation")([o[1] for o in outputs])
    return keras.Model(pixels, [probabilities, activation], name=f"{model.name}_with_cam")
