"""How long the Evaluation page ("Which map to trust") takes to draw in a fresh Python process, and whether drawing
it loaded TensorFlow or Keras: the page only reads reports, so it should load neither.

Each run starts a new interpreter that draws the page once with Streamlit's AppTest (the page's whole script as
opened from the dashboard's sidebar, the shipped reports, no browser). ``--compare OTHER`` draws the page of
another checkout (for example an export of an earlier commit) in the same run, alternating, so that the ratio
holds on any machine.

Run: ``python -m benchmarks.bench_evaluation_page [--runs 5] [--compare /tmp/old_tree]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The page's file, now and before the pages were declared with st.navigation (2026-12-05), for --compare.
PAGE_FILES = ("pages/Evaluation.py", "pages/1_Evaluation.py")

DRAW_ONCE = """
import json, sys, time
started = time.perf_counter()
from streamlit.testing.v1 import AppTest
page = AppTest.from_file("dashboard.py", default_timeout=300).switch_page(sys.argv[1]).run()
print(json.dumps({"seconds": time.perf_counter() - started, "errors": len(page.exception),
                  "tabs": len(page.tabs), "tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules}))
"""


def draw_once(root: Path) -> dict:
    """One cold draw of ``root``'s Evaluation page: seconds, errors shown, tabs, and whether TF/Keras were loaded."""
    page = next(name for name in PAGE_FILES if (root / name).is_file())
    done = subprocess.run([sys.executable, "-c", DRAW_ONCE, page], cwd=root, capture_output=True, text=True,
                          timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="another checkout whose page is drawn in the same run")
    args = parser.parse_args()
    roots = {"this tree": ROOT, **({"compared": args.compare.resolve()} if args.compare else {})}
    seconds: dict[str, list[float]] = {name: [] for name in roots}
    for run in range(args.runs):
        for name, root in roots.items():
            result = draw_once(root)
            seconds[name].append(result["seconds"])
            print(f"run {run + 1}, {name}: {result['seconds']:.2f} s, {result['tabs']} tabs, "
                  f"{result['errors']} errors, TensorFlow loaded: {result['tensorflow']}, Keras: {result['keras']}")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, median in medians.items():
        print(f"{name}: median {median:.2f} s over {args.runs} cold draws")
    if args.compare:
        print(f"this tree / compared: {medians['this tree'] / medians['compared']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
