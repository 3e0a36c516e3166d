"""Grouped cross-validation folds: every block held out once, never split, the test split untouched."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from training.crossval import fold_manifests
from training.data import Sample


def samples(blocks_per_class: int = 10, per_block: int = 5) -> list[Sample]:
    out = []
    for label, class_id in enumerate(("benign", "early_pre_b", "pre_b", "pro_b")):
        for b in range(blocks_per_class):
            split = "test" if b == 0 else ("val" if b == 1 else "train")
            out += [Sample(f"{class_id}/{b}-{i}.jpg", f"{label}{b}{i}", label, f"{class_id}:{b:04d}", split)
                    for i in range(per_block + (b % 3))]  # blocks of unequal size
    return out


def test_each_block_is_held_out_in_exactly_one_fold_and_never_split() -> None:
    pool = samples()
    folds = fold_manifests(pool, folds=5, seed=0)
    assert len(folds) == 5
    held_out = Counter()
    for fold in folds:
        assert {s.file for s in fold} == {s.file for s in pool if s.split != "test"}  # the test split stays out
        roles = defaultdict(set)
        for s in fold:
            roles[s.group].add(s.split)
        assert all(len(r) == 1 for r in roles.values())  # a block is on one side only
        held_out.update(g for g, r in roles.items() if r == {"test"})
        assert {"train", "val", "test"} == {s.split for s in fold}
        test_groups = {g for g, r in roles.items() if r == {"test"}}
        val_groups = {g for g, r in roles.items() if r == {"val"}}
        assert not test_groups & val_groups
    assert set(held_out.values()) == {1} and len(held_out) == 4 * 9


def test_folds_balance_each_class_and_are_reproducible() -> None:
    pool = samples()
    folds = fold_manifests(pool, folds=3, seed=1)
    for label in range(4):
        sizes = [sum(1 for s in fold if s.label == label and s.split == "test") for fold in folds]
        assert max(sizes) - min(sizes) <= 7  # at most one block apart
    assert fold_manifests(pool, folds=3, seed=1) == folds
    assert fold_manifests(pool, folds=3, seed=2) != folds


def test_fewer_than_three_folds_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 3 folds"):
        fold_manifests(samples(), folds=2)


def test_folds_command_writes_one_manifest_per_fold(tmp_path) -> None:
    from test_training_pipeline import run_command

    from training.data import read_manifest, write_manifest

    manifest = tmp_path / "split.csv"
    write_manifest(samples(), manifest)
    assert run_command("folds", "--manifest", str(manifest), "--folds", "3", "--out", str(tmp_path / "folds")) == 0
    written = sorted((tmp_path / "folds").glob("fold-*.csv"))
    assert [p.name for p in written] == ["fold-0.csv", "fold-1.csv", "fold-2.csv"]
    assert read_manifest(written[0]) == sorted(fold_manifests(samples(), 3)[0], key=lambda s: s.file)


def test_dihedral_views_are_the_turns_and_flips_asked_for_with_the_corner_filled_first() -> None:
    import numpy as np

    from training.crossval import dihedral_views
    from training.shifts import fill_corner

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)  # no symmetry: every view differs
    assert dihedral_views(images, 1)[0] is images  # one view: the images as the service sees them
    filled = fill_corner(images)
    assert not np.array_equal(filled, images)
    two = dihedral_views(images, 2)
    assert np.array_equal(two[0], filled) and np.array_equal(two[1], filled.transpose(0, 2, 1, 3))
    four = dihedral_views(images, 4)
    for k, view in enumerate(four):
        assert np.array_equal(view, np.rot90(filled, k, axes=(1, 2)))
    eight = dihedral_views(images, 8)
    assert len({view.tobytes() for view in eight}) == 8
    # the 8 are the whole group: each one turned a quarter or transposed is again one of them
    keys = {view.tobytes() for view in eight}
    assert all(np.rot90(view, 1, axes=(1, 2)).tobytes() in keys for view in eight)
    assert all(np.ascontiguousarray(view.transpose(0, 2, 1, 3)).tobytes() in keys for view in eight)
    with pytest.raises(ValueError, match="one of"):
        dihedral_views(images, 3)
