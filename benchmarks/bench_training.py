"""Training throughput of both architectures at 32x32: float32 against mixed_bfloat16, Keras's BatchNormalization
against cam.train.training.FusedBatchNormalization, and (nopool_gap) whole images against 24x24 crops.

Reports images per second on random data (the best of a few rounds of a few steps: on a shared machine the
slower rounds measure the neighbours), the time of one epoch of 18,000 images (the training
split of cifar4) and the speed-up over the first row of each architecture, all measured in one run on one machine.

    python -m benchmarks.bench_training [--steps 8] [--rounds 3] [--batch 128]
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from cam.core.device import describe_device
from cam.models.architectures import ARCHITECTURES
from cam.train.training import FusedBatchNormalization

EPOCH_IMAGES = 18_000
NORMALIZATIONS = {"keras": keras.layers.BatchNormalization, "fused": FusedBatchNormalization}
SETTINGS = (  # architecture, precision, normalization, training crop (None: the whole 32x32 image)
    ("vgg16", "float32", "keras", None),
    ("vgg16", "mixed_bfloat16", "keras", None),
    ("vgg16", "float32", "fused", None),
    ("vgg16", "mixed_bfloat16", "fused", None),
    ("nopool_gap", "float32", "keras", None),
    ("nopool_gap", "mixed_bfloat16", "keras", None),
    ("nopool_gap", "mixed_bfloat16", "fused", None),
    ("nopool_gap", "mixed_bfloat16", "fused", 24),
)


def fit_rate(model: keras.Model, size: int, batch: int, steps: int, rounds: int) -> float:
    """Training images per second of ``model`` on random size x size images: the best of ``rounds`` epochs of
    ``steps`` batches, after one warm-up batch (tracing)."""
    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch * steps, size, size, 3)).astype("float32")
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, batch * steps)]
    model.fit(x[:batch], y[:batch], batch_size=batch, verbose=0)
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        model.fit(x, y, batch_size=batch, verbose=0)
        best = max(best, len(x) / (time.perf_counter() - started))
    return best


def parse_rate_options(description: str, batch: int, steps: int, rounds: int) -> argparse.Namespace:
    """The command line's --batch, --steps and --rounds (``fit_rate``'s), with these defaults, under ``description``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser.parse_args()


def images_per_second(
    architecture: str, precision: str, normalization: str, crop: int | None, steps: int, rounds: int, batch: int
) -> float:
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = ARCHITECTURES[architecture](
            num_classes=4, input_size=None if crop else 32, normalization=NORMALIZATIONS[normalization]
        )
        return fit_rate(model, crop or 32, batch, steps, rounds)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main() -> None:
    args = parse_rate_options(__doc__, batch=128, steps=8, rounds=3)
    print(f"device: {describe_device()}; batch {args.batch}, best of {args.rounds} rounds of {args.steps} steps")
    header = ("architecture", "precision", "BN", "input", "img/s", "s/epoch", "speed-up")
    print("{:12s} {:15s} {:6s} {:6s} {:>7s} {:>8s} {:>9s}".format(*header))
    baseline = {}
    for architecture, precision, normalization, crop in SETTINGS:
        rate = images_per_second(architecture, precision, normalization, crop, args.steps, args.rounds, args.batch)
        baseline.setdefault(architecture, rate)
        size = f"{crop or 32}px"
        print(
            f"{architecture:12s} {precision:15s} {normalization:6s} {size:6s} {rate:7.0f} {EPOCH_IMAGES / rate:8.0f}"
            f" {rate / baseline[architecture]:8.2f}x"
        )


if __name__ == "__main__":
    main()
