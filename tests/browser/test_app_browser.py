"""The web app in a real browser: `bridgeseg serve` in a subprocess, driven by headless Chromium via Playwright.

Run with `make test-browser` (installs Debian's `chromium` and the `playwright` package; never `playwright
install`, which would download a browser) or `pytest -m browser`.

Environment:
    BRIDGESEG_CHROMIUM: the Chromium binary (default /usr/bin/chromium).
    BRIDGESEG_APP_CHECKPOINT: serve this checkpoint instead of a tiny random one (e.g. outputs/demo/model).
    BRIDGESEG_SCREENSHOT: also write the page's screenshot there (e.g. docs/images/app.png), as a small
        palette PNG.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from bridgeseg.app.server import EXAMPLES
from bridgeseg.data.mosaic import render_val_mosaics

pytestmark = pytest.mark.browser

logger = logging.getLogger(__name__)

CHROMIUM = os.environ.get("BRIDGESEG_CHROMIUM", "/usr/bin/chromium")
# No sandbox: CI runs as root in a container. The rest keeps Chromium from calling home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
SERVER_START_TIMEOUT_S = 180
SEGMENT_TIMEOUT_MS = 120_000
SCREENSHOT_MAX_BYTES = 200_000


def _tiny_checkpoint(directory: Path) -> Path:
    from bridgeseg.checkpoints import save_checkpoint
    from bridgeseg.models import create_model

    torch.manual_seed(0)
    classes = ["sky", "grass", "cat"]
    # Random class embeddings: the model's own classes need no text encoder.
    embeddings = torch.nn.functional.normalize(torch.randn(len(classes), 384), dim=-1)
    options = {"backbone": "test_resnet", "fusion_dim": 32, "decoder_channels": 16}
    model = create_model("bridge", classes=classes, class_embeddings=embeddings, **options)
    return save_checkpoint(model, directory)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get_json(url: str) -> Any:
    # No proxy: the server is on loopback and nothing else may be contacted.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("BRIDGESEG_APP_CHECKPOINT")
    if given:
        return Path(given)
    return _tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "model")


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`bridgeseg serve` on a free loopback port; yields its base URL."""
    port = _free_loopback_port()
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    command = [sys.executable, "-m", "bridgeseg.cli", "serve", "--checkpoint", str(checkpoint), "--port", str(port)]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"`bridgeseg serve` exited with {process.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                _get_json(f"{url}/api/info")
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"`bridgeseg serve` did not answer within {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()}"
                )
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        logger.info("server log:\n%s", log_path.read_text())


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright's Python package: run `make test-browser`")
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run `make test-browser` (apt-get install chromium) or set BRIDGESEG_CHROMIUM"
        )
    with sync_playwright() as playwright:
        # A default temporary profile: fresh for every run, deleted on close.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    """A fresh page on the app that records every request, console error and page error."""
    context = browser.new_context(viewport={"width": 1180, "height": 760})
    page = context.new_page()
    page.requests = []
    page.errors = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(server)
    # The page fills the class box and the example list from the API.
    page.wait_for_function("() => document.getElementById('classes').value.length > 0")
    page.wait_for_function("() => document.querySelectorAll('#example option').length > 1")
    try:
        yield page
    finally:
        context.close()


def _assert_stayed_local(page: Any, server: str) -> None:
    foreign = [url for url in page.requests if not url.startswith((server + "/", "data:", "blob:"))]
    assert not foreign, f"the page contacted other hosts: {foreign}"
    assert not page.errors, f"errors in the browser: {page.errors}"


def _save_docs_screenshot(page: Any, target: Path) -> None:
    """A palette PNG of the page: small enough to commit (< 200 KB)."""
    import io

    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    target.parent.mkdir(parents=True, exist_ok=True)
    shot.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        target, format="PNG", optimize=True
    )
    size = target.stat().st_size
    logger.info("wrote the screenshot %s (%d bytes)", target, size)
    assert size < SCREENSHOT_MAX_BYTES, f"{target} is {size} bytes; keep it under {SCREENSHOT_MAX_BYTES}"


def test_upload_segment_and_show_the_result(page: Any, server: str, tmp_path: Path, record_property: Any) -> None:
    # A held-out mosaic (the demo data's val_00000.png): an image the demo model is meant for, so the screenshot
    # shows a meaningful segmentation.
    photo_path = tmp_path / "mosaic_val_00000.png"
    photo = Image.fromarray(render_val_mosaics(1)[0][0])
    photo.save(photo_path)
    classes = _get_json(f"{server}/api/info")["classes"]

    page.set_input_files("#image-file", str(photo_path))
    page.wait_for_function("() => document.getElementById('preview').naturalWidth > 0")
    page.fill("#classes", ", ".join(classes))
    page.select_option("#mode", "whole")
    with page.expect_response("**/api/segment", timeout=SEGMENT_TIMEOUT_MS) as response_info:
        page.click("#segment")
    response = response_info.value
    assert response.status == 200, response.text()
    result = response.json()
    page.wait_for_function(
        "() => { const img = document.getElementById('overlay');"
        " return !document.getElementById('result').hidden && img.complete && img.naturalWidth > 0; }"
    )

    size = page.eval_on_selector("#overlay", "img => [img.naturalWidth, img.naturalHeight]")
    assert tuple(size) == photo.size
    present = [area["name"] for area in result["areas"] if area["fraction"] > 0]
    legend = page.locator("#legend .class-name").all_inner_texts()
    assert legend == present and set(legend) <= set(classes)
    assert page.locator("#areas tbody tr").count() == len(classes)
    assert page.locator("#error").is_hidden()

    latency_text = page.inner_text("#latency")
    match = re.search(r"Model time: (\d+) ms", latency_text)
    assert match, latency_text
    assert abs(int(match.group(1)) - result["latency_ms"]) <= 1
    assert latency_text.rstrip().endswith("fp32)")  # the precision that ran is on the result line
    record_property("latency_ms", int(match.group(1)))
    logger.info("the page reported: %s", latency_text)

    page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
    target = os.environ.get("BRIDGESEG_SCREENSHOT")
    if target:
        _save_docs_screenshot(page, Path(target))
    _assert_stayed_local(page, server)


def test_example_photo_from_the_list(page: Any, server: str) -> None:
    options = page.locator("#example option").all_inner_texts()
    assert options[1:] == [example.label for example in EXAMPLES]
    # The open-vocabulary photo brings its class list with it.
    page.select_option("#example", "photo-cat")
    page.wait_for_function("() => document.getElementById('preview').naturalWidth > 0")
    assert page.input_value("#classes") == "cat, dog, wall, floor"
    page.select_option("#mode", "slide")
    page.click("#segment")
    page.wait_for_function(
        "() => document.getElementById('overlay').naturalWidth > 0 && !document.getElementById('result').hidden",
        timeout=SEGMENT_TIMEOUT_MS,
    )
    assert page.eval_on_selector("#overlay", "img => img.naturalWidth") == 451
    assert "sliding window" in page.inner_text("#latency")
    _assert_stayed_local(page, server)


def test_bad_class_list_shows_the_message(page: Any, server: str) -> None:
    page.select_option("#example", "mosaic-val-1")
    page.fill("#classes", "coins, sky, coins")
    page.click("#segment")
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=SEGMENT_TIMEOUT_MS)
    assert "duplicate class names ['coins']" in error.inner_text()
    assert page.locator("#result").is_hidden()
    assert page.locator("#segment").is_enabled()
    # The console logs the failed request (400); nothing else may go wrong.
    page.errors[:] = [text for text in page.errors if "400" not in text]
    _assert_stayed_local(page, server)
