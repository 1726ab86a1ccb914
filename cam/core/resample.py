"""The one bilinear resampler of the project, as two small interpolation matrices, in numpy (no TensorFlow).

Panels (``cam.explain.render``), metrics (``cam.evaluate.metrics``) and the maps themselves (``cam.explain.methods``,
inside compiled TensorFlow graphs) all resample with ``bilinear_matrix``, so a map is shown exactly as it is scored.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def bilinear_matrix(source: int, target: int) -> np.ndarray:
    """R (target, source) with R @ v = v resampled bilinearly to ``target`` samples: half-pixel centres,
    s = (t + 0.5) * source / target - 0.5 clamped to [0, source - 1], v(s) interpolated between its two
    neighbours (TensorFlow's ``resize(method="bilinear")`` without antialiasing). Read-only float32."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0.0, source - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, source - 1)
    weight = (position - low).astype(np.float32)
    matrix = np.zeros((target, source), np.float32)
    np.add.at(matrix, (np.arange(target), low), 1.0 - weight)
    np.add.at(matrix, (np.arange(target), high), weight)
    matrix.flags.writeable = False
    return matrix


def upsample(maps: np.ndarray, size: tuple[int, int], axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    """Resample float maps bilinearly to (height, width) = ``size`` along ``axes`` (rows, columns): (B, h, w) and
    (h, w) with the default, (h, w, C) with ``axes=(0, 1)``; float32. ``M' = R_rows M R_cols^T``."""
    values = np.asarray(maps, dtype=np.float32)
    for axis, target in zip(axes, size, strict=True):
        axis %= values.ndim
        if values.shape[axis] != target:
            moved = np.tensordot(bilinear_matrix(values.shape[axis], int(target)), values, axes=([1], [axis]))
            values = np.moveaxis(moved, 0, axis)
    return values
