"""Activation maps and guided gradients to pictures, with numpy, Pillow and matplotlib colormaps (no TensorFlow)."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cam.core.images import resize
from cam.core.resample import upsample

# The colormaps offered in the dashboard; colorize() accepts any name matplotlib knows.
# viridis and cividis stay readable for people with colour-blindness (cividis: red-green deficiency too).
# The first is the default: viridis stays readable with the common colour blindnesses (jet does not).
COLORMAPS = ("viridis", "cividis", "jet", "turbo", "inferno", "magma", "plasma", "gray")
# side_by_side magnifies smaller panels to at least this height, so that a 32x32 input is visible and titled.
MIN_PANEL_HEIGHT = 256
TITLE_COLOUR = (0, 0, 0)
BACKGROUND = (255, 255, 255)


def normalize(map_: np.ndarray) -> np.ndarray:
    """Scale a float map linearly to [0, 1] (min -> 0, max -> 1) as float32; a constant map becomes all zeros."""
    values = np.asarray(map_, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def colorize(map_01: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Colour a [0, 1] float map (H, W) through a matplotlib colormap into RGB uint8 (H, W, 3); values are clipped.

    Raises ValueError for a colormap name matplotlib does not know.
    """
    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(f"unknown colormap {colormap!r}; try one of: {', '.join(COLORMAPS)}") from None
    # A 256-entry lookup table: indexing is several times faster than evaluating the colormap per pixel,
    # which matters for maps upsampled to photos of tens of megapixels.
    table = cmap(np.linspace(0.0, 1.0, 256), bytes=True)[:, :3]
    return table[(np.clip(map_01, 0.0, 1.0) * 255.0).round().astype(np.uint8)]


def heatmap(map_: np.ndarray, size: tuple[int, int], colormap: str = "jet") -> np.ndarray:
    """The map alone as a picture: upsampled bilinearly to (height, width) = size, normalized, colorized; RGB uint8."""
    # Normalizing after upsampling keeps the full colour range even when the map is shrunk.
    return colorize(normalize(upsample(map_, size)), colormap)


def colour_bar(colormap: str = "jet", width: int = 256, height: int = 12) -> np.ndarray:
    """The legend of heatmap and overlay: the colormap as a strip, map value 0 (left) to 1 (right); RGB uint8."""
    return colorize(np.linspace(0.0, 1.0, width)[None, :], colormap).repeat(height, axis=0)


def overlay(image: np.ndarray, map_: np.ndarray, opacity: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend a map of any resolution over an RGB uint8 image (H, W, 3): (1 - opacity) * image + opacity * colour.

    The colour is heatmap(map_, (H, W), colormap), so the result keeps the image's full resolution.
    opacity 0 gives the image back, 1 the colour alone; outside [0, 1] raises ValueError.
    """
    image = _require_rgb(image)
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be between 0 and 1, got {opacity}")
    colour = heatmap(map_, image.shape[:2], colormap)
    return np.asarray(Image.blend(Image.fromarray(image), Image.fromarray(colour), opacity))


def guided_image(gradients: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """Show Guided Backprop / Guided Grad-CAM gradients (h, w, 3) as RGB uint8 around 0.5 grey.

    Like the Grad-CAM authors' deprocessing (centre on the mean, scale, add 0.5 grey, clip to [0, 1]), but the
    scale is the 99th percentile of |deviation| mapped to 0.5 rather than ten standard deviations: guided
    gradients are dominated by a few pixels, and the paper's scale left 99% of them within 2% of grey.
    With size (height, width), the scaled floats are upsampled bilinearly before clipping and conversion.
    """
    values = np.asarray(gradients, dtype=np.float32)
    deviation = values - values.mean()
    values = deviation / (2.0 * np.percentile(np.abs(deviation), 99) + 1e-12) + 0.5
    if size is not None:
        values = upsample(values, size, axes=(0, 1))
    return (np.clip(values, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def title_band_height(panel_height: int) -> int:
    """Height of the white band above each panel in side_by_side: twice the title's font size."""
    return 2 * _font_size(panel_height)


def side_by_side(panels: list[np.ndarray], titles: list[str], gap: int = 16) -> np.ndarray:
    """Lay RGB uint8 panels left to right, each scaled to the tallest panel's height and titled above, on white.

    When the tallest panel is under MIN_PANEL_HEIGHT, every panel is first magnified by the smallest whole factor
    that reaches it, nearest neighbour: each input pixel becomes a sharp square block, nothing is invented.
    The result is title_band_height(H) + H high and sum(scaled widths) + gap * (len(panels) - 1) wide, where H is
    the tallest panel's height after magnifying.
    """
    if not panels or len(panels) != len(titles):
        raise ValueError(f"need one title per panel and at least one panel; got {len(panels)} and {len(titles)}")
    if gap < 0:
        raise ValueError(f"gap must not be negative, got {gap}")
    panels = [_require_rgb(panel) for panel in panels]
    factor = -(-MIN_PANEL_HEIGHT // max(panel.shape[0] for panel in panels))  # ceiling division
    if factor > 1:
        panels = [panel.repeat(factor, axis=0).repeat(factor, axis=1) for panel in panels]
    height = max(panel.shape[0] for panel in panels)
    band = title_band_height(height)
    scaled = [_scale_to_height(panel, height) for panel in panels]
    font = _fitting_font(titles, min(panel.shape[1] for panel in scaled), _font_size(height))
    columns = [_titled(panel, title, font, band) for panel, title in zip(scaled, titles, strict=True)]
    spacer = np.full((columns[0].shape[0], gap, 3), BACKGROUND, dtype=np.uint8)
    pieces = [piece for column in columns for piece in (spacer, column)][1:]
    return np.concatenate(pieces, axis=1)


def to_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode an RGB uint8 array (H, W, 3) as PNG bytes, e.g. for a download button; ``compress_level`` 1 encodes
    several times faster into a somewhat larger file (the dashboard prepares its downloads on every new view)."""
    buffer = io.BytesIO()
    Image.fromarray(_require_rgb(image)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def to_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Encode an RGB uint8 array as JPEG bytes: for display only (a fraction of a PNG's size and encoding time),
    never for downloads, which stay lossless PNG."""
    buffer = io.BytesIO()
    Image.fromarray(_require_rgb(image)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _require_rgb(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {array.dtype} {array.shape}")
    return array


def _font_size(panel_height: int) -> int:
    # Titles grow with the panels so they stay readable in large exports, but never below 12 px.
    return max(12, panel_height // 20)


def _fitting_font(titles: list[str], width: int, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The default font at ``size``, made smaller (not below 10 px) until every title fits in ``width``."""
    font = ImageFont.load_default(size=size)
    while size > 10 and max(font.getlength(title) for title in titles) > 0.95 * width:
        size -= 1
        font = ImageFont.load_default(size=size)
    return font


def _scale_to_height(panel: np.ndarray, height: int) -> np.ndarray:
    width = max(1, round(panel.shape[1] * height / panel.shape[0]))
    return resize(panel, (height, width))


def _titled(panel: np.ndarray, title: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, band: int) -> np.ndarray:
    column = Image.new("RGB", (panel.shape[1], band + panel.shape[0]), BACKGROUND)
    column.paste(Image.fromarray(panel), (0, band))
    # Drawing on the column's own canvas clips a title wider than its panel instead of spilling onto a neighbour.
    ImageDraw.Draw(column).text((panel.shape[1] / 2, band / 2), title, fill=TITLE_COLOUR, font=font, anchor="mm")
    return np.asarray(column)
