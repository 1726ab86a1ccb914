"""Shared fixtures: tiny models with known shapes, built fast, tiny image-folder datasets, and quiet TensorFlow."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One distinct colour per class, so that even two training steps can start telling them apart.
CLASS_COLOURS = {"bird": (220, 40, 40), "cat": (40, 200, 40), "dog": (40, 40, 220), "horse": (230, 220, 40)}
TINY_COUNTS = {"train": 8, "test": 3}
TINY_SIZE = 32
NOISE = 20


def write_image_folder(root: Path, counts: dict[str, int] = TINY_COUNTS, size: int = TINY_SIZE, seed: int = 0) -> Path:
    """Write ``root/<split>/<class>/NNN.png``: ``counts[split]`` noisy images of each class's colour; returns root."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for name, colour in CLASS_COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = np.asarray(colour) + rng.integers(-NOISE, NOISE + 1, (size, size, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{index:03d}.png")
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A dataset of this test's own, which it may change (add bad files...)."""
    return write_image_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def shared_tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dataset for the whole session, built once; read it, never change it."""
    return write_image_folder(tmp_path_factory.mktemp("shared") / "data")
