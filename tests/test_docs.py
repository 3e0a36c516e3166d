"""The reference tables a lab's IT staff read name every error code and every setting the code has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.errors import HTTP_STATUS
from app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent


def documented_errors(path: Path) -> set[tuple[int, str]]:
    rows = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", path.read_text(), flags=re.MULTILINE)
    return {(int(status), code) for status, code in rows}


def raised_errors() -> set[tuple[int, str]]:
    """(status, code) of every error the service raises; base classes are only fallbacks."""
    leaves = [cls for cls in HTTP_STATUS if not any(other is not cls and issubclass(other, cls) for other in HTTP_STATUS)]
    return {(HTTP_STATUS[cls], cls.reason) for cls in leaves}


@pytest.mark.parametrize("doc", ["docs/SERVICE.md", "README.md"])
def test_every_error_code_is_in_the_error_table_with_its_status(doc: str) -> None:
    missing = raised_errors() - documented_errors(REPO_ROOT / doc)
    assert not missing, f"{doc} does not list {sorted(missing)}"


def test_every_setting_is_in_the_settings_table() -> None:
    rows = [line for line in (REPO_ROOT / "docs" / "SERVICE.md").read_text().splitlines() if line.startswith("| `DSCNET_")]
    documented = set(re.findall(r"`(DSCNET_[A-Z0-9_]+)`", "\n".join(rows)))
    missing = {f"DSCNET_{name.upper()}" for name in Settings.model_fields} - documented
    assert not missing, f"docs/SERVICE.md's settings table lacks {sorted(missing)}"
