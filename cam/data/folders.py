"""Image-folder datasets on disk (``root/<split>/<class>/*.jpg|png``): listing, loading a split at a size, the
class-balanced sample, the train/validation split, each photo's source (photos4's manifest) and figure/ground masks.
No TensorFlow."""

from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cam.core.catalog import PROJECT_ROOT
from cam.core.images import IMAGE_SUFFIXES, ImageError, load_image, own_aspect, resize

PHOTOS4_MANIFEST = Path(__file__).resolve().parent / "manifests" / "photos4.csv.gz"


PHOTO_SHORT_SIDE, PHOTO_LONG_SIDE = 160, 320


class DataError(RuntimeError):
    """A dataset folder or archive that cannot be used; the message says what to do."""


def configured_roots(value: str | None = None) -> list[Path]:
    """The dataset folders named by ``value`` (default: ``$CAM_DATA``), an ``os.pathsep``-separated list."""
    value = os.environ.get("CAM_DATA", "") if value is None else value
    return [Path(part) for part in value.split(os.pathsep) if part.strip()]


def data_root(explicit: str | Path | None = None) -> Path:
    """The dataset root: ``explicit`` if given, else $CAM_DATA (its first folder, when it lists several separated
    by ``os.pathsep`` for the dashboard), else ``data/`` in the project."""
    if explicit:
        return Path(explicit)
    configured = configured_roots()
    if configured:
        return configured[0]
    return PROJECT_ROOT / "data"


def list_classes(root: str | Path, split: str) -> list[str]:
    """Class names of a split: its sub-folders, sorted."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"No '{split}' folder in {root}: expected {root}/{split}/<class>/*.jpg")
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if not classes:
        raise DataError(f"{folder} has no class folders")
    return classes


def list_images(root: str | Path, split: str, classes: list[str] | None = None) -> tuple[list[Path], np.ndarray]:
    """Paths of the images of a split and their class indices, in a stable order."""
    classes = classes or list_classes(root, split)
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (Path(root) / split / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [index] * len(files)
    return paths, np.asarray(labels, dtype=np.int32)


@dataclass
class ImageSet:
    """Images of one split in memory, resized to the model's input, with the files that could not be read."""

    images: np.ndarray | list[np.ndarray]  # (N, size, size, 3) uint8, or a list of own-aspect (h, w, 3) images
    labels: np.ndarray  # (N,) int32
    classes: list[str]
    paths: list[Path]
    bad_files: list[tuple[Path, str]] = field(default_factory=list)

    def subset(self, indices: np.ndarray) -> ImageSet:
        paths = [self.paths[i] for i in indices]
        images = [self.images[i] for i in indices] if isinstance(self.images, list) else self.images[indices]
        return ImageSet(images, self.labels[indices], self.classes, paths, self.bad_files)


def load_split(
    root: str | Path, split: str, size: int, classes: list[str] | None = None, squash: bool = True
) -> ImageSet:
    """Decode every image of ``root/split`` at ``size`` x ``size`` (``squash``: the whole photo squeezed into the
    square, as training does), or with ``squash=False`` at its own aspect ratio with short side ``size``
    (``own_aspect``; ``images`` is then a list); unreadable files are listed in ``bad_files``."""
    classes = classes or list_classes(root, split)
    paths, labels = list_images(root, split, classes)
    if not paths:
        raise DataError(f"No images in {Path(root) / split}")
    images, kept, bad = [], [], []
    for i, path in enumerate(paths):
        try:
            image = load_image(path)
            images.append(resize(image, size) if squash else own_aspect(image, size))
            kept.append(i)
        except ImageError as error:
            bad.append((path, str(error)))
    if not images:
        raise DataError(f"No readable image in {Path(root) / split}; first problem: {bad[0][1]}")
    return ImageSet(np.stack(images) if squash else images, labels[kept], classes, [paths[i] for i in kept], bad)


def balanced_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` indices, as many of each class (as far as there are), in a seeded random order."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: n // len(classes)] for c in classes])
    return rng.permutation(chosen)


def split_train_validation(n: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, reproducible, disjoint split of ``range(n)`` into (train, validation) index arrays."""
    order = np.random.default_rng(seed).permutation(n)
    n_validation = int(round(n * validation_fraction))
    return np.sort(order[n_validation:]), np.sort(order[:n_validation])


def read_manifest(root: str | Path) -> list[dict[str, str]]:
    """Rows of ``root/MANIFEST.csv`` (or a manifest file itself, .csv or .csv.gz): split, class, file, source_repo,
    commit, source_path, sha256, ...; [] when the dataset has none."""
    path = Path(root) if Path(root).is_file() else Path(root) / "MANIFEST.csv"
    if not path.is_file():
        return []
    with (gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")) as file:
        return list(csv.DictReader(file))


def sources_of(root: str | Path, paths: list[Path]) -> list[str] | None:
    """The source repository of each image, from the manifest ("unknown" for files it does not list); None when
    the dataset has no manifest."""
    by_file = {row["file"]: row["source_repo"] for row in read_manifest(root)}
    return [by_file.get(Path(path).relative_to(root).as_posix(), "unknown") for path in paths] if by_file else None


def load_masks(root: str | Path, data: ImageSet, size: int | None = None) -> dict[int, np.ndarray]:
    """Figure/ground masks of the images of ``data`` that have one (``root/masks/<split>/<class>/<name>.png``, 255 =
    object), as boolean arrays at the photo's size, or at ``size`` x ``size`` like the model input; keyed by index."""
    masks = {}
    for index, path in enumerate(data.paths):
        relative = Path(path).relative_to(root)
        mask_path = Path(root) / "masks" / relative.with_suffix(".png")
        if mask_path.is_file():
            mask = Image.open(mask_path).convert("L")
            if size:
                mask = mask.resize((size, size), Image.Resampling.NEAREST)
            masks[index] = np.asarray(mask) >= 128
    return masks


# The study's held-out-source run: per class one source whose photos of that class stay out of training, so that
# the test photos of that class and source show what a network does on photos of an unseen style (people's own).
STUDY_HOLD_OUT = (
    "bird=yinlingmei/CUB_200",
    "cat=Chuck-man/laba5",
    "dog=quoctrung163/keras-cnn-on-cats-and-dogs-dataset",
    "horse=shenshutao/image_segmentation",
)


def parse_hold_out(text: str) -> tuple[str, str]:
    """"CLASS=SOURCE" (SOURCE as MANIFEST.csv's source_repo) -> (class, source)."""
    name, sep, source = text.partition("=")
    if not sep or not name or not source:
        raise ValueError(f"hold-out {text!r}: expected CLASS=SOURCE, e.g. {STUDY_HOLD_OUT[1]}")
    return name, source


def held_out(
    sources: list[str] | None, labels: np.ndarray, classes: list[str], pairs: list[tuple[str, str]]
) -> np.ndarray:
    """Boolean mask of the images whose (class, source) is one of ``pairs``; a pair that matches no image is an
    error (a misspelt source would silently hold out nothing)."""
    if pairs and sources is None:
        raise DataError("holding out a source needs the dataset's MANIFEST.csv (it names each photo's source)")
    mask = np.zeros(len(labels), bool)
    for name, source in pairs:
        if name not in classes:
            raise ValueError(f"hold-out {name}={source}: no class {name!r}; the classes are {', '.join(classes)}")
        mine = (np.asarray(labels) == classes.index(name)) & (np.asarray(sources) == source)
        if not mine.any():
            raise ValueError(f"hold-out {name}={source}: no {name} photo of that source in this split")
        mask |= mine
    return mask
