"""The one training augmentation of the photo networks, in Pillow and numpy (no TensorFlow, no PyTorch), so that
the TensorFlow pipeline (``cam.train.pipelines.photo_dataset``), the GPU-side loop (``cam.train.gpu_training``) and the
CPU feature cache (``cam.train.head_training``) make the same views. Every random choice comes from the ``rng`` passed
in: the same seed gives the same view.

The transforms break the cues by which photo sources differ (style, compression, frames, framing): JPEG
re-compression, a random crop, flip, a small rotation, brightness/contrast/saturation/hue jitter, a random frame.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageEnhance

from cam.core.images import MAX_ASPECT, input_shape, view_box

CROP_AREA = (0.3, 1.0)  # share of the photo's area a crop covers
CROP_ASPECT = (3 / 4, 4 / 3)  # a crop's aspect ratio relative to the output's
JPEG_QUALITY = (30, 95)
BRIGHTNESS = (0.8, 1.2)  # multiplicative, as Pillow's ImageEnhance
CONTRAST = (0.7, 1.3)
SATURATION = (0.6, 1.4)
HUE = 0.04  # +- share of the colour circle
ROTATION = 10.0  # degrees, a third of the time
FRAME = 0.2  # share of views with a painted frame


def random_box(
    width: int, height: int, aspect: float, rng: np.random.Generator, area: tuple[float, float] = CROP_AREA
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random box covering ``area`` of the image, of aspect ratio (width/height)
    ``aspect`` times a jitter in CROP_ASPECT, clipped to the image."""
    covered = width * height * rng.uniform(*area)
    ratio = aspect * math.exp(rng.uniform(math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1])))
    w = min(width, max(1, round(math.sqrt(covered * ratio))))
    h = min(height, max(1, round(math.sqrt(covered / ratio))))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return left, top, left + w, top + h


def output_shape(width: int, height: int, short_side: int, square: bool) -> tuple[int, int]:
    """(height, width) of a view: short_side x short_side for a square network, else the photo's own input shape
    (its view box at short side ``short_side``, as ``cam.explain.pipeline`` feeds it)."""
    if square:
        return short_side, short_side
    _, _, box_height, box_width = view_box(height, width, MAX_ASPECT)
    return input_shape(box_height, box_width, short_side)


def photo_augment(image: Image.Image, short_side: int, rng: np.random.Generator, square: bool = False) -> np.ndarray:
    """One RGB photo -> a uint8 training view (H, W, 3) of ``output_shape`` (own aspect unless ``square``):
    JPEG re-compression (half the time), a random crop of that shape's aspect (CROP_AREA, CROP_ASPECT) resized
    bilinearly, flip (half), rotation (a third), brightness, contrast, saturation and hue jitter, a frame of random
    width and colour (FRAME)."""
    image = image.convert("RGB")
    if rng.random() < 0.5:
        image = recompressed(image, int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
    height, width = output_shape(*image.size, short_side, square)
    image = image.resize((width, height), Image.Resampling.BILINEAR, box=random_box(*image.size, width / height, rng))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 1 / 3:
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        image = image.rotate(rng.uniform(-ROTATION, ROTATION), Image.Resampling.BILINEAR, fillcolor=fill)
    pixels = jittered(image, rng.uniform(*BRIGHTNESS), rng.uniform(*CONTRAST), rng.uniform(*SATURATION),
                      rng.uniform(-HUE, HUE))
    if rng.random() < FRAME:
        paint_frame(pixels, int(rng.integers(2, max(3, min(height, width) // 12 + 1))), rng.integers(0, 256, 3))
    return pixels


def recompressed(image: Image.Image, quality: int) -> Image.Image:
    """``image`` saved as JPEG at ``quality`` and read back: compression artefacts must be no cue for a class."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def jittered(image: Image.Image, brightness: float, contrast: float, saturation: float, hue: float) -> np.ndarray:
    """Pillow's brightness, contrast and colour enhancers with these factors (1: unchanged), then the hue turned by
    ``hue`` of the colour circle; uint8 (H, W, 3)."""
    image = ImageEnhance.Brightness(image).enhance(brightness)
    image = ImageEnhance.Contrast(image).enhance(contrast)
    image = ImageEnhance.Color(image).enhance(saturation)
    if not hue:
        return np.asarray(image).copy()
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(hue * 255)) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")).copy()


def paint_frame(pixels: np.ndarray, side: int, colour: np.ndarray) -> None:
    """Paint a frame ``side`` pixels wide in ``colour`` round ``pixels`` (in place): some sources have frames, and
    a frame must be no cue for a class."""
    pixels[:side], pixels[-side:], pixels[:, :side], pixels[:, -side:] = colour, colour, colour, colour
