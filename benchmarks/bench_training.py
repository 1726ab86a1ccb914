"""Training throughput of both architectures at 32x32, batch 64, in float32 and mixed_bfloat16.

Reports images per second over a few steps on random data and the time of one epoch of 18,000 images
(the training split of cifar4), so the two precisions are compared in one run on one machine.

    python -m benchmarks.bench_training [--steps 12]
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from cam.device import describe_device
from cam.training import BUILDERS

EPOCH_IMAGES = 18_000


def images_per_second(architecture: str, precision: str, steps: int, batch: int = 64) -> float:
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = BUILDERS[architecture](num_classes=4, input_size=32)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy")
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (batch * steps, 32, 32, 3)).astype("float32")
        y = np.eye(4, dtype="float32")[rng.integers(0, 4, batch * steps)]
        model.fit(x[: batch * 2], y[: batch * 2], batch_size=batch, verbose=0)  # warm-up: tracing
        started = time.perf_counter()
        model.fit(x, y, batch_size=batch, verbose=0)
        return len(x) / (time.perf_counter() - started)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    print(f"device: {describe_device()}; batch 64 at 32x32, {args.steps} steps after warm-up")
    print(f"{'architecture':12s} {'precision':15s} {'img/s':>8s} {'s/epoch':>8s}")
    for architecture in BUILDERS:
        for precision in ("float32", "mixed_bfloat16"):
            rate = images_per_second(architecture, precision, args.steps)
            print(f"{architecture:12s} {precision:15s} {rate:8.0f} {EPOCH_IMAGES / rate:8.0f}")


if __name__ == "__main__":
    main()
