"""The offline commands without the [train] extra: one line naming the install command."""

from __future__ import annotations

import sys

import pytest

from dscnet_cli import main


@pytest.mark.parametrize("command", ["train", "export", "evaluate"])
def test_missing_training_extra_gives_the_install_command(command, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    with pytest.raises(SystemExit) as exited:
        main([command])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dscnet {command}: this command needs the training extra; install it with: pip install -e '.[train]'"


def test_train_command_defaults_are_the_recipe_that_training_uses(tmp_path):
    import argparse

    from training import cli, recipe

    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train"])
    shown = (args.epochs, args.blur_share, args.blur_sigma_max, args.wide_field_share, args.context_swap,
             args.narrow_field_share)
    assert shown == (recipe.EPOCHS, recipe.BLUR_SHARE, recipe.BLUR_SIGMA_MAX, recipe.WIDE_FIELD_SHARE,
                     recipe.CONTEXT_SWAP, recipe.NARROW_FIELD_SHARE) == (20, 0.4, 2.0, 0.15, 0.5, 0.2)
    assert args.filter_space is None and recipe.FILTER_SPACE == "lab"  # None: the recipe's, for DSCNet only
    assert args.stem_strides is None and recipe.STEM_STRIDES == (2, 2)
    assert args.input_pool is None and recipe.INPUT_POOL == 1
    assert args.filter_epsilon is None and recipe.FILTER_EPSILON == 1e-6

    pytest.importorskip("keras", reason="the [train] extra is not installed")  # CI installs it
    from training import augment
    from training.train import TrainConfig

    config = TrainConfig(data_dir=tmp_path, out_dir=tmp_path)
    assert (config.epochs, config.blur_share, config.blur_sigma_max, config.wide_field_share,
            config.context_swap, config.narrow_field_share) == shown
    assert config.model.filter_space == recipe.FILTER_SPACE
    assert config.model.stem_strides == recipe.STEM_STRIDES
    assert config.model.input_pool == recipe.INPUT_POOL
    assert config.model.filter_epsilon == recipe.FILTER_EPSILON
    layer = augment.SmearAugment(seed=0)
    assert (layer.blur_share, layer.blur_sigma_max) == shown[1:3]


@pytest.mark.parametrize("option", [["--filter-space", "lab"], ["--stem-strides", "1", "2"], ["--input-pool", "2"],
                                    ["--filter-epsilon", "1e-6"]])
def test_dscnet_options_with_another_architecture_are_refused_not_ignored(option, tmp_path, capsys):
    pytest.importorskip("keras", reason="the [train] extra is not installed")  # CI installs it
    with pytest.raises(SystemExit) as exited:
        main(["train", "--arch", "lenet5", *option, "--out", str(tmp_path / "run")])
    assert f"{option[0]} applies to dscnet only" in str(exited.value.code)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "-1e-6", "nan", "inf", "tiny"])
def test_a_filter_epsilon_that_is_not_a_positive_number_is_refused(value, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--filter-epsilon", value])
    assert exited.value.code == 2
    assert "--filter-epsilon" in capsys.readouterr().err


def test_the_card_states_the_filter_epsilon_a_run_was_trained_with():
    from training.card import IMAGE_FILTERS, image_filter_text

    assert image_filter_text({"filter_space": "lab", "filter_epsilon": 1e-6}).startswith(IMAGE_FILTERS["lab"])
    assert image_filter_text({"filter_space": "lab", "filter_epsilon": 1e-6}).endswith("standardisation: 1e-06.")
    # a run from before the option was trained with the floor of then
    assert image_filter_text({"filter_space": "density"}).endswith("standardisation: 0.001.")
