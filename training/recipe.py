"""Defaults of the training recipe, in a module without Keras so that the CLI can use them.

`training.train.TrainConfig` and `training.augment` take their defaults from here, and the
command line shows the same values, so the three cannot drift apart.
"""

from __future__ import annotations

EPOCHS = 20  # the paper's; the shipped models since 2.2.0 were trained with --epochs 40 (models/selection-notes.md)
BLUR_SHARE = 0.4  # share of images blurred, with one Gaussian sigma per batch from 0.5 to BLUR_SIGMA_MAX
BLUR_SIGMA_MAX = 2.0
# share of training images shown in a field 1 to 2 times as wide, cells that much smaller (2.3.0's;
# 2.2.0 had none and read wider fields wrongly: models/selection-notes.md, rounds v12-v14)
WIDE_FIELD_SHARE = 0.15
# share of training images whose white cells are shown on the surroundings of another training image
# of any class (training.context), so that the surroundings carry no class: 2.6.0's (round v20). Round
# v19 tried it alone: the model read the cells (88% right on another class's surroundings on validation,
# 2.5.0 42%) but read fields 1.5x narrower much worse, so it did not ship (models/selection-notes.md)
CONTEXT_SWAP = 0.5
# share of training images shown in a field 1 to NARROW_FIELD_MAX times as narrow (a random square of
# 1/factor of the side, enlarged back: larger cells): 2.6.0's (round v20), which with it reads narrower
# fields better than 2.5.0 (none) while reading the cells
NARROW_FIELD_SHARE = 0.2
NARROW_FIELD_MAX = 2.0
# the image filter's colour space: l-alpha-beta (2.4.0's, round v15: designed against Reinhard stain
# transfers, which it undoes only in part for 8-bit images) or optical density per RGB channel (2.3.0
# and before); training.model.SmearFilter
FILTER_SPACES = ("density", "lab")
FILTER_SPACE = "lab"
# the floor under each channel's variance in the filter's standardisation: 1e-6 (2.5.0's, round v18). The
# floor of every model before it, 1e-3, is above the beta channel's variance in smears (2e-5 to 1.4e-4)
# and near the alpha channel's in pro-B slides, so it left each image's beta and alpha amplitude in the
# output (beta 0.14-0.40 across classes), a colour statistic of the slide; 1e-6 standardises every
# channel to about 1 (models/selection-notes.md). The comparison architectures keep the earlier floor.
FILTER_EPSILON = 1e-6
EARLIER_FILTER_EPSILON = 1e-3
# strides of DSCNet's two stem convolutions: (2, 2), the shipped architecture; (1, 2) keeps the first at
# full resolution (training.model.DSCNetConfig.stem_strides), tried in round v17 and not shipped
# (models/selection-notes.md)
STEM_STRIDES = (2, 2)
# DSCNet's view of the filtered field: averaged over INPUT_POOL x INPUT_POOL pixels before the stem
# (training.model.DSCNetConfig.input_pool): 1, every shipped model through 2.6.0; 2 (the stem at 112 x 112,
# a quarter of the compute) was round v23's candidate: it read 1.5x-3x wider fields worse, accepted 6
# wrong answers at 1.5x wider on validation against 2.6.0's 1, and did not ship (models/selection-notes.md)
INPUT_POOL = 1
