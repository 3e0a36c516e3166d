"""The page end to end: a real `uvicorn` serving the tiny model, driven by Debian's chromium via Playwright.

CI installs chromium with apt (`apt-get install -y chromium`); where it is missing this test
fails with that instruction rather than skipping. Playwright's own browser downloads are
never used: the test launches /usr/bin/chromium (or $DSCNET_CHROMIUM).
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import helpers_smears as smears
from helpers_lab import calibration, model_with
from synthetic import png_bytes

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("DSCNET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """`uvicorn app.main:app` on a free loopback port with a calibrated tiny model; yields its URL."""
    model = model_with(tmp_path / "models", calibration(threshold=0.3))
    port = free_port()
    env = {**os.environ, "DSCNET_MODEL_PATH": str(model), "DSCNET_ORT_THREADS": "1", "DSCNET_API_KEYS": ""}
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"uvicorn exited with {process.returncode}: {(tmp_path / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"uvicorn did not get ready in 60 s: {(tmp_path / 'server.log').read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def browser():
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"chromium is not installed at {CHROMIUM}: run `apt-get install -y chromium` "
                    "(CI installs it) or set DSCNET_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_a_technician_classifies_chosen_and_dropped_images(browser, server: str, tmp_path: Path) -> None:
    smear_file = tmp_path / "smear-001.png"
    smear_file.write_bytes(png_bytes(smears.smear()))
    photo_file = tmp_path / "holiday.png"
    photo_file.write_bytes(png_bytes(smears.landscape()))
    notes_file = tmp_path / "notes.txt"
    notes_file.write_text("not an image\n")

    page = browser.new_page()
    foreign: list[str] = []
    page.on("request", lambda request: None if request.url.startswith((server, "data:", "blob:"))
            else foreign.append(request.url))
    page.goto(server + "/")
    assert "not a stand-alone diagnosis" in page.inner_text("#disclaimer")
    page.wait_for_function("document.querySelector('#model-info').textContent.includes('0.0.1-test')",
                           timeout=TIMEOUT_MS)
    assert "tests only" in page.inner_text("#disclaimer")  # the card's intended use

    page.get_by_label("Choose smear images").set_input_files([str(smear_file), str(photo_file), str(notes_file)])
    page.wait_for_function("document.querySelectorAll('li.result:not([data-state=pending])').length === 3",
                           timeout=TIMEOUT_MS)
    page.wait_for_function(
        "[...document.querySelectorAll('li.result[data-state=done] img.heatmap')]"
        ".every(img => img.complete && img.naturalWidth === 224 && img.naturalHeight === 224)",
        timeout=TIMEOUT_MS,
    )
    results = page.locator("li.result")
    smear_card, photo_card, notes_card = results.nth(0), results.nth(1), results.nth(2)

    assert smear_card.locator(".file-name").inner_text() == "smear-001.png"
    bars = smear_card.get_by_role("meter")
    assert bars.count() == 4
    values = [float(bars.nth(i).get_attribute("aria-valuenow")) for i in range(4)]
    assert abs(sum(values) - 100) < 0.5
    label_text = smear_card.locator(".label").inner_text()
    assert label_text.startswith("Predicted: ")
    assert smear_card.locator(".referral").inner_text().startswith("No referral")
    assert smear_card.locator(".warnings li").count() == 0
    assert "evidence for" in smear_card.locator("img.heatmap").get_attribute("alt")

    assert photo_card.locator(".referral").inner_text().startswith("Refer to a human: image quality warnings")
    assert photo_card.locator(".warnings li").inner_text().startswith("Not smear-like: ")
    assert photo_card.get_by_role("meter").count() == 4

    assert notes_card.locator(".error").inner_text().startswith("Not classified: the file is not a recognised image")
    assert notes_card.locator("img.original").is_hidden() and notes_card.locator("img.heatmap").is_hidden()
    assert page.inner_text("#status") == "Done: 3 image(s), 1 referred to a human, 1 not classified."

    # Dropping a file on the zone does the same as choosing it.
    data = base64.b64encode(png_bytes(smears.blurred(smears.smear(1)))).decode()
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            return transfer;
        }""",
        data,
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    page.wait_for_function("document.querySelectorAll('li.result[data-state=done]').length === 3",
                           timeout=TIMEOUT_MS)
    dropped = results.nth(3)
    assert dropped.locator(".file-name").inner_text() == "dropped.png"
    assert dropped.locator(".warnings li").inner_text().startswith("Out of focus: ")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert foreign == []
