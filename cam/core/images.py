"""Safe image decoding (files or uploaded bytes), at a bounded size, and resizing to a model's input."""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse images above this many pixels (a decompression bomb is a tiny file that decodes to gigapixels).
MAX_PIXELS = 50_000_000
MIN_SIDE = 8
# The dashboard reads photos at most this many pixels on their long side: the page shows at most that much, the
# networks see at most a short side of 320, and a 7000x7000 photo read whole took 4 to 6 GB on the way to its panels.
# A JPEG is decoded straight at a reduced scale (Pillow's draft mode), any other format reduced once decoded.
DECODE_MAX_SIDE = 2048
# MPO is a JPEG holding several frames (some cameras write a second view): its first frame is the photo.
SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")  # the files of those formats
READABLE = "it reads JPEG, PNG, WebP, BMP, GIF (the first frame) and TIFF pictures"
# Format names read as words rather than letter by letter; the others take "an" when their first letter's name
# starts with a vowel sound (an MPO, an SVG, a PPM).
_SAID_AS_WORDS = {"AVIF": "an", "ICO": "an", "HEIF": "a", "HEIC": "a", "SPIDER": "a", "FITS": "a", "QOI": "a"}


class ImageError(ValueError):
    """An input that cannot be used as an image; the message says why, in words for a user."""


@dataclass(frozen=True)
class Decoded:
    """A decoded picture: its pixels, perhaps reduced, and the size it has as stored (EXIF orientation applied)."""

    pixels: np.ndarray  # RGB uint8 (H, W, 3)
    original: tuple[int, int]  # (height, width)

    @property
    def reduced(self) -> bool:
        return self.pixels.shape[:2] != self.original


def article(word: str) -> str:
    """'a' or 'an' before ``word`` as it is said: an AVIF, an ICO, an MPO, a PPM, a HEIF, an image."""
    if word.upper() in _SAID_AS_WORDS:
        return _SAID_AS_WORDS[word.upper()]
    if word.isupper():  # read letter by letter
        return "an" if word[0] in "AEFHILMNORSX" else "a"
    return "an" if word[:1].lower() in "aeiou" else "a"


def load_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS, name: str | None = None,
               max_side: int | None = None) -> np.ndarray:
    """Decode a file path or raw bytes into an RGB uint8 array (H, W, 3), EXIF orientation applied, at most
    ``max_side`` pixels on its long side (None: full size); see ``decode_image``."""
    return decode_image(source, max_pixels, name, max_side).pixels


def decode_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS, name: str | None = None,
                 max_side: int | None = DECODE_MAX_SIDE) -> Decoded:
    """Decode a file path or raw bytes into RGB uint8 pixels, EXIF orientation applied, reduced (aspect kept) to at
    most ``max_side`` pixels on the long side (None: full size); a GIF or MPO gives its first frame.

    Any mode (grayscale, palette, RGBA, 16-bit, CMYK...) becomes RGB; transparency is composited on white.
    Raises ImageError, in plain words, for missing, empty, corrupt, non-image, too small or too large inputs; the
    message names the input ``name`` (default: the path, or "uploaded file"), never the decoder's own words.
    """
    name = name or ("uploaded file" if isinstance(source, bytes) else str(source))
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as error:
            raise ImageError(f"Cannot read {name}: {error.strerror or error}") from error
    if not data:
        raise ImageError(f"{name} is empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; we check the size ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{name} is {width}x{height} = {width * height / 1e6:.0f} megapixels; "
                    f"the limit is {max_pixels / 1e6:.0f} megapixels"
                )
            if image.format not in SUPPORTED_FORMATS:
                raise ImageError(f"{name} is {article(image.format)} {image.format} image; {READABLE}")
            if max_side and image.format in ("JPEG", "MPO") and max(width, height) > max_side:
                # Decoded at 1/2, 1/4 or 1/8 scale, the smallest still at least the reduced size.
                image.draft(image.mode, reduced_size((width, height), max_side))
            stored = image
            image.load()
            image = ImageOps.exif_transpose(image)
            turned = image.size != stored.size  # EXIF said: turn a quarter (drafted sizes are turned alike)
    except UnidentifiedImageError as error:
        raise ImageError(f"{name} is not a picture this tool can read; {READABLE}") from error
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name} is too large to open safely") from error
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageError):
            raise
        raise ImageError(f"{name} is damaged or cut short (corrupt or truncated), so it cannot be shown") from error
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{name} is {width}x{height}; both sides must be at least {MIN_SIDE} pixels")
    pixels = to_rgb(image)
    if max_side and max(pixels.shape[:2]) > max_side:
        size = reduced_size((pixels.shape[1], pixels.shape[0]), max_side)
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0))
    return Decoded(pixels, (width, height) if turned else (height, width))


def reduced_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) of ``size`` scaled so that its long side is ``max_side``, aspect kept, each side at least 1."""
    scale = max_side / max(size)
    return tuple(max(1, math.floor(side * scale + 0.5)) for side in size)


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode to an RGB uint8 array; 16-bit and float images are scaled to 0..255, alpha goes on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit data spans 0..65535; float data is either 0..1 or 0..255.
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        if image.mode == "F" and values.max() <= 1.0:
            top = 1.0
        gray = np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    # "transparency" in info is a keyed colour (PNG tRNS, GIF) in P, L, 1 or RGB images: it must go white too.
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to ``size`` (square side, or (height, width)) with bicubic filtering."""
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))


# How a photo becomes a network's input (``input_shape``): its own aspect ratio, short side S. The long side is
# rounded to a multiple of SHAPE_MULTIPLE: VGG16 pools five times, so such sides give exact 1/16 (Grad-CAM) and 1/32
# grids and no row or column is dropped by a pooling. Rounding changes the aspect by at most half a multiple (16 px
# on the long side); the maps are resampled back onto the photo, so they line up with it exactly.
SHAPE_MULTIPLE = 32
# Longer photos are cropped to their middle MAX_ASPECT:1 part (``view_box``): photos4 holds photos up to 2:1 and
# measured the same with the whole photo and with this crop (README, "Own aspect"); a 4000x40 strip would otherwise
# cost 100 times a square's compute for a map no one can read.
MAX_ASPECT = 2.0


# The detail levels (the page's "Detail", ``--size`` on the command line): the short side as a multiple of the size
# a network was trained at; the photo pair's 128 px gives 128, 192, 256 and 320.
DETAIL_LEVELS = {"standard": 1.0, "fine": 1.5, "finer": 2.0, "finest": 2.5}


def detail_sizes(trained_size: int) -> dict[str, int]:
    """The detail levels for networks trained at ``trained_size``: name -> short side, those that are multiples of
    SHAPE_MULTIPLE (the CIFAR pair, 32 px: standard 32 and finer 64)."""
    sizes = {name: round(trained_size * factor) for name, factor in DETAIL_LEVELS.items()}
    return {name: size for name, size in sizes.items() if size % SHAPE_MULTIPLE == 0}


def view_box(height: int, width: int, max_aspect: float = MAX_ASPECT) -> tuple[int, int, int, int]:
    """The part of a ``height`` x ``width`` photo the networks see, (top, left, height, width): the whole photo when
    its long side is at most ``max_aspect`` times its short side, else the middle part of that aspect ratio
    (``max_aspect=1``: the middle square, for networks that only take squares)."""
    if max(height, width) <= max_aspect * min(height, width):
        return 0, 0, height, width
    if width > height:
        kept = max(1, round(max_aspect * height))
        return 0, (width - kept) // 2, height, kept
    kept = max(1, round(max_aspect * width))
    return (height - kept) // 2, 0, kept, width


def input_shape(height: int, width: int, short_side: int, multiple: int = SHAPE_MULTIPLE) -> tuple[int, int]:
    """The (height, width) a network gets for a ``height`` x ``width`` view at short side ``short_side``: the short
    side is ``short_side``, the long side keeps the aspect ratio, rounded to the nearest ``multiple`` (at least
    ``short_side``). A 4:3 photo at 128 gives 128x160 (landscape) or 160x128 (portrait)."""
    if short_side % multiple:
        raise ValueError(f"the short side must be a multiple of {multiple}, not {short_side}")
    short, long = sorted((height, width))
    rounded = max(short_side, multiple * round(long * short_side / short / multiple))
    return (short_side, rounded) if width >= height else (rounded, short_side)


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The part (top, left, height, width) of an (H, W, ...) image."""
    top, left, height, width = box
    return image[top : top + height, left : left + width]


def model_input(images: list[np.ndarray] | np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Stack images resized to ``size`` as float32 RGB 0..255, shape (B, h, w, 3): an int is a square (a network
    with a fixed square input), (h, w) a shape from ``input_shape``."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    return np.stack([resize(np.asarray(image, np.uint8), size) for image in images]).astype(np.float32)


def own_aspect(image: np.ndarray, short_side: int) -> np.ndarray:
    """A photo as flexible networks see it (``cam.explain.pipeline.photo_view``): the part ``view_box`` keeps, resized
    to its own aspect ratio with short side ``short_side`` (``input_shape``), uint8."""
    seen = crop(image, view_box(*image.shape[:2]))
    return resize(seen, input_shape(*seen.shape[:2], short_side))
