"""A training-time teacher: ImageNet EfficientNet-Lite0 giving soft labels over bird, cat, dog, horse.

The network is ``cam.models.imagenet_net``'s, the verdict's 1000-class screen
(``checkpoints/efficientnet_lite0_imagenet.keras``). Its 1000 ImageNet probabilities become 4 by summing each of our
classes' ImageNet groups (``cam.models.checkpoints.imagenet_class_groups``) and renormalising over the 4 sums.

    python -m cam.train.teacher --data ../shared/data/photos4 --split train --out runs/teacher/train.npz

writes ``files`` (paths relative to the data root) and ``probabilities`` (N x 4 float32, order ``CLASSES``) and
prints the accuracy per class against the folder labels. ``--compare N`` instead scores each way of resizing on
N training images (never the test split), which is how the default below was chosen.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from cam.core.catalog import checkpoint_path
from cam.core.device import describe_device
from cam.data.folders import list_images
from cam.models.checkpoints import imagenet_class_groups, load_checkpoint
from cam.models.imagenet_net import INPUT_SIZE, NAME

CLASSES = ("bird", "cat", "dog", "horse")
RESIZES = ("crop", "squash")  # short side to 224 then centre crop / whole image to 224 x 224
# Chosen with --compare 400 (100 training images per class, seed 0): accuracy crop 0.828, squash 0.825 with the TF
# Lite models' normalisation (x - 127.5) / 127.5, which the network applies itself; ImageNet's mean and spread
# instead gave 0.780 / 0.775 (measured with the PyTorch twin this module used before).
DEFAULT_RESIZE = "crop"


def load_teacher() -> keras.Model:
    """EfficientNet-Lite0 with ImageNet weights: the shipped checkpoint (``python -m cam.models.imagenet_net
    convert``)."""
    return load_checkpoint(checkpoint_path(NAME)).model


def group_matrix() -> np.ndarray:
    """1000 x 4 matrix of 0/1: entry (i, c) is 1 when ImageNet class i belongs to our class ``CLASSES[c]``."""
    groups = imagenet_class_groups()
    matrix = np.zeros((1000, len(CLASSES)))
    for column, name in enumerate(CLASSES):
        matrix[groups[name], column] = 1.0
    return matrix


def four_class_probabilities(imagenet_probabilities: np.ndarray) -> np.ndarray:
    """(N, 1000) ImageNet probabilities -> (N, 4) float32: each class's group summed, then renormalised over the 4."""
    sums = np.asarray(imagenet_probabilities, np.float64) @ group_matrix()
    return (sums / np.maximum(sums.sum(axis=1, keepdims=True), 1e-300)).astype(np.float32)


def preprocess(image: Image.Image, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """An image -> RGB (224, 224, 3) float32 0..255; ``resize``: one of RESIZES."""
    image = image.convert("RGB")
    if resize == "crop":
        scale = INPUT_SIZE / min(image.size)
        width, height = max(INPUT_SIZE, round(image.width * scale)), max(INPUT_SIZE, round(image.height * scale))
        image = image.resize((width, height), Image.BICUBIC)
        left, top = (width - INPUT_SIZE) // 2, (height - INPUT_SIZE) // 2
        image = image.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))
    elif resize == "squash":
        image = image.resize((INPUT_SIZE, INPUT_SIZE), Image.BICUBIC)
    else:
        raise ValueError(f"resize must be one of {RESIZES}, not {resize!r}")
    return np.asarray(image, dtype=np.float32)


def predict(model: keras.Model, paths: Sequence[Path], resize: str = DEFAULT_RESIZE, batch: int = 32) -> np.ndarray:
    """Soft labels (N x 4 float32, order ``CLASSES``) for the image files ``paths``."""
    out = []
    for start in range(0, len(paths), batch):
        images = np.stack([preprocess(Image.open(path), resize) for path in paths[start : start + batch]])
        out.append(four_class_probabilities(model.predict_on_batch(images)))
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), np.float32)


def accuracy_lines(probabilities: np.ndarray, labels: np.ndarray) -> list[str]:
    """Overall and per-class accuracy of the argmax against ``labels``, one line each."""
    correct = probabilities.argmax(axis=1) == labels
    lines = [f"overall {correct.mean():.4f} ({correct.sum()}/{len(correct)})"]
    for label, name in enumerate(CLASSES):
        mine = correct[labels == label]
        lines.append(f"{name:<7} {mine.mean():.4f} ({mine.sum()}/{len(mine)})")
    return lines


def compare(model: keras.Model, paths: list[Path], labels: np.ndarray, count: int, seed: int = 0) -> None:
    """Print the accuracy of every resize on ``count`` images, the same per class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    per_class = count // len(CLASSES)
    picked = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(4)])
    for resize in RESIZES:
        probabilities = predict(model, [paths[i] for i in picked], resize)
        print(f"resize={resize:<6} " + " | ".join(accuracy_lines(probabilities, labels[picked])))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cam.train.teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="image-folder root holding <split>/<class>/")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", type=Path, help=".npz to write (files, probabilities, classes)")
    parser.add_argument("--resize", choices=RESIZES, default=DEFAULT_RESIZE)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--compare", type=int, metavar="N", help="score every preprocessing on N training images")
    args = parser.parse_args(argv)

    if args.compare and args.split != "train":
        parser.error("--compare chooses the preprocessing: run it on --split train only, never on test")
    if not args.compare and args.out is None:
        parser.error("--out is required (unless --compare)")
    model = load_teacher()
    paths, labels = list_images(args.data, args.split, list(CLASSES))
    if not paths:
        parser.error(f"no pictures under {args.data / args.split}/<class>/ for the classes {', '.join(CLASSES)}")
    if args.compare:
        compare(model, paths, labels, args.compare)
        return
    started = time.perf_counter()
    probabilities = predict(model, paths, args.resize, args.batch)
    seconds = time.perf_counter() - started
    files = np.asarray([path.relative_to(args.data).as_posix() for path in paths])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, files=files, probabilities=probabilities, classes=np.asarray(CLASSES))
    print(
        f"{args.split}: {len(paths)} images, resize={args.resize}, {len(paths) / seconds:.1f} images/s on "
        f"{describe_device()}; wrote {args.out}"
    )
    print("\n".join(accuracy_lines(probabilities, labels)))


if __name__ == "__main__":
    main()
