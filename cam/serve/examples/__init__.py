"""The built-in gallery: four small pictures shipped in this folder (165 KB together), so that a fresh install can
try the dashboard without a dataset. All come from scikit-image's sample data (``skimage.data``), converted to JPEG
(the horse: a greyscale PNG on white); their licences allow it: see the README's "Built-in pictures"."""

from __future__ import annotations

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent
# File -> what it shows (in the order of the gallery; the first one is the page's worked example: at the standard
# detail both networks of the photo pair call the drawing a horse, and its outline shows where each map looks).
EXAMPLES = {
    "horse_drawing.png": "A drawing of a horse",
    "chelsea_cat.jpg": "Chelsea the cat",
    "coffee.jpg": "A cup of coffee",
    "astronaut.jpg": "An astronaut",
}
# File -> source and licence (the README repeats them).
LICENCES = {
    "chelsea_cat.jpg": "skimage.data.chelsea(): photo by Stefan van der Walt, CC0",
    "horse_drawing.png": "skimage.data.horse(): drawing by Andreas Preuss (marauder) on openclipart, CC0",
    "coffee.jpg": "skimage.data.coffee(): photo by Rachel Michetti, CC0",
    "astronaut.jpg": "skimage.data.astronaut(): NASA photo of Eileen Collins, public domain",
}


def example_photo() -> Path:
    """A built-in photo (Chelsea the cat), for tests and benchmarks that upload a real photo."""
    return EXAMPLES_DIR / "chelsea_cat.jpg"
