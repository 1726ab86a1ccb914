"""Training throughput of the photo pair on the GPU machine, in one run: the ``cam.models`` builders under Keras 3 on
its torch backend (``cam.train.gpu_training fit --engine keras``) against the PyTorch twin derived from them
(``cam.train.torch_twin``, ``--engine twin``): images per second on random data, bfloat16, one training step = forward,
loss, backward, optimizer step.

    KERAS_BACKEND=torch python -m benchmarks.bench_gpu_training [--batch 64] [--steps 10] [--sides 128 224]

Without a GPU it runs on the CPU (bfloat16 autocast there too), which prices the GPU route on a machine without one:
on 2 AMD EPYC cores (2026-12-06, ``--batch 8 --steps 3``) the twin trained 13 and 5 images/s (VGG16, 128 and 224 px)
and 8 and 2 images/s (NoPool-GAP), twin / Keras 1.29-3.55.

Measured on an H200 (2026-12-04) against the hand-written twins that the derived one replaced (the same PyTorch
layers): twin / Keras 2.27 (VGG16, 128 px), 1.66 (VGG16, 224 px), 3.40 and 3.21 (NoPool-GAP, 128 and 224 px; the
hand-written twin was the 12-layer design, the Keras network the 14-layer one, about 20% more work). Above the
1.5 that the project allows, hence the derived twin.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import torch  # noqa: E402

from cam.train.gpu_training import build  # noqa: E402
from cam.train.torch_twin import TorchTwin  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def synchronize() -> None:
    """Wait for queued GPU work, so that a timing covers it (CPU work is never queued)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def rate(step, images: torch.Tensor, steps: int) -> float:
    """Images per second of ``step(images)`` after two warm-up steps."""
    for _ in range(2):
        step(images)
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step(images)
    synchronize()
    return steps * len(images) / (time.perf_counter() - started)


def keras_step(name: str):
    model = build(name)
    logits_model = keras.Model(model.inputs, model.get_layer("logits").output)
    optimizer = torch.optim.AdamW([v.value for v in model.trainable_weights], lr=1e-5)

    def step(images: torch.Tensor) -> None:
        loss = logits_model(images, training=True).float().logsumexp(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def twin_step(name: str):
    twin = TorchTwin(build(name)).to(DEVICE)  # float32 weights (a mixed policy keeps variables float32); autocast
    optimizer = torch.optim.AdamW([p for p in twin.parameters() if p.requires_grad], lr=1e-5)

    def step(images: torch.Tensor) -> None:
        with torch.autocast(DEVICE, torch.bfloat16):
            loss = twin(images)
        loss = loss.float().logsumexp(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sides", type=int, nargs="+", default=[128, 224])
    args = parser.parse_args()
    keras.config.set_dtype_policy("mixed_bfloat16")
    device = torch.cuda.get_device_name(0) if DEVICE == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{device}, torch {torch.__version__}, keras {keras.__version__} "
          f"({keras.backend.backend()}), batch {args.batch}")
    for name in ("vgg16_photos", "nopool_gap_photos"):
        for side in args.sides:
            images = torch.rand(args.batch, side, side, 3, device=DEVICE) * 255
            keras_rate = rate(keras_step(name), images, args.steps)
            twin_rate = rate(twin_step(name), images, args.steps)
            print(f"{name} {side}px: Keras on torch {keras_rate:,.0f} img/s, derived twin {twin_rate:,.0f} img/s, "
                  f"twin / Keras {twin_rate / keras_rate:.2f}", flush=True)


if __name__ == "__main__":
    main()
