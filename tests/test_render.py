"""cam.explain.render: hand-checked numbers for normalising, upsampling, colouring, blending and laying out panels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cam.core.resample import upsample
from cam.explain.render import (
    COLORMAPS,
    colorize,
    colour_bar,
    guided_image,
    heatmap,
    normalize,
    overlay,
    side_by_side,
    title_band_height,
    to_jpeg,
    to_png,
)


def _photo(height: int = 300, width: int = 500) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_normalize_hand_checked() -> None:
    np.testing.assert_array_equal(normalize(np.array([[0.0, 2.0], [4.0, 8.0]])), [[0.0, 0.25], [0.5, 1.0]])


def test_normalize_constant_map_is_zeros() -> None:
    result = normalize(np.full((3, 3), 7.0))
    assert not np.isnan(result).any()
    np.testing.assert_array_equal(result, np.zeros((3, 3)))


def test_upsample_keeps_corners_and_is_monotone() -> None:
    result = upsample(np.array([[0.0, 4.0], [8.0, 12.0]]), (4, 4))
    assert result.shape == (4, 4) and result.dtype == np.float32
    np.testing.assert_allclose(result[[0, 0, -1, -1], [0, -1, 0, -1]], [0, 4, 8, 12], atol=1e-5)
    # Bilinear between pixel centres: a quarter and three quarters of the way along each row.
    np.testing.assert_allclose(result[0], [0, 1, 3, 4], atol=1e-5)
    assert (np.diff(result, axis=0) >= 0).all() and (np.diff(result, axis=1) >= 0).all()


def test_upsample_colour_map_channel_by_channel() -> None:
    gradients = np.stack([np.full((2, 3), value) for value in (1.0, -2.0, 3.0)], axis=2)
    result = upsample(gradients, (5, 7), axes=(0, 1))
    assert result.shape == (5, 7, 3) and result.dtype == np.float32
    np.testing.assert_allclose(result[2, 3], [1.0, -2.0, 3.0], atol=1e-5)


def test_colorize_ends_of_jet_and_gray() -> None:
    colours = colorize(np.array([[0.0, 1.0]]), "gray")
    assert colours.shape == (1, 2, 3) and colours.dtype == np.uint8
    assert colours.tolist() == [[[0, 0, 0], [255, 255, 255]]]
    jet = colorize(np.array([[0.0, 1.0]]))
    assert jet[0, 0, 2] > 100 and jet[0, 0, :2].max() == 0  # dark blue
    assert jet[0, 1, 0] > 100 and jet[0, 1, 1:].max() == 0  # dark red


def test_every_offered_colormap_works() -> None:
    for name in COLORMAPS:
        assert colorize(np.linspace(0, 1, 6).reshape(2, 3), name).shape == (2, 3, 3)


def test_unknown_colormap_names_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown colormap 'rainbowz'.*jet, turbo"):
        colorize(np.zeros((2, 2)), "rainbowz")


@pytest.mark.parametrize("map_shape", [(2, 2), (32, 32)])
def test_overlay_keeps_full_image_resolution(map_shape: tuple[int, int]) -> None:
    map_ = np.random.default_rng(1).random(map_shape)
    result = overlay(_photo(), map_)
    assert result.shape == (300, 500, 3) and result.dtype == np.uint8


def test_overlay_opacity_ends() -> None:
    image, map_ = _photo(30, 50), np.array([[0.0, 1.0], [2.0, 5.0]])
    np.testing.assert_array_equal(overlay(image, map_, opacity=0.0), image)
    pure_colour = colorize(normalize(upsample(map_, (30, 50))), "viridis")
    np.testing.assert_array_equal(overlay(image, map_, opacity=1.0, colormap="viridis"), pure_colour)


def test_overlay_blends_halfway() -> None:
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    result = overlay(image, np.ones((2, 2)), opacity=0.5, colormap="gray")
    # A constant map normalizes to 0, which is black in "gray": half of nothing is nothing.
    np.testing.assert_array_equal(result, image)
    white = overlay(np.full((4, 4, 3), 255, np.uint8), np.zeros((2, 2)), opacity=0.25, colormap="gray")
    assert (white == 191).all()  # 0.75 * 255 + 0.25 * 0 = 191.25


@pytest.mark.parametrize("opacity", [-0.1, 1.5, float("nan")])
def test_overlay_rejects_opacity_outside_0_1(opacity: float) -> None:
    with pytest.raises(ValueError, match="opacity"):
        overlay(_photo(8, 8), np.zeros((2, 2)), opacity=opacity)


def test_heatmap_is_the_colour_map_alone_at_size() -> None:
    result = heatmap(np.array([[0.0, 1.0], [1.0, 0.0]]), (60, 80), "gray")
    assert result.shape == (60, 80, 3) and result.dtype == np.uint8
    assert result.min() == 0 and result.max() == 255


def test_guided_image_range_and_grey_middle() -> None:
    # Zero mean and symmetric: +1 and -1 on the sides, 0 in the middle column.
    column = np.array([1.0, 0.0, -1.0])
    gradients = np.repeat(np.tile(column, (3, 1))[..., None], 3, axis=2)
    result = guided_image(gradients)
    assert result.shape == (3, 3, 3) and result.dtype == np.uint8
    assert result[1, 1, 0] == 128  # 0.5 grey
    # The 99th percentile of |deviation| is 1 and maps to 0.5 from grey: the sides are white and black.
    assert result[1, 0, 0] == 255 and result[1, 2, 0] == 0


def test_guided_image_clips_and_upsamples() -> None:
    # Two opposite spikes among 147 zeros: each lies beyond the 99th percentile of |deviation|, so it clips.
    gradients = np.zeros((7, 7, 3))
    gradients[0, 0, 0], gradients[-1, -1, 0] = 1.0, -1.0
    result = guided_image(gradients, size=(28, 21))
    assert result.shape == (28, 21, 3) and result.dtype == np.uint8
    assert result[0, 0, 0] == 255 and result[-1, -1, 0] == 0
    assert (result[..., 1:] == 128).all()  # the mean, 0.5 grey


def test_colour_bar_runs_from_the_lowest_to_the_highest_colour() -> None:
    bar = colour_bar("viridis", width=50, height=3)
    assert bar.shape == (3, 50, 3) and bar.dtype == np.uint8
    np.testing.assert_array_equal(bar[:, 0], colorize(np.zeros((3,)), "viridis"))
    np.testing.assert_array_equal(bar[:, -1], colorize(np.ones((3,)), "viridis"))
    np.testing.assert_array_equal(bar[1:], np.broadcast_to(bar[:1], (2, 50, 3)))


def test_side_by_side_arithmetic() -> None:
    panels = [_photo(300, 240), _photo(150, 90), _photo(300, 360)]
    result = side_by_side(panels, ["image", "Grad-CAM", "Guided Grad-CAM"], gap=16)
    band = title_band_height(300)
    assert band == 30  # font of 300 // 20 = 15 px, twice over
    # The 150-high panel doubles to 300 high and 180 wide.
    assert result.shape == (band + 300, 240 + 16 + 180 + 16 + 360, 3) and result.dtype == np.uint8
    assert (result[band:, 240:256] == 255).all()  # white gap
    np.testing.assert_array_equal(result[band:, :240], panels[0])


def test_side_by_side_magnifies_small_panels_into_sharp_blocks_under_whole_titles() -> None:
    panels = [_photo(32, 32), _photo(32, 32)]
    titles = ["Grad-CAM (VGG16)", "NoPool-GAP CAM"]
    result = side_by_side(panels, titles, gap=16)
    band = title_band_height(256)
    assert result.shape == (band + 256, 256 + 16 + 256, 3)  # 8x: the smallest whole factor reaching 256
    np.testing.assert_array_equal(result[band:, :256], np.kron(panels[0], np.ones((8, 8, 1), np.uint8)))
    np.testing.assert_array_equal(result[band:, 272:], np.kron(panels[1], np.ones((8, 8, 1), np.uint8)))
    for left in (0, 272):  # each title is drawn and clear of its panel's edges: not cut off
        title = result[:band, left : left + 256]
        assert (title < 128).any() and (title[:, :4] == 255).all() and (title[:, -4:] == 255).all()


def test_side_by_side_draws_titles_in_a_white_band() -> None:
    result = side_by_side([np.zeros((400, 300, 3), np.uint8)], ["Grad-CAM"], gap=0)
    band = title_band_height(400)
    assert band == 40  # font of 400 // 20 = 20 px
    assert result.shape == (440, 300, 3)
    title = result[:band]
    assert (title[0] == 255).all() and (title < 128).any()  # white margin, dark text


def test_side_by_side_needs_one_title_per_panel() -> None:
    with pytest.raises(ValueError, match="one title per panel"):
        side_by_side([_photo(10, 10)], [])


def test_to_png_round_trips() -> None:
    image = _photo(20, 30)
    data = to_png(image)
    assert data.startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def test_to_png_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        to_png(np.zeros((4, 4), dtype=np.float32))


def test_to_jpeg_is_a_close_lossy_copy() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = (200, 40, 40)
    decoded = np.asarray(Image.open(io.BytesIO(to_jpeg(image))))
    assert decoded.shape == image.shape
    assert np.abs(decoded.astype(int) - image.astype(int)).mean() < 4
