"""Speed of the methods on VGG16 (Keras topology, random weights) at 224x224, one image, on this machine.

Reports medians over repeated runs and the ratio all-in-one / forward. The physical floor for Grad-CAM +
Guided Backprop is about one forward and one full backward pass, i.e. about 3 forward passes.

    python -m benchmarks.bench_methods [--repeats 15] [--size 224]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from cam.device import describe_device
from cam.methods import Explainer, grad_cam, guided_backprop
from cam.models import nopool_gap


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: tracing, oneDNN kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, input_shape=(args.size, args.size, 3))
    gap = nopool_gap(input_size=args.size) if args.size <= 64 else None
    x = np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 3)).astype("float32")
    forward = tf.function(lambda images: model(images, training=False))
    explainer = Explainer(model, "block5_conv3", gap)
    started = time.perf_counter()
    explainer(x)
    first_call = time.perf_counter() - started

    rows = {
        "forward pass (compiled)": median_seconds(lambda: forward(x).numpy(), args.repeats),
        "grad_cam (eager function)": median_seconds(lambda: grad_cam(model, x, 0), args.repeats),
        "guided_backprop (eager, clones the model)": median_seconds(lambda: guided_backprop(model, x, 0), args.repeats),
        "all-in-one Explainer (Grad-CAM + GB + GGC)": median_seconds(lambda: explainer(x), args.repeats),
    }
    print(f"device: {describe_device()}; input {args.size}x{args.size}, batch 1, median of {args.repeats} runs")
    print(f"Explainer first call (tracing + compile): {first_call * 1000:.0f} ms")
    for name, seconds in rows.items():
        print(f"{name:45s} {seconds * 1000:8.1f} ms")
    ratio = rows["all-in-one Explainer (Grad-CAM + GB + GGC)"] / rows["forward pass (compiled)"]
    print(f"ratio all-in-one / forward: {ratio:.2f} (floor about 3, target <= 4)")


if __name__ == "__main__":
    main()
