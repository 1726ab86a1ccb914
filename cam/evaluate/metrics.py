"""How good is a saliency map: faithfulness (deletion/insertion, average drop/increase), localization (pointing
game, energy in box, IoU of the thresholded region), sanity (cascading randomization) and effective resolution.

Maps are numpy arrays (B, h, w), or (B, H, W, C) for guided maps, which ``saliency`` reduces to one value per
pixel. Every metric that compares a map with an image upsamples it bilinearly (``cam.core.resample.upsample``, the
operator the panels and Guided Grad-CAM use too) to the image's size first.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import keras
import numpy as np
from scipy import ndimage, stats

from cam.core.boxes import Box, box_mask, iou
from cam.core.catalog import BLUR_SIGMA, MIN_IOU, POINTING_TOLERANCE, REGION_THRESHOLD, RESOLUTION_TOLERANCE, STEPS
from cam.core.predict import predict_probabilities
from cam.core.resample import bilinear_matrix, upsample
from cam.explain.render import normalize


# ---------------------------------------------------------------------------------------------------------- maps
def saliency(maps: np.ndarray) -> np.ndarray:
    """(B, h, w) maps as they are; (B, H, W, C) guided maps as sum_c |g_c| per pixel (sign carries no importance)."""
    maps = np.asarray(maps, dtype=np.float32)
    return np.abs(maps).sum(axis=-1) if maps.ndim == 4 else maps


def at_size(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``saliency(maps)`` upsampled bilinearly to (B, *size), as float32 numpy."""
    maps = saliency(maps)
    return upsample(maps, size)


# -------------------------------------------------------------------------------------------------- faithfulness
def pixel_ranks(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of every pixel, (B, H*W): 0 = the map's highest value. Ties are broken at random, so a flat map
    orders pixels like a random map instead of top-left first."""
    flat = maps.reshape(len(maps), -1)
    order = np.lexsort((rng.random(flat.shape), -flat), axis=-1)
    return np.argsort(order, axis=-1)


def perturbation_curves(
    model: keras.Model, images: np.ndarray, maps: np.ndarray, classes: np.ndarray, steps: int = STEPS,
    blur_sigma: float = BLUR_SIGMA, rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves (Petsiuk et al. 2018), each (B, steps + 1): p(class | image) after the
    k/steps most salient pixels (of ``maps`` (B, H, W) at the input size) are deleted or inserted, k = 0..steps.

    Deletion sets them to 0 (black). Insertion starts from the image blurred with a Gaussian of ``blur_sigma``
    pixels (RISE's choice: it removes shapes but keeps colours, so the start is not an out-of-distribution black
    image) and puts the original pixels back. All perturbed images of a batch go through the model together.
    """
    rng = rng or np.random.default_rng(0)
    images = np.asarray(images, dtype=np.float32)
    count, height, width = maps.shape
    counts = np.round(np.linspace(0, height * width, steps + 1)).astype(int)
    changed = pixel_ranks(maps, rng)[:, None, :] < counts[None, :, None]  # (B, steps + 1, H*W)
    changed = changed.reshape(count, steps + 1, height, width, 1)
    blurred = ndimage.gaussian_filter(images, sigma=(0, blur_sigma, blur_sigma, 0), mode="reflect")
    deleted = np.where(changed, np.float32(0.0), images[:, None])
    inserted = np.where(changed, images[:, None], blurred[:, None])
    batch = np.concatenate([deleted, inserted]).reshape(-1, height, width, images.shape[-1])
    probabilities = predict_probabilities(model, batch).reshape(2, count, steps + 1, -1)
    chosen = np.take_along_axis(probabilities, np.asarray(classes)[None, :, None, None], axis=-1)[..., 0]
    return chosen[0], chosen[1]


def curve_area(curves: np.ndarray) -> np.ndarray:
    """Area under each curve (B, steps + 1) by the trapezoid rule, x evenly spaced on [0, 1]."""
    return np.trapezoid(curves, dx=1.0 / (curves.shape[-1] - 1), axis=-1)


def explanation_images(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """E = image * normalized map (Chattopadhyay et al. 2018): maps (B, H, W) at the input size, min-max scaled
    to [0, 1] each, multiply every channel."""
    weights = np.stack([normalize(map_) for map_ in maps])
    return np.asarray(images, dtype=np.float32) * weights[..., None]


def drop_and_increase(full: np.ndarray, explained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image, from Y = p(c | image) and O = p(c | E): drop = 100 * max(0, Y - O) / Y and increase = O > Y.
    Their means over images are the Average Drop % and the Increase in Confidence."""
    full, explained = np.asarray(full, dtype=np.float64), np.asarray(explained, dtype=np.float64)
    return 100.0 * np.maximum(0.0, full - explained) / full, explained > full


# -------------------------------------------------------------------------------------------------- localization
def pointing_hit(map_: np.ndarray, boxes: list[Box], tolerance: float = POINTING_TOLERANCE) -> bool:
    """Pointing game (Zhang et al. 2016): hit when the centre of the map's maximum pixel (the first one in
    row-major order) is within ``tolerance`` pixels (Euclidean) of one of ``boxes``. A constant map is a miss."""
    if map_.max() <= map_.min():
        return False
    row, col = np.unravel_index(np.argmax(map_), map_.shape)
    x, y = col + 0.5, row + 0.5
    return any(
        np.hypot(max(xmin - x, 0.0, x - xmax), max(ymin - y, 0.0, y - ymax)) <= tolerance
        for xmin, ymin, xmax, ymax in boxes
    )


def energy_in_boxes(map_: np.ndarray, boxes: list[Box]) -> float:
    """Share of the map's nonnegative energy inside the boxes: sum_box max(m, 0) / sum max(m, 0); NaN if the map
    has no positive value."""
    positive = np.maximum(map_, 0.0)
    total = float(positive.sum())
    return float(positive[box_mask(boxes, map_.shape)].sum()) / total if total > 0 else float("nan")


def largest_region_box(map_: np.ndarray, threshold: float = REGION_THRESHOLD) -> Box | None:
    """Bounding box of the largest 4-connected region where map >= threshold * max(map) (Grad-CAM paper's
    weakly supervised localization); None when the map has no positive maximum."""
    top = float(map_.max())
    if top <= 0:
        return None
    labelled, _ = ndimage.label(map_ >= threshold * top)
    largest = np.argmax(np.bincount(labelled.ravel())[1:]) + 1
    rows, cols = np.nonzero(labelled == largest)
    return float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)


def best_iou(map_: np.ndarray, boxes: list[Box], threshold: float = REGION_THRESHOLD) -> float:
    """The largest IoU between ``largest_region_box`` and any of ``boxes`` (0 when there is no region)."""
    region = largest_region_box(map_, threshold)
    return max((iou(region, box) for box in boxes), default=0.0) if region else 0.0


def localization_scores(map_: np.ndarray, boxes: list[Box], tolerance: float = POINTING_TOLERANCE) -> dict[str, float]:
    """Pointing hit, energy in box, best IoU and IoU >= MIN_IOU hit of one map (H, W) at the image's resolution
    against the boxes of the explained class."""
    overlap = best_iou(map_, boxes)
    return {
        "pointing": float(pointing_hit(map_, boxes, tolerance)),
        "energy": energy_in_boxes(map_, boxes),
        "iou": overlap,
        "iou_hit": float(overlap >= MIN_IOU),
    }


def mask_scores(map_: np.ndarray, mask: np.ndarray, tolerance: float = POINTING_TOLERANCE) -> dict[str, float]:
    """Localisation of one map (H, W) against a figure/ground mask (H, W, True = object), at the same size:
    pointing hit (the map's maximum pixel within ``tolerance`` pixels of the object; a constant map misses), energy
    in mask (sum over the object of max(m, 0) / sum max(m, 0); NaN without positive values) and IoU of the region
    map >= REGION_THRESHOLD * max(map) with the object, pixel by pixel (0 without a positive maximum)."""
    mask = np.asarray(mask, bool)
    positive = np.maximum(map_, 0.0)
    total, top = float(positive.sum()), float(map_.max())
    hit = False
    if top > map_.min():
        row, col = np.unravel_index(np.argmax(map_), map_.shape)
        hit = bool(ndimage.distance_transform_edt(~mask)[row, col] <= tolerance) if mask.any() else False
    region = map_ >= REGION_THRESHOLD * top if top > 0 else np.zeros_like(mask)
    union = float((region | mask).sum())
    return {
        "pointing": float(hit),
        "energy": float(positive[mask].sum()) / total if total > 0 else float("nan"),
        "mask_iou": float((region & mask).sum()) / union if union else 0.0,
    }


def min_max_ratio(maps: np.ndarray) -> np.ndarray:
    """Per map (native size, ``saliency`` for guided maps): min / max; near 1 the map is flat and its shown colours
    are min-max noise; NaN where the maximum is not positive."""
    maps = saliency(maps).reshape(len(maps), -1)
    top = maps.max(axis=1)
    return np.where(top > 0, maps.min(axis=1) / np.where(top > 0, top, 1.0), np.nan)


# -------------------------------------------------------------------------------------------------------- sanity
def randomization_stages(model: keras.Model) -> list[str]:
    """The layers cascading randomization re-initialises one after the other, output first: every trainable layer
    with weights except BatchNormalization, which is re-initialised with the layer it follows."""
    return [
        layer.name for layer in reversed(model.layers)
        if layer.trainable_weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]


def _reinitialise(layer: keras.layers.Layer) -> None:
    fresh = layer.__class__.from_config(layer.get_config())
    fresh.build(layer.input.shape)
    layer.set_weights(fresh.get_weights())


def cascading_randomization(model: keras.Model, seed: int = 0) -> Iterator[tuple[str, keras.Model]]:
    """Cascading randomization (Adebayo et al. 2018): yields (stage, clone) where the clone has every trainable
    layer from ``stage`` up to the output re-initialised with its own initialisers; the stages go down from the
    output (``randomization_stages``) and the randomization accumulates. ``model`` is never changed; the SAME
    clone is yielded each time, changed in place. Each stage reseeds Keras's global random generator from (``seed``,
    stage number), so a stage's weights do not depend on what drew random numbers between stages (building a guided
    clone does), and replaying the stages elsewhere gives the same clone."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    done: set[str] = set()
    for number, stage in enumerate(randomization_stages(model)):
        keras.utils.set_random_seed(seed * 10_000 + number)
        start = [layer.name for layer in clone.layers].index(stage)
        for layer in clone.layers[start:]:
            if layer.weights and layer.trainable and layer.name not in done:
                _reinitialise(layer)
                done.add(layer.name)
        yield stage, clone


def rank_correlation(trained: np.ndarray, randomized: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per pair of maps (B, ...): Pearson correlation of the average ranks. NaN where
    the trained map is constant (nothing to compare); 0 where only the randomized one is (it ranks nothing)."""
    a = stats.rankdata(trained.reshape(len(trained), -1), axis=1)
    b = stats.rankdata(randomized.reshape(len(randomized), -1), axis=1)
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    norms = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    correlation = np.divide((a * b).sum(axis=1), norms, out=np.zeros(len(a)), where=norms > 0)
    return np.where(np.ptp(a, axis=1) == 0, np.nan, correlation)


# ---------------------------------------------------------------------------------------------------- resolution
@functools.cache
def _projection(side: int, block: int, kind: str) -> np.ndarray:
    """(S, S) least-squares projection of one axis onto S samples of a (S/block)-cell grid shown as blocks or
    bilinearly. Grid maps are separable (Kronecker products of one axis's shapes), so the projection of a whole
    (S, S) map is P M P^T: S*S numbers instead of the (S*S, S*S) matrix, 1 GB per block size at 128 px."""
    grid = side // block
    if kind == "nearest":
        design = np.eye(grid).repeat(block, axis=0)
    else:
        design = bilinear_matrix(grid, side).astype(np.float64)
    projection = (design @ np.linalg.pinv(design)).astype(np.float32)
    projection.flags.writeable = False
    return projection


def lost_structure(maps: np.ndarray, block: int) -> np.ndarray:
    """Share of each map's variance (B, H, W) that its best (H/block) x (W/block)-grid approximation misses:
    min over shown-as-blocks and shown-bilinearly of ||m - P_H m P_W^T||^2 / ||m - mean(m)||^2 (0 for a constant
    map)."""
    values = np.asarray(maps, dtype=np.float32)
    centred = values - values.mean(axis=(1, 2), keepdims=True)
    variance = (centred * centred).sum(axis=(1, 2))
    lost = []
    for kind in ("nearest", "bilinear"):
        rows, columns = _projection(maps.shape[1], block, kind), _projection(maps.shape[2], block, kind)
        lost.append(((centred - rows @ centred @ columns.T) ** 2).sum(axis=(1, 2)))
    return np.divide(np.minimum(*lost), variance, out=np.zeros(len(maps)), where=variance > 0)


def effective_grid(maps: np.ndarray, tolerance: float = RESOLUTION_TOLERANCE) -> np.ndarray:
    """Effective resolution of maps (B, H, W) at the input size, as the grid's number of cells along the short side
    S / b: b is the largest block size (a divisor of H and W, tried in increasing order, stopping at the first
    failure) whose grid keeps all but ``tolerance`` of the map's variance (``lost_structure``). A bilinearly
    upsampled 2x2 map gives 2, a constant map 1, a 1-pixel checkerboard S."""
    side = min(maps.shape[1:3])
    grid = np.full(len(maps), side)
    passing = np.ones(len(maps), dtype=bool)
    for block in (b for b in range(2, side + 1) if maps.shape[1] % b == 0 and maps.shape[2] % b == 0):
        passing &= lost_structure(maps, block) <= tolerance
        grid = np.where(passing, side // block, grid)
    return grid
