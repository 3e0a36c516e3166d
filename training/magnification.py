"""How the shipped model fares when a lab's camera shows a wider or narrower field than the dataset's.

The dataset's images are 224 x 224 crops of a 100x oil field; another microscope, camera or
crop shows each cell smaller or larger. For each factor, every image of a split is shown with
its cells `factor` times smaller, in a field that much wider (the image at the top left of a
2x2 mosaic with the next images of its smear session, cut and resized as `decode_image`
resizes a large photograph: `shifts.wider_field`), or `factor` times larger (a centred crop of
1/`factor` of the side, enlarged: larger cells with the detail of the smaller crop, so the
quality checks see blur that a real narrower field at full resolution would not have).
The table gives the accuracy, how many answers the service would accept (calibrated
confidence at or above the card's referral threshold, no quality warning and, for a model with
that output, unfamiliarity within the card's threshold, as `app.calibration.refer` decides), and
how many of those are wrong: the figure that matters to a lab, a confident wrong answer no one is
asked to check; and how many images the service's own magnification guard (the `cells_too_small`
quality warning) and the model's unfamiliarity each flag. Prints figures; nothing is written.

A candidate model, exported but not yet evaluated, has no calibration from `dscnet evaluate`:
`--calibrate-on-validation` fits the temperature and the referral threshold on the manifest's
validation split as `dscnet evaluate` does (`training.referral.calibrated_on_validation`) and uses them
instead of the card's, so candidates can be compared on validation without reading the test split.

    python -m training.magnification --model models/dscnet.onnx --manifest models/split.csv --split val
    python -m training.magnification --model runs/cand/model.onnx --split val --calibrate-on-validation
"""

from __future__ import annotations

import argparse

from training.quantize import read_split, split_rows
from training.referral import add_model_arguments, answer_cells, load_model, service_answers, warning_codes
from training.shifts import narrower_field, wider_field


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--wider", type=float, nargs="*", default=[1.25, 1.5, 2.0],
                        help="factors of 1 or more (given empty: none)")
    parser.add_argument("--narrower", type=float, nargs="*", default=[1.25, 1.5, 2.0],
                        help="factors of 1 or more (given empty: none)")
    args = parser.parse_args(argv)
    card, sess = load_model(args)
    images, labels = read_split(args.manifest, args.data_dir, args.split)
    groups = [row["group"] for row in split_rows(args.manifest, args.split)]
    print(f"{len(images)} {args.split} images of {args.manifest}; model {args.model}")
    print("| field | cells appear | accuracy | accepted (confident, no warning, familiar) | accepted and wrong "
          "| flagged cells_too_small | flagged unfamiliar |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = [("as the dataset's", 1.0, images)]
    rows += [(f"{factor:g}x wider", 1 / factor, wider_field(images, groups, factor)) for factor in args.wider]
    rows += [(f"{factor:g}x narrower", factor, narrower_field(images, factor)) for factor in args.narrower]
    for name, scale, shifted in rows:
        codes = warning_codes(shifted)
        answers = service_answers(sess, shifted, card, codes)
        accuracy, flagged, accepted, wrong = answer_cells(card, labels, *answers)
        small = sum("cells_too_small" in image_codes for image_codes in codes)
        print(f"| {name} | {scale:.2f}x | {accuracy} | {accepted} | {wrong} | {small} | {flagged} |", flush=True)


if __name__ == "__main__":
    main()
