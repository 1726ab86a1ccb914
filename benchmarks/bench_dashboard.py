"""How fast the dashboard answers, measured in a real browser (headless Chromium via Playwright).

- Cold start: from launching ``streamlit run dashboard.py`` to the first page that takes an upload (models
  loaded; this includes the attempt to get ImageNet VGG16).
- Upload to panels: with models warm, from handing a 1024x768 photo to the page's file input until all three
  panels of that photo are drawn and captioned. Each run uses a different photo, so no cache hits. The split
  comes from what the page itself prints: the VGG16 and NoPool-GAP pass times and the server's render time;
  the rest is upload, decoding, Streamlit and the browser drawing.

Run: ``python -m benchmarks.bench_dashboard [--runs 5]``. It uses the checkpoints and settings of the
environment, like a real start of the dashboard.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_browser import browser_page, chromium, open_app, photo, streamlit_server, upload_and_wait  # noqa: E402

TIMINGS = re.compile(r"map (\d+) ms \((\w+) pass\) · render (\d+) ms")
SIZE = (1024, 768)

if TYPE_CHECKING:
    from playwright.sync_api import Page


def page_timings(page: Page) -> dict[str, float]:
    """The pass and render times (ms) that the page shows under the panels."""
    found = {}
    for text in page.get_by_text(TIMINGS).all_inner_texts():
        map_ms, model, render_ms = TIMINGS.search(text).groups()
        found[f"{model} pass"], found["render (server)"] = float(map_ms), float(render_ms)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="uploads to time, each a different photo (default 5)")
    args = parser.parse_args()
    executable = chromium()
    if executable is None:
        print("needs a chromium binary on PATH or at /usr/bin/chromium", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        photos = [photo(folder / f"photo_{seed}.jpg", SIZE, seed) for seed in range(1, args.runs + 2)]
        started = time.perf_counter()
        with streamlit_server(folder / "streamlit.log") as url, browser_page(executable) as page:
            healthy = time.perf_counter()
            open_app(page, url)
            usable = time.perf_counter()
            upload_and_wait(page, photos[0])  # warm-up: the first photo also compiles the explainer
            rows = []
            for picture in photos[1:]:
                sent = time.perf_counter()
                upload_and_wait(page, picture)
                total = (time.perf_counter() - sent) * 1000
                shown = page_timings(page)
                rows.append({"upload -> 3 panels drawn": total, **shown,
                             "upload, Streamlit, browser": total - sum(shown.values())})
    print(f"Dashboard benchmark: {args.runs} uploads of different {SIZE[0]}x{SIZE[1]} JPEGs, models warm\n")
    print(f"{'step':<28}{'median ms':>12}{'min ms':>10}{'max ms':>10}")
    for step in rows[0]:
        values = [row[step] for row in rows]
        print(f"{step:<28}{statistics.median(values):>12.0f}{min(values):>10.0f}{max(values):>10.0f}")
    print(f"\ncold start: server healthy after {healthy - started:.1f} s, "
          f"first page usable after {usable - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
