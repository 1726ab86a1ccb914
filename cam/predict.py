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


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Softmax outputs for uint8 or float RGB 0..255 images (N, H, W, 3), in batches of ``batch_size`` images
    (default ``images_per_batch(H, W)``)."""
    batch_size = batch_size or images_per_batch(*images.shape[1:3])
    return np.concatenate(
        [
            model.predict_on_batch(images[i : i + batch_size].astype("float32"))
            for i in range(0, len(images), batch_size)
        ]
    )
