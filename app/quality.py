"""Input-quality warnings a technician can act on, measured on the decoded 224x224 image.

Each check is a plain statistic with a threshold set from the real dataset (2,866 stained
peripheral-smear photographs of one lab, `all-taleqani`): every threshold lies well outside
the range those images span, so a good smear draws no warning (a test checks this on all
of them) and a warning means the image is unlike anything the model was validated on.

| code            | statistic (on the decoded image)                               | warn when  | dataset range   |
|-----------------|----------------------------------------------------------------|------------|-----------------|
| out_of_focus    | variance of the 4-neighbour Laplacian of the grey image         | < 30       | 46 .. 2,033     |
| under_exposed   | mean grey level (0..255)                                        | < 120      | 169 .. 245      |
|                 | share of near-black pixels (every channel <= 10)                | > 5%       | 0 .. 0.2%       |
| over_exposed    | mean grey level                                                 | > 250      | 169 .. 245      |
|                 | share of clipped white pixels (every channel >= 250)            | > 75%      | 0 .. 54%        |
| monochrome      | share of pixels whose channels differ by 6 levels or more       | < 5%       | 39 .. 100%      |
| cells_too_small | structure scale: radius (px) at which the grey image's          | < 6.4      | 7.2 .. 34       |
|                 | autocorrelation falls to 0.25, at half resolution (median 11)   |            |                 |
| not_smear_like  | grey standard deviation (nearly uniform: no cells)              | < 6        | 13.6 .. 46      |
|                 | 90th percentile of grey (a smear's background is bright)        | < 180      | 202 .. 255      |
|                 | share of coloured pixels (saturation > 0.25) with hues from      | > 5%       | 0 .. 0.2%       |
|                 | orange to cyan (20..180 degrees), which stains do not produce   |            |                 |

Grey is ITU-R 601 luma. A Gaussian blur of radius 1.5 px brings every dataset image below
the focus threshold. Hues of stained smears (Wright/Giemsa/May-Grunwald) lie from blue
through purple to pink; green, yellow and orange areas mean a photograph of something else.
The structure scale is a model-independent measure of how large the cells appear: the width
of the autocorrelation of the grey image (computed by FFT, averaged over rings of equal
radius), which shrinks in proportion to everything drawn on the image. A lab whose camera or
crop shows a wider field than the dataset's (a 40x objective, a whole camera frame sent
without cropping) sends cells the model has never seen at that size; on the validation
images shown 2.5x and 3x as wide (`training.shifts.wider_field`) it is below the threshold
for most of them, while stain, exposure, gamma, JPEG and noise shifts of the dataset's own
images leave it above (`python -m training.magnification` prints the referrals). It is the
service's guard against other magnifications whatever the model; fields shown larger (a
narrower field) are not separable from the dataset's own by it and are not flagged.
Greyscale images are flagged (`monochrome`) since 2.4.0: its filter standardises colour in
l-alpha-beta, and on grey versions of the test images it is right 9 points less often (85.95%
against 94.83%), so they go to a person. Four warnings are left out where another explains
them better: `out_of_focus` and `monochrome` on a nearly uniform image, a dark background
when `under_exposed` already fired, and `cells_too_small` on an image that is not smear-like.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FOCUS_MIN_LAPLACIAN_VAR = 30.0
DARK_MAX_MEAN = 120.0
DARK_PIXEL_LEVEL = 10
DARK_MAX_SHARE = 0.05
BRIGHT_MIN_MEAN = 250.0
CLIPPED_PIXEL_LEVEL = 250
CLIPPED_MAX_SHARE = 0.75
UNIFORM_MAX_STD = 6.0
BACKGROUND_MIN_P90 = 180.0
OFF_STAIN_SATURATION = 0.25  # exactly 1/4: tested as 4 * chroma > max channel
OFF_STAIN_HUES = (20.0, 180.0)  # degrees; tested without a division, see _off_stain_share
OFF_STAIN_MAX_SHARE = 0.05
COLOURED_CHROMA = 6  # levels between a pixel's largest and smallest channel
MONOCHROME_MAX_SHARE = 0.05
SCALE_LEVEL = 0.25  # the autocorrelation level whose radius is the structure scale
SMALL_CELLS_MAX_SCALE = 6.4  # px; the dataset's smallest is 7.23
DATASET_MEDIAN_SCALE = 11.0  # px; for the "about N times smaller" of the warning

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class QualityWarning:
    code: str
    detail: str


@dataclass(frozen=True)
class QualityMeasures:
    """The statistics the checks read; see the module's table."""

    laplacian_var: float
    mean_grey: float
    std_grey: float
    p90_grey: float
    dark_share: float
    clipped_share: float
    off_stain_share: float
    colour_share: float
    structure_scale: float


def measure(pixels: np.ndarray) -> QualityMeasures:
    """The quality statistics of one decoded image.

    Args:
        pixels: uint8 (H, W, 3) RGB, as `decode_image` returns it.
    """
    # Planar uint8 copies of the channels: maxima, minima, counts and the off-stain test are
    # exact on uint8, and every pass below runs on contiguous rows (element-wise work on the
    # strided planes of interleaved RGB costs more; numpy's reductions over a last axis of 3
    # are slow). Grey and the Laplacian are built in place in float32, with no float copy of
    # the whole RGB image and no matrix product: 1.27 -> 0.85 ms per image in an interleaved
    # A/B, the same statistics on 410 dataset images (docs/PERFORMANCE.md).
    red, green, blue = np.moveaxis(pixels, 2, 0).copy()
    high = np.maximum(np.maximum(red, green), blue)
    low = np.minimum(np.minimum(red, green), blue)
    grey = np.multiply(red, _LUMA[0], dtype=np.float32)
    grey += np.multiply(green, _LUMA[1], dtype=np.float32)
    grey += np.multiply(blue, _LUMA[2], dtype=np.float32)
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1]
    laplacian += grey[1:-1, :-2]
    laplacian += grey[1:-1, 2:]
    laplacian -= 4 * grey[1:-1, 1:-1]
    chroma = high - low  # uint8: high >= low
    p90_index = int(0.9 * (grey.size - 1))
    return QualityMeasures(
        laplacian_var=float(laplacian.var()),
        mean_grey=float(grey.mean()),
        std_grey=float(grey.std()),
        p90_grey=float(np.partition(grey.ravel(), p90_index)[p90_index]),
        dark_share=float(np.count_nonzero(high <= DARK_PIXEL_LEVEL) / grey.size),
        clipped_share=float(np.count_nonzero(low >= CLIPPED_PIXEL_LEVEL) / grey.size),
        off_stain_share=_off_stain_share(red, green, blue, high, chroma),
        colour_share=float(np.count_nonzero(chroma >= COLOURED_CHROMA) / grey.size),
        structure_scale=structure_scale(grey),
    )


@lru_cache(maxsize=4)
def _rings(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each FFT lag's whole-pixel distance from lag 0 (flattened), and how many lags each ring has."""
    dy = np.fft.fftfreq(height) * height
    dx = np.fft.fftfreq(width) * width
    radius = np.rint(np.hypot(dy[:, None], dx[None, :])).astype(np.intp).ravel()
    return radius, np.bincount(radius)


def structure_scale(grey: np.ndarray) -> float:
    """How large what is drawn on `grey` (float, HxW) appears, in pixels of `grey`.

    The grey image is averaged over 2x2 blocks (a last odd row or column dropped); the radius at
    which that image's (circular) autocorrelation, averaged over rings of equal whole-pixel radius,
    first falls to `SCALE_LEVEL` of its value at 0, interpolated linearly between rings, is doubled
    back to the full image's pixels; the largest ring's radius if it never falls that low; 0 for a
    uniform image. Half resolution costs a quarter of the FFTs (about 0.2 ms per image against 0.5)
    and still puts the dataset's images well above fields 2.5-3 times as wide (the module's table).
    """
    height, width = (grey.shape[0] // 2) * 2, (grey.shape[1] // 2) * 2
    half = grey[0:height:2, 0:width:2] + grey[1:height:2, 0:width:2]
    half += grey[0:height:2, 1:width:2]
    half += grey[1:height:2, 1:width:2]
    centred = half - half.mean()
    spectrum = np.fft.rfft2(centred)
    power = spectrum.real * spectrum.real + spectrum.imag * spectrum.imag
    autocorrelation = np.fft.irfft2(power, s=centred.shape)
    radius, count = _rings(*centred.shape)
    profile = np.bincount(radius, weights=autocorrelation.ravel()) / count
    if profile[0] <= 0:
        return 0.0
    profile = profile[: min(centred.shape) // 2 + 1] / profile[0]
    below = np.flatnonzero(profile < SCALE_LEVEL)
    if below.size == 0:
        return float(2 * (len(profile) - 1))
    k = int(below[0])
    return float(2 * (k - 1 + (profile[k - 1] - SCALE_LEVEL) / (profile[k - 1] - profile[k])))


def _off_stain_share(
    red: np.ndarray, green: np.ndarray, blue: np.ndarray, high: np.ndarray, chroma: np.ndarray
) -> float:
    """Share of pixels that are clearly coloured with a hue stains do not give (orange..cyan).

    HSV saturation is chroma / max channel, so "coloured" is 4 * chroma > max for the 0.25
    threshold, which for integers is chroma > max // 4 (no product to overflow uint8). Hues
    20..180 degrees need no division either: with green the largest channel the hue lies in
    60..180 (180 itself only when blue equals green); with red the largest it is
    60 * (green - blue) / chroma, at least 20 when 3 * (green - blue) >= chroma; with blue the
    largest it lies in 180..300. Both counted cases have green above blue (the second because
    3 * (green - blue) >= chroma > 0), which stained cells rarely show, so only those coloured
    pixels are gathered: the same share, 0.31 -> 0.10 ms per dataset image. All in exact integer
    arithmetic.
    """
    coloured = np.flatnonzero((chroma > (high >> 2)) & (green > blue))
    if coloured.size == 0:
        return 0.0
    r, g, b, c = (plane.ravel()[coloured].astype(np.int16) for plane in (red, green, blue, chroma))
    green_top = (g > r) & (g > b)
    red_top_orange = (r >= g) & (r >= b) & (3 * (g - b) >= c)
    return float(np.count_nonzero(green_top | red_top_orange) / red.size)


def assess_quality(pixels: np.ndarray) -> list[QualityWarning]:
    """The warnings for one decoded image, in a fixed order; empty for a good smear."""
    m = measure(pixels)
    warnings: list[QualityWarning] = []
    uniform = m.std_grey < UNIFORM_MAX_STD
    if m.laplacian_var < FOCUS_MIN_LAPLACIAN_VAR and not uniform:
        warnings.append(QualityWarning("out_of_focus", (
            f"the image looks blurred (Laplacian variance {m.laplacian_var:.1f}, expected at least "
            f"{FOCUS_MIN_LAPLACIAN_VAR:.0f}); refocus the microscope or check the image was not upscaled")))
    under = m.mean_grey < DARK_MAX_MEAN or m.dark_share > DARK_MAX_SHARE
    if under:
        warnings.append(QualityWarning("under_exposed", (
            f"the image is too dark (mean grey {m.mean_grey:.0f} of 255, {m.dark_share:.0%} near-black pixels); "
            "increase the illumination or exposure time")))
    if m.mean_grey > BRIGHT_MIN_MEAN or m.clipped_share > CLIPPED_MAX_SHARE:
        warnings.append(QualityWarning("over_exposed", (
            f"the image is too bright (mean grey {m.mean_grey:.0f} of 255, {m.clipped_share:.0%} clipped white "
            "pixels); reduce the illumination or exposure time")))
    if m.colour_share < MONOCHROME_MAX_SHARE and not uniform:
        warnings.append(QualityWarning("monochrome", (
            f"the image has almost no colour ({m.colour_share:.1%} of its pixels are coloured); the model reads "
            "colour photographs of stained smears and is less accurate on grey ones: send the camera's colour image")))
    reasons = []
    if uniform:
        reasons.append(f"it is nearly uniform (grey standard deviation {m.std_grey:.1f}), no cells are visible")
    elif m.p90_grey < BACKGROUND_MIN_P90 and not under:
        reasons.append(f"its background is not bright (90th percentile grey {m.p90_grey:.0f}, a smear's is above "
                       f"{BACKGROUND_MIN_P90:.0f})")
    if m.off_stain_share > OFF_STAIN_MAX_SHARE:
        reasons.append(f"{m.off_stain_share:.0%} of it has colours (orange to cyan) that smear stains do not give")
    if m.structure_scale < SMALL_CELLS_MAX_SCALE and not uniform and not reasons:
        warnings.append(QualityWarning("cells_too_small", (
            f"the cells look about {DATASET_MEDIAN_SCALE / max(m.structure_scale, 1.0):.1f} times smaller than in "
            f"the images the model was trained on (structure scale {m.structure_scale:.1f} px, expected at least "
            f"{SMALL_CELLS_MAX_SCALE:.1f}): the field is wider than a 100x oil field of the training images; send "
            "an image at 100x oil, cropped around the cells rather than the camera's whole frame")))
    if reasons:
        warnings.append(QualityWarning("not_smear_like", (
            "this does not look like a stained blood smear: " + "; ".join(reasons)
            + "; check that the right image was sent")))
    return warnings
