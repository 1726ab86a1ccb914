"""The built-in example photo, taken from a declared dependency so that a fresh install can try the dashboard
without a dataset and without committing a large file."""

from __future__ import annotations

from pathlib import Path

import matplotlib

# No dependency ships an animal photo; matplotlib ships this portrait in its sample data.
EXAMPLE_FILE = "grace_hopper.jpg"
EXAMPLE_DESCRIPTION = f"Grace Hopper's portrait, matplotlib/mpl-data/sample_data/{EXAMPLE_FILE} (ships with matplotlib)"


def example_photo() -> Path:
    """Path of the example photo; it may be missing where a packager stripped matplotlib's sample data."""
    return Path(matplotlib.get_data_path()) / "sample_data" / EXAMPLE_FILE
