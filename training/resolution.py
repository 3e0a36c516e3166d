"""How the shipped model and its quality checks fare on images with fewer pixels per cell.

A lab's camera may give a smaller field than the dataset's 224 x 224 crops of a 100x oil
field: `decode_image` then enlarges it, and the cells carry less detail. For each side, every
test image of the manifest is shrunk to side x side pixels and enlarged back
(`shifts.lower_resolution`), then classified by the ONNX model; the table gives the accuracy
and how many images the service's quality checks (`assess_quality`) would flag, by warning.
Prints figures; nothing is written.

    python -m training.resolution --model models/dscnet.onnx --manifest models/split.csv
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from app.quality import assess_quality
from training.cli import default_data_dir
from training.quantize import predict, read_split, session
from training.shifts import lower_resolution


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/dscnet.onnx"))
    parser.add_argument("--manifest", type=Path, default=Path("models/split.csv"))
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--split", default="test")
    parser.add_argument("--sides", type=int, nargs="+", default=[224, 160, 128, 112, 96, 64, 48, 32])
    args = parser.parse_args(argv)
    images, labels = read_split(args.manifest, args.data_dir, args.split)
    sess = session(args.model)
    print(f"{len(images)} {args.split} images of {args.manifest}; model {args.model}")
    print("| side (pixels) | accuracy | flagged by a quality warning | warnings |")
    print("|---:|---:|---:|---|")
    for side in args.sides:
        shifted = images if side == images.shape[1] else lower_resolution(images, side)
        accuracy = float(np.mean(predict(sess, shifted).argmax(axis=1) == labels))
        warnings = [assess_quality(image) for image in shifted]
        codes = Counter(w.code for found in warnings for w in found)
        flagged = sum(bool(found) for found in warnings)
        listed = ", ".join(f"{code} {count}" for code, count in sorted(codes.items())) or "-"
        print(f"| {side} | {100 * accuracy:.2f}% | {flagged} of {len(images)} | {listed} |", flush=True)


if __name__ == "__main__":
    main()
