"""How fast the dashboard answers, measured in a real browser (headless Chromium via Playwright) at 1280x720.

- Cold start: from launching ``streamlit run dashboard.py`` to the first page showing the worked example (models
  loaded and compiled; this includes the attempt to get ImageNet VGG16).
- Upload to panels: with models warm, from handing a 1024x768 photo to the page's file input until the first frame
  the browser paints with all three panels of that photo and their captions (seen by a MutationObserver in the page,
  not by polling, which would take CPU from the server on the same machine). Each run uses a different photo, so no
  cache hits. Where the time
  goes comes from the browser (the upload request) and from the server's log, where the dashboard writes one line
  per view: script start and decoding, the networks' passes, rendering the panels (overlays, JPEG data URIs, the
  figure), sending the figure, and preparing the downloads (PNGs and the web page, made after the panels are
  shown). The rest is Streamlit's messages and the browser drawing.

Each detail level of ``--details`` (default: standard and finer, short side 128 and 256 for the photo pair) is
measured in the same run and server, one after the other, so that their ratio holds on any machine.

Run: ``python -m benchmarks.bench_dashboard [--runs 5] [--details standard,finer]``. It uses the checkpoints and
settings of the environment, like a real start of the dashboard.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_browser import (  # noqa: E402
    ROOT,
    SCRIPT_IDLE,
    TIMEOUT_MS,
    browser_page,
    chromium,
    open_app,
    photo,
    streamlit_server,
    upload_and_wait,
    wait_for_panels,
)

SIZE = (1024, 768)
VIEW = re.compile(r"view of (?P<key>\S+): (?P<steps>.*)$")
STEP = re.compile(r"([\w ]+?) (\d+) ms")
# The steps before the panels reach the browser; "downloads" and the rest of the script come after them.
BEFORE_PANELS = ("start and decode", "networks", "panels", "figure sent")
PASSES = "passes"  # the part of "networks" spent in the networks' passes themselves


def server_steps(log: Path, key: str, timeout: float = 60) -> dict[str, float]:
    """The dashboard's timings (ms) of the view of ``key`` from the server's log (waits until it is written)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in reversed(log.read_text(errors="replace").splitlines()):
            found = VIEW.search(line)
            if found and key.startswith(found["key"]):
                return {name.strip(): float(ms) for name, ms in STEP.findall(found["steps"])}
        time.sleep(0.2)
    raise TimeoutError(f"no timings for {key} in the server's log")


def upload_rows(page, url: str, photos: list[Path], log: Path) -> list[dict[str, float]]:
    """Open ``url``, warm up with the first photo, then time the upload of each other photo (ms per step)."""
    open_app(page, url)
    upload_and_wait(page, photos[0])  # warm-up: the first upload also warms the caches of its size
    rows = []
    for picture in photos[1:]:
        with page.expect_response(lambda response: "upload_file" in response.url) as sent:
            began = time.time() * 1000  # the browser's clock is the machine's: same epoch
            total = upload_and_wait(page, picture) - began
        page.wait_for_selector(SCRIPT_IDLE, timeout=TIMEOUT_MS)  # the downloads are made after the panels
        timing = sent.value.request.timing
        steps = server_steps(log, "upload:" + hashlib.sha256(picture.read_bytes()).hexdigest())
        before = {step: steps[step] for step in BEFORE_PANELS}
        rows.append({
            "upload -> 3 panels drawn": total, "upload request (browser)": timing["responseEnd"],
            **before, "  of which network passes": steps[PASSES],
            "Streamlit and browser (rest)": total - timing["responseEnd"] - sum(before.values()),
            "downloads (after panels)": steps["downloads"],
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="uploads to time, each a different photo (default 5)")
    parser.add_argument("--details", default="standard,finer", help="detail levels, comma-separated")
    parser.add_argument("--server-root", type=Path, default=ROOT,
                        help="the checkout whose dashboard to serve (default this one; another one for a before/after)")
    args = parser.parse_args()
    executable = chromium()
    if executable is None:
        print("needs a chromium binary on PATH or at /usr/bin/chromium", file=sys.stderr)
        return 1
    details = [name for name in args.details.split(",") if name]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        log = folder / "streamlit.log"
        started = time.perf_counter()
        with streamlit_server(log, root=args.server_root) as url, browser_page(executable) as page:
            healthy = time.perf_counter()
            page.goto(url)
            page.get_by_text("Starting up").wait_for(timeout=TIMEOUT_MS)
            first_words = time.perf_counter()
            wait_for_panels(page, [])  # the same visit, once the worked example is drawn
            usable = time.perf_counter()
            for index, detail in enumerate(details):  # different photos per level: no cache hits
                photos = [photo(folder / f"photo_{index}_{seed}.jpg", SIZE, 100 * index + seed)
                          for seed in range(1, args.runs + 2)]
                results[detail] = upload_rows(page, f"{url}/?detail={detail}", photos, log)
    print(f"Dashboard benchmark: {args.runs} uploads of different {SIZE[0]}x{SIZE[1]} JPEGs per detail level, "
          "models warm, 1280x720 window\n")
    for detail, rows in results.items():
        print(f"detail {detail}")
        print(f"{'step':<32}{'median ms':>12}{'min ms':>10}{'max ms':>10}")
        for step in rows[0]:
            values = [row[step] for row in rows]
            print(f"{step:<32}{statistics.median(values):>12.0f}{min(values):>10.0f}{max(values):>10.0f}")
        print()
    first, *others = results
    for other in others:
        ratio = (statistics.median(row["upload -> 3 panels drawn"] for row in results[other])
                 / statistics.median(row["upload -> 3 panels drawn"] for row in results[first]))
        passes = (statistics.median(row["  of which network passes"] for row in results[other])
                  / statistics.median(row["  of which network passes"] for row in results[first]))
        print(f"{other} / {first}: upload to panels x{ratio:.2f}, network passes x{passes:.2f}")
    print(f"cold start: server healthy after {healthy - started:.1f} s, first words on the page after "
          f"{first_words - started:.1f} s, worked example shown after {usable - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
