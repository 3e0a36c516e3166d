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
