"""Training throughput of the photo models at 128 px, and what each cost-cutting choice buys, measured in one run.

Rows: VGG16 (the HED design: no BatchNorm in the convolutions, a normalised head) trained whole and with blocks 1-4
frozen (what `--freeze-until block4_pool` does); NoPool-GAP in its dilated photo design on whole 128 px images and on
64 px crops, and the same layers undilated (to price the dilations). Reports images per second on random data (best
of a few rounds), the time of one epoch of photos4's 6,354 training images, and each row's speed relative to the
first row.

    python -m benchmarks.bench_photo_training [--batch 16] [--steps 2] [--rounds 2]

The shipped photo checkpoints were trained elsewhere, on one H200 with ``cam.train.gpu_training`` (both models at once,
at short sides 128-224; figures from their cards' per-epoch history): VGG16 8.2 s per epoch, 39 epochs in 320 s;
NoPool-GAP 32 s per epoch beside VGG16 and 20 s alone, 23 epochs in 588 s. On this CPU one epoch at 128 px alone
takes 16 minutes or more (the rows below).
"""

from __future__ import annotations

import keras

from benchmarks.bench_training import fit_rate, parse_rate_options
from cam.core.device import describe_device
from cam.models.architectures import NOPOOL_PHOTO_FILTERS, nopool_gap, nopool_gap_dilated, vgg16
from cam.train.training import freeze_until, resolve_precision

EPOCH_IMAGES = 6_354


def frozen_vgg16(input_size: int | None) -> keras.Model:
    model = vgg16(input_size=input_size, batch_norm=False, head_norm=True)
    freeze_until(model, "block4_pool")
    return model


SETTINGS = {  # label: (builder of a model for an input size or None, training image side)
    "vgg16, whole model": (lambda size: vgg16(input_size=size, batch_norm=False, head_norm=True), 128),
    "vgg16, blocks 1-4 frozen": (frozen_vgg16, 128),
    "nopool_gap_dilated, 128 px": (lambda size: nopool_gap_dilated(input_size=size), 128),
    "nopool_gap_dilated, 64 px crops": (lambda size: nopool_gap_dilated(input_size=None), 64),
    "same layers undilated, 128 px": (lambda size: nopool_gap(input_size=size, filters=NOPOOL_PHOTO_FILTERS), 128),
}


def main() -> None:
    args = parse_rate_options(__doc__, batch=16, steps=2, rounds=2)
    precision = resolve_precision("auto")
    keras.mixed_precision.set_global_policy(precision)
    print(f"device: {describe_device()}; precision {precision}; batch {args.batch}, best of {args.rounds} rounds")
    print(f"{'setting':34s} {'img/s':>7s} {'s/epoch':>8s} {'relative':>9s}")
    first = None
    for label, (build, size) in SETTINGS.items():
        rate = fit_rate(build(size), size, args.batch, args.steps, args.rounds)
        first = first or rate
        print(f"{label:34s} {rate:7.1f} {EPOCH_IMAGES / rate:8.0f} {rate / first:8.2f}x")


if __name__ == "__main__":
    main()
