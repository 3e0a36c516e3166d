"""The paper's comparison models, each behind the same input contract as DSCNet.

Every model takes raw RGB pixels ("image", float32 NHWC 0..255), starts with the same fixed
`SmearFilter` (so the comparison is between architectures, not preprocessing), and ends in
"logits" and a "probabilities" softmax over the 4 classes. Widths are multiplied by `width`
so a full-width network (width 1.0) can be trained where compute allows; on the 2-core CPU
the registry below uses reduced widths and names them so (e.g. `vgg16-bn-w0.125`).

- `lenet5`: LeNet-5 (LeCun et al. 1998) adapted to 224x224x3: 5x5 convolutions with 6 and 16
  filters, 2x2 average pooling, dense 120 and 84; ReLU instead of tanh (tanh from scratch at
  this input size barely trains).
- `vgg16-bn`: VGG-16 (Simonyan & Zisserman 2015), 13 3x3 convolutions in 5 stages and two
  dense layers, with batch normalisation after each convolution (the VGG-16-BN variant):
  without it the reduced-width net does not train from scratch with Adam.
- `darknet53`: the YOLOv3 backbone (Redmon & Farhadi 2018) as an image classifier: 52
  convolutions with batch normalisation and LeakyReLU(0.1), residual blocks (1, 2, 8, 8, 4),
  global average pooling, dense.
- `plain-cnn`: a sequential CNN of five 3x3 convolutions with batch normalisation, ReLU and
  max pooling, global average pooling, dropout 0.1, dense; `plain-cnn-128` the same on the
  filtered field resized to 128 x 128 (antialiased bilinear).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from app.imaging import IMAGE_SIZE
from app.labels import CLASS_IDS
from training.model import BilinearResize, DSCNetConfig, SmearFilter, build_dscnet
from training.recipe import EARLIER_FILTER_EPSILON


def _scaled(filters: int, width: float) -> int:
    return max(4, int(round(filters * width)))


def _head(x, dropout: float = 0.0):
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(len(CLASS_IDS), name="logits")(x)
    return layers.Softmax(name="probabilities")(logits)


def _input():
    pixels = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype="float32", name="image")
    return pixels, SmearFilter(epsilon=EARLIER_FILTER_EPSILON, name="smear_filter")(pixels)


def build_lenet5(width: float = 1.0) -> keras.Model:
    pixels, x = _input()
    for i, filters in enumerate((6, 16)):
        x = layers.Conv2D(_scaled(filters, width), 5, activation="relu", name=f"conv{i}")(x)
        x = layers.AveragePooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate((120, 84)):
        x = layers.Dense(_scaled(units, width), activation="relu", name=f"fc{i}")(x)
    return keras.Model(pixels, _head(x), name="lenet5")


def _conv_bn(x, filters: int, kernel: int, name: str, strides: int = 1, activation: str = "relu"):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    if activation == "leaky":
        return layers.LeakyReLU(0.1, name=f"{name}_act")(x)
    return layers.ReLU(name=f"{name}_act")(x)


def build_vgg16_bn(width: float = 1.0) -> keras.Model:
    pixels, x = _input()
    stages = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
    for s, (filters, count) in enumerate(stages):
        for i in range(count):
            x = _conv_bn(x, _scaled(filters, width), 3, name=f"stage{s}_{i}")
        x = layers.MaxPooling2D(2, name=f"stage{s}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    for i in range(2):
        x = layers.Dense(_scaled(4096, width), activation="relu", name=f"fc{i}")(x)
        x = layers.Dropout(0.5, name=f"fc{i}_dropout")(x)
    return keras.Model(pixels, _head(x), name="vgg16_bn")


def build_darknet53(width: float = 1.0) -> keras.Model:
    pixels, x = _input()
    x = _conv_bn(x, _scaled(32, width), 3, name="stem", activation="leaky")
    for s, (filters, repeats) in enumerate(((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))):
        x = _conv_bn(x, _scaled(filters, width), 3, strides=2, name=f"stage{s}_down", activation="leaky")
        for r in range(repeats):
            y = _conv_bn(x, _scaled(filters // 2, width), 1, name=f"stage{s}_res{r}_a", activation="leaky")
            y = _conv_bn(y, _scaled(filters, width), 3, name=f"stage{s}_res{r}_b", activation="leaky")
            x = layers.Add(name=f"stage{s}_res{r}_add")([x, y])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(pixels, _head(x), name="darknet53")


def build_plain_cnn(width: float = 1.0, side: int = IMAGE_SIZE) -> keras.Model:
    pixels, x = _input()
    if side != IMAGE_SIZE:  # the filtered field resized, the input contract unchanged
        x = BilinearResize((side, side), name="resize")(x)
    x = _conv_bn(x, _scaled(16, width), 3, strides=2, name="conv0")
    for i, filters in enumerate((32, 64, 128, 128), start=1):
        x = _conv_bn(x, _scaled(filters, width), 3, name=f"conv{i}")
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(pixels, _head(x, dropout=0.1), name="plain_cnn" if side == IMAGE_SIZE else f"plain_cnn_{side}")


Builder = Callable[[float], keras.Model]
BUILDERS: dict[str, Builder] = {
    "lenet5": build_lenet5,
    "vgg16-bn": build_vgg16_bn,
    "darknet53": build_darknet53,
    "plain-cnn": build_plain_cnn,
}

# What `--arch` accepts: the name says the width actually trained.
ARCHITECTURES: dict[str, Callable[[], keras.Model]] = {
    "dscnet": lambda: build_dscnet(DSCNetConfig()),
    "lenet5": lambda: build_lenet5(1.0),
    "vgg16-bn-w0.125": lambda: build_vgg16_bn(0.125),
    "darknet53-w0.125": lambda: build_darknet53(0.125),
    "plain-cnn": lambda: build_plain_cnn(1.0),
    # the yardstick of ../shared/docs/MEASURED.md: the plain CNN at 128 x 128 (measured there near 99% on
    # a block-grouped split of its own); behind the same 224 x 224 input (models/selection-notes.md)
    "plain-cnn-128": lambda: build_plain_cnn(1.0, side=128),
}


def build_architecture(name: str, width: float | None = None) -> keras.Model:
    """A model by its `--arch` name, or a family name with an explicit width (for tests)."""
    if width is not None:
        return BUILDERS[name](width)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]()
