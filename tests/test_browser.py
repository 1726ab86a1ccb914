"""End to end: ``streamlit run dashboard.py`` driven by the system's headless Chromium through Playwright.

Marked ``browser``. Skipped where Chromium or the playwright package is missing, except under ``CI=true``, where
that fails the test. Playwright never downloads a browser here: it is pointed at the Debian chromium binary.
The helpers are shared with ``benchmarks/bench_dashboard.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from cam.examples import example_photo

if TYPE_CHECKING:
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PANEL_METHODS = ("Grad-CAM · ", "Guided Grad-CAM · ", "NoPool-GAP CAM · ")
UPLOAD_INPUT = '[data-testid="stFileUploaderDropzoneInput"]'
SCRIPT_IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
PANEL_SOURCES = "() => Array.from(document.querySelectorAll('.js-plotly-plot image'), image => image.href.baseVal)"
# True once the figure holds three images that all differ from `old` (the panels of the previous photo).
PANELS_REPLACED = f"""old => {{ const now = ({PANEL_SOURCES})();
    return now.length === 3 && now.every(source => !old.includes(source)); }}"""
AXIS_RANGES = """() => { const layout = document.querySelector('.js-plotly-plot')._fullLayout;
    return ['xaxis', 'xaxis2', 'xaxis3', 'yaxis', 'yaxis2', 'yaxis3'].map(name => layout[name].range); }"""
TIMEOUT_MS = 300_000  # the first run builds VGG16 on a CPU that may be busy


def chromium() -> str | None:
    """The system Chromium's path, or None."""
    found = shutil.which("chromium") or "/usr/bin/chromium"
    return found if Path(found).is_file() else None


def require_browser() -> str:
    """Chromium's path; skip (fail under CI=true) when it or the playwright package is missing."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (pip install playwright)")
    if chromium() is None:
        missing.append("a chromium binary on PATH or at /usr/bin/chromium (apt install chromium)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return chromium()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def offline_env(folder: Path) -> dict[str, str]:
    """Settings for a hermetic server: no checkpoints, no dataset, and ImageNet weights that fail at once (an
    unreachable proxy) instead of a 528 MB download."""
    return {
        "CAM_CHECKPOINTS": str(folder / "checkpoints"), "CAM_DATA": str(folder / "no_dataset"),
        "KERAS_HOME": str(folder / "keras"), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
    }


@contextlib.contextmanager
def streamlit_server(log: Path, env: dict[str, str] | None = None, timeout: float = 300) -> Iterator[str]:
    """``streamlit run dashboard.py`` on a free port; yields its URL once healthy and always terminates it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port", str(port),
               "--server.headless", "true"]
    with open(log, "wb") as output:
        server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=output,
                                  stderr=subprocess.STDOUT)
        try:
            _wait_healthy(url, server, log, timeout)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy from the environment
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError):
            with direct.open(f"{url}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    return
        time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s; see {log}")


@contextlib.contextmanager
def browser_page(executable: str, width: int = 1600, height: int = 2000) -> Iterator[Page]:
    """A page of headless Chromium, tall enough that the whole dashboard fits in one screenshot (Streamlit
    scrolls inside its own container, so a full-page screenshot would not show more)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def open_app(page: Page, url: str) -> None:
    """Load the page and wait until it can take an upload."""
    page.goto(url)
    page.wait_for_selector(UPLOAD_INPUT, state="attached", timeout=TIMEOUT_MS)
    page.wait_for_selector(SCRIPT_IDLE, timeout=TIMEOUT_MS)


def upload_and_wait(page: Page, photo: Path) -> None:
    """Upload ``photo`` through the page's file input; return once its three panels are drawn and captioned."""
    before = page.evaluate(PANEL_SOURCES)
    page.locator(UPLOAD_INPUT).set_input_files(photo)
    page.get_by_text(f"Uploaded photo “{photo.name}”").wait_for(timeout=TIMEOUT_MS)
    page.wait_for_selector(SCRIPT_IDLE, timeout=TIMEOUT_MS)
    page.wait_for_function(PANELS_REPLACED, arg=before, timeout=TIMEOUT_MS)
    for method in PANEL_METHODS:
        page.get_by_text(panel_caption(method, *Image.open(photo).size)).wait_for(timeout=TIMEOUT_MS)


def panel_caption(method: str, width: int, height: int) -> re.Pattern:
    """A panel's caption, e.g. 'Grad-CAM · vgg16 · cat (p=0.28) · 2x2 -> 640x480' (Streamlit's Markdown shows
    '->' as an arrow)."""
    return re.compile(rf"^{re.escape(method)}.* (->|→) {width}x{height}$")


def photo(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """A real photo as a JPEG of ``size`` (width, height): the example portrait, colour-shifted by ``seed`` so
    that different seeds give different bytes (and miss the dashboard's caches)."""
    image = np.asarray(Image.open(example_photo()).convert("RGB").resize(size), dtype=np.int16)
    shift = np.random.default_rng(seed).integers(-40, 41, 3) if seed else 0
    Image.fromarray(np.clip(image + shift, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


@pytest.mark.browser
@pytest.mark.slow
def test_upload_shows_three_linked_panels(tmp_path: Path) -> None:
    executable = require_browser()
    picture = photo(tmp_path / "portrait.jpg", (640, 480))
    with streamlit_server(tmp_path / "streamlit.log", offline_env(tmp_path)) as url, browser_page(executable) as page:
        open_app(page, url)
        assert page.get_by_text("No trained checkpoint — showing UNTRAINED models").is_visible()
        upload_and_wait(page, picture)
        for method in PANEL_METHODS:
            assert page.get_by_text(panel_caption(method, 640, 480)).is_visible()
        assert page.get_by_text(re.compile(r"map \d+ ms \(\w+ pass\) · render \d+ ms")).count() == 3
        screenshot = tmp_path / "dashboard.png"
        page.screenshot(path=screenshot)  # before the zoom check, which leaves a hover label and a hint behind

        # Downloads are PNGs at the photo's full resolution.
        for button, smallest in (("Download Grad-CAM (PNG, 640x480)", (640, 480)),
                                 ("Download all side by side (PNG)", (3 * 640, 480))):
            with page.expect_download(timeout=TIMEOUT_MS) as download:
                page.get_by_role("button", name=button).click()
            with Image.open(download.value.path()) as png:
                assert png.format == "PNG" and png.width >= smallest[0] and png.height >= smallest[1]

        # Zooming one panel zooms all three the same way.
        area = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
        page.mouse.move(area["x"] + area["width"] * 0.3, area["y"] + area["height"] * 0.3)
        page.mouse.down()
        page.mouse.move(area["x"] + area["width"] * 0.6, area["y"] + area["height"] * 0.6, steps=5)
        page.mouse.up()
        page.wait_for_timeout(500)
        ranges = page.evaluate(AXIS_RANGES)
        assert ranges[0] == ranges[1] == ranges[2] and ranges[3] == ranges[4] == ranges[5]
        assert ranges[0][1] - ranges[0][0] < 640 / 2, "the drag should have zoomed in"
    if os.environ.get("CAM_SCREENSHOT_DIR"):
        target = Path(os.environ["CAM_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, target / screenshot.name)
