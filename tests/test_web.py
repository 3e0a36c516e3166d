"""The technician's page as files: served by the app, nothing from outside, names in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from app.api.web import STATIC_DIR
from app.labels import CLASS_NAMES
from app.schemas import WarningCode


def test_the_page_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "not a stand-alone diagnosis" in page.text
    for path, media_type in [("/static/app.js", "text/javascript"), ("/static/app.css", "text/css")]:
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
    assert client.get("/static/missing.js").status_code == 404


def test_the_page_is_not_part_of_the_api_description(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/static") for path in paths)


def test_nothing_is_loaded_from_another_site() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), f"{path.name} names a site"
        assert "@import" not in text


def test_every_control_has_a_label() -> None:
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    for control_id in re.findall(r'<input[^>]*\bid="([^"]+)"', html):
        assert f'for="{control_id}"' in html, f"input #{control_id} has no <label>"
    assert 'lang="en"' in html and 'role="status"' in html


def test_the_script_names_the_classes_and_warnings_as_the_service_does() -> None:
    script = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    for class_id, name in CLASS_NAMES.items():
        assert f'{class_id}: "{name}"' in script
    for code in WarningCode.__args__:
        assert f"{code}:" in script


def test_static_files_are_packaged() -> None:
    """Every file of app/static goes into the wheel: its folder is a declared package and a pattern of its
    package data matches the file (a new file type would otherwise be missing from installs and the image)."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parent.parent
    setuptools = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert "app.static" in setuptools["packages"]
    patterns = setuptools["package-data"]["app.static"]
    files = [path.name for path in (root / "app" / "static").iterdir() if path.is_file()]
    assert files and all(any(fnmatch.fnmatch(name, pattern) for pattern in patterns) for name in files), files
