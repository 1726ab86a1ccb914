"""Softmax outputs of a model for many images, in batches: shared by training, metrics and evaluation."""

from __future__ import annotations

import keras
import numpy as np


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax outputs for uint8 or float RGB 0..255 images, in batches."""
    return np.concatenate(
        [
            model.predict_on_batch(images[i : i + batch_size].astype("float32"))
            for i in range(0, len(images), batch_size)
        ]
    )
