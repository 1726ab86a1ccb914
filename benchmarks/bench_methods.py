"""Speed of every method of ``cam.explain.registry`` on VGG16 (Keras topology, random weights) at 224x224, one image, on
this machine, as a ratio to one compiled forward pass measured in the same run.

The fused Explainer (Grad-CAM + Guided Backprop + Guided Grad-CAM in one compiled pass) should stay at or under
2.5 forward passes. Score-CAM's cost is stated in forward passes (one per channel of its layer, plus one); it is
timed on fewer repeats. The other methods are eager functions (they build their gradient model on every call).

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

from cam.core.device import describe_device
from cam.explain.methods import Explainer, score_cam_passes
from cam.explain.registry import METHODS

FUSED_LIMIT = 2.5


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
    parser.add_argument("--skip-slow", action="store_true", help="state the slow methods' cost, do not time them")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, input_shape=(args.size, args.size, 3))
    x = np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 3)).astype("float32")
    classes = np.zeros(1, np.int32)
    forward = tf.function(lambda images: model(images, training=False))
    explainer = Explainer(model, None)
    started = time.perf_counter()
    explainer(x)
    first_call = time.perf_counter() - started

    forward_s = median_seconds(lambda: forward(x).numpy(), args.repeats)
    rows = {"fused Explainer (grad_cam + guided_grad_cam)": median_seconds(lambda: explainer(x), args.repeats)}
    for key, method in METHODS.items():
        # The GAP model's CAM needs a GAP head, which Keras's VGG16 lacks.
        if method.role == "gradcam" and not (method.slow and args.skip_slow):
            repeats = 2 if method.slow else args.repeats
            rows[f"{key} (function)"] = median_seconds(lambda m=method: m.compute(model, x, classes, None), repeats)
    print(f"device: {describe_device()}; input {args.size}x{args.size}, batch 1, median of {args.repeats} runs "
          f"(slow methods: 2)")
    print(f"Explainer first call (tracing + compile): {first_call * 1000:.0f} ms")
    print(f"{'forward pass (compiled)':48s} {forward_s * 1000:9.1f} ms  1.00x")
    for name, seconds in rows.items():
        print(f"{name:48s} {seconds * 1000:9.1f} ms  {seconds / forward_s:5.2f}x")
    ratio = rows["fused Explainer (grad_cam + guided_grad_cam)"] / forward_s
    verdict = "ok" if ratio <= FUSED_LIMIT else "OVER"
    print(f"fused pass / forward: {ratio:.2f} (limit {FUSED_LIMIT}: {verdict})")
    print(f"score_cam costs {score_cam_passes(model)} forward passes per image (layer {explainer.layer})")


if __name__ == "__main__":
    main()
