"""The one training augmentation (cam.train.augment): each transform's effect on a synthetic image, the view's shape at
the photo's own aspect, and the same view from the same seed."""

import numpy as np
import pytest
from PIL import Image

from cam.core.images import input_shape
from cam.train import augment


def halves(height: int = 60, width: int = 90) -> Image.Image:
    """Left half red, right half blue."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (200, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 200)
    return Image.fromarray(pixels)


def test_the_same_seed_gives_the_same_view_and_another_seed_another() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 120, 3), dtype=np.uint8))
    first, again, other = (augment.photo_augment(image, 64, np.random.default_rng(s)) for s in (1, 1, 2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("size", [(120, 80), (80, 120), (300, 100)])
def test_a_view_has_the_photos_own_input_shape_or_a_square(size: tuple[int, int]) -> None:
    image = Image.new("RGB", size, (10, 20, 30))
    width, height = size
    kept_height, kept_width = (height, min(width, 2 * height)) if width >= height else (min(height, 2 * width), width)
    for seed in range(5):
        view = augment.photo_augment(image, 64, np.random.default_rng(seed))
        assert view.shape == (*input_shape(kept_height, kept_width, 64), 3) and view.dtype == np.uint8
        assert augment.photo_augment(image, 64, np.random.default_rng(seed), square=True).shape == (64, 64, 3)


def test_random_boxes_cover_the_asked_area_and_aspect_inside_the_image(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = augment.random_box(200, 100, 2.0, rng)
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 100
        area = (right - left) * (bottom - top) / (200 * 100)
        assert augment.CROP_AREA[0] * 0.9 <= area <= 1.0
        ratio = (right - left) / (bottom - top)
        if right - left < 200 and bottom - top < 100:  # not clipped: the aspect within the jitter of 2:1
            assert 2.0 * augment.CROP_ASPECT[0] * 0.95 <= ratio <= 2.0 * augment.CROP_ASPECT[1] * 1.05
    # With the whole area and no aspect jitter, the box is the whole image.
    monkeypatch.setattr(augment, "CROP_ASPECT", (1.0, 1.0))
    assert augment.random_box(200, 100, 2.0, rng, area=(1.0, 1.0)) == (0, 0, 200, 100)


def test_recompression_keeps_the_picture_and_adds_artefacts() -> None:
    image = halves()
    poor = np.asarray(augment.recompressed(image, 30)).astype(int)
    assert poor.shape == (60, 90, 3) and not np.array_equal(poor, np.asarray(image))
    assert poor[:, :40, 0].mean() > 150 and poor[:, 50:, 2].mean() > 150  # still red left, blue right


def test_jitter_with_neutral_factors_is_the_identity_and_each_factor_acts() -> None:
    image = halves()
    original = np.asarray(image).astype(int)
    np.testing.assert_array_equal(augment.jittered(image, 1.0, 1.0, 1.0, 0.0), original)
    brighter = augment.jittered(image, 1.2, 1.0, 1.0, 0.0).astype(int)
    assert brighter[0, 0, 0] == 240 and brighter[0, -1, 2] == 240  # 200 x 1.2
    grey = augment.jittered(image, 1.0, 1.0, 0.0, 0.0).astype(int)
    assert np.ptp(grey[0, 0]) == 0  # saturation 0: grey
    turned = augment.jittered(image, 1.0, 1.0, 1.0, 1 / 3).astype(int)
    assert turned[0, 0, 1] > 150 and turned[0, 0, 0] < 50  # red turned a third of the circle: green
    flat = augment.jittered(image, 1.0, 0.0, 1.0, 0.0).astype(int)
    assert np.ptp(flat.reshape(-1, 3), axis=0).max() == 0  # contrast 0: one colour


def test_a_frame_is_painted_round_the_picture_and_the_inside_kept() -> None:
    pixels = np.full((30, 40, 3), 100, np.uint8)
    augment.paint_frame(pixels, 3, np.array([1, 2, 3]))
    assert np.all(pixels[:3] == (1, 2, 3)) and np.all(pixels[:, -3:] == (1, 2, 3))
    assert np.all(pixels[3:-3, 3:-3] == 100)


def test_flip_and_crop_move_the_picture_as_asked(monkeypatch) -> None:
    """With the whole area kept and no other transform, a view is the photo resized, flipped or not."""
    monkeypatch.setattr(augment, "CROP_AREA", (1.0, 1.0))
    monkeypatch.setattr(augment, "CROP_ASPECT", (1.0, 1.0))
    monkeypatch.setattr(augment, "FRAME", 0.0)
    for name, value in (("BRIGHTNESS", (1.0, 1.0)), ("CONTRAST", (1.0, 1.0)), ("SATURATION", (1.0, 1.0))):
        monkeypatch.setattr(augment, name, value)
    monkeypatch.setattr(augment, "HUE", 0.0)
    monkeypatch.setattr(augment, "ROTATION", 0.0)
    sides = set()
    for seed in range(12):
        view = augment.photo_augment(halves(64, 128), 32, np.random.default_rng(seed)).astype(int)
        assert view.shape == (32, 64, 3)
        sides.add("red left" if view[:, :24, 0].mean() > view[:, :24, 2].mean() else "red right")
    assert sides == {"red left", "red right"}  # flipped in some views, not in others
