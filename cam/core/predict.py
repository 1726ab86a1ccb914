"""Softmax outputs of a model for many images, in batches: shared by training, metrics and evaluation."""

from __future__ import annotations

import keras
import numpy as np

# Input pixels per forward pass. The activations grow with the pixels, not the images: a fixed 256 images took
# 4 GB tensors at 128 px and would take 12 GB at 224 px.
PIXELS_PER_BATCH = 2**20
MAX_BATCH = 256


def images_per_batch(height: int, width: int) -> int:
    """Images per forward pass at ``height`` x ``width``: about PIXELS_PER_BATCH pixels, 1 to MAX_BATCH images
    (256 at 32 px, 64 at 128 px, 20 at 224 px)."""
    return max(1, min(MAX_BATCH, PIXELS_PER_BATCH // (height * width)))


def by_shape(images: list[np.ndarray]) -> dict[tuple[int, int], list[int]]:
    """The indices of ``images`` grouped by their (height, width), in order: what one batch can hold."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape[:2]), []).append(index)
    return groups


def predict_probabilities(
    model: keras.Model, images: np.ndarray | list[np.ndarray], batch_size: int | None = None
) -> np.ndarray:
    """Softmax outputs for uint8 or float RGB 0..255 images (N, H, W, 3), or a list of images of several shapes
    (batched by shape), in batches of ``batch_size`` images (default ``images_per_batch(H, W)``). Any model with
    one (N, K) output works the same (``cam.train.head_training`` reads pooled features this way)."""
    if isinstance(images, list):
        outputs = np.zeros((len(images), model.output_shape[-1]), np.float32)
        for indices in by_shape(images).values():
            outputs[indices] = predict_probabilities(model, np.stack([images[i] for i in indices]), batch_size)
        return outputs
    batch_size = batch_size or images_per_batch(*images.shape[1:3])
    return np.concatenate(
        [
            model.predict_on_batch(images[i : i + batch_size].astype("float32"))
            for i in range(0, len(images), batch_size)
        ]
    )
