"""cam.core.images: every bad input gets a specific ImageError, odd modes and EXIF rotation come out as plain RGB."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cam.core.images import ImageError, article, decode_image, load_image, model_input, resize

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _save(image: Image.Image, path: Path, **params) -> Path:
    image.save(path, **params)
    return path


def _noise_jpeg_bytes() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _assert_close(pixel: np.ndarray, expected: tuple[int, int, int], tolerance: int = 0) -> None:
    assert np.abs(pixel.astype(int) - expected).max() <= tolerance, f"{pixel} is not {expected}"


# --- bad inputs -------------------------------------------------------------------------------------------------


def test_truncated_jpeg_is_reported_as_truncated(tmp_path: Path) -> None:
    data = _noise_jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(path)


def test_text_file_renamed_png_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match="not a picture this tool can read; it reads JPEG"):
        load_image(path)


def test_empty_file_is_reported_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(path)


def test_empty_upload_is_reported_empty() -> None:
    with pytest.raises(ImageError, match="uploaded file is empty"):
        load_image(b"")


def test_missing_path_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="Cannot read .*nowhere.png"):
        load_image(tmp_path / "nowhere.png")


def test_one_pixel_image_is_too_small(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (1, 1)), tmp_path / "dot.png")
    with pytest.raises(ImageError, match="1x1; both sides must be at least"):
        load_image(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    # A blank 1-bit image compresses to a few KB, yet its header claims 16 megapixels.
    path = _save(Image.new("1", (4000, 4000)), tmp_path / "bomb.png")
    assert path.stat().st_size < 10_000
    with pytest.raises(ImageError, match="4000x4000 = 16 megapixels; the limit is 10 megapixels"):
        load_image(path, max_pixels=10_000_000)


def test_unsupported_format_is_named(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (16, 16)), tmp_path / "frame.ppm")
    with pytest.raises(ImageError, match="is a PPM image; it reads JPEG, PNG"):
        load_image(path)


# --- odd but good inputs ----------------------------------------------------------------------------------------


def test_16_bit_grayscale_is_scaled_to_8_bit(tmp_path: Path) -> None:
    values = np.tile(np.array([0, 32768, 65535, 0], dtype=np.uint16), (8, 2))
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    image = load_image(_save(source, tmp_path / "deep.png"))
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    assert image[0, :3].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "print.jpg")
    assert Image.open(path).mode == "CMYK"
    image = load_image(path)
    assert image.shape == (16, 16, 3)
    _assert_close(image[8, 8], RED, tolerance=8)


def test_rgba_transparency_goes_on_white(tmp_path: Path) -> None:
    source = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    source.paste((0, 0, 255, 255), (0, 0, 8, 16))
    source.paste((255, 0, 0, 128), (8, 0, 12, 16))
    image = load_image(_save(source, tmp_path / "cutout.png"))
    _assert_close(image[0, 0], BLUE)
    _assert_close(image[0, 9], (255, 127, 127), tolerance=1)
    _assert_close(image[0, 15], WHITE)


def test_palette_png_keeps_its_colours(tmp_path: Path) -> None:
    source = Image.new("P", (16, 16), 1)
    source.putpalette([*RED, *BLUE])
    source.paste(0, (0, 0, 8, 16))
    image = load_image(_save(source, tmp_path / "palette.png"))
    _assert_close(image[0, 0], RED)
    _assert_close(image[0, 15], BLUE)


def test_palette_transparent_index_goes_on_white(tmp_path: Path) -> None:
    source = Image.new("P", (16, 16), 1)
    source.putpalette([*RED, *BLUE])
    image = load_image(_save(source, tmp_path / "palette.png", transparency=1))
    _assert_close(image[0, 0], WHITE)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    image = load_image(_save(Image.new("L", (16, 16), 77), tmp_path / "gray.png"))
    assert image.shape == (16, 16, 3)
    _assert_close(image[3, 3], (77, 77, 77))


def test_grayscale_transparent_key_goes_on_white(tmp_path: Path) -> None:
    source = Image.new("L", (16, 16), 0)
    source.paste(77, (0, 0, 8, 16))
    image = load_image(_save(source, tmp_path / "keyed.png", transparency=0))
    _assert_close(image[0, 0], (77, 77, 77))
    _assert_close(image[0, 15], WHITE)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    source = Image.new("RGB", (40, 20), BLUE)
    source.paste(RED, (0, 0, 20, 20))
    exif = source.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image = load_image(_save(source, tmp_path / "phone.jpg", exif=exif))
    assert image.shape == (40, 20, 3)
    # Turning clockwise brings the left (red) half to the top.
    _assert_close(image[10, 10], RED, tolerance=8)
    _assert_close(image[30, 10], BLUE, tolerance=8)


def test_bytes_and_path_give_the_same_pixels(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(_noise_jpeg_bytes())
    np.testing.assert_array_equal(load_image(path.read_bytes()), load_image(str(path)))


def test_gif_gives_its_first_frame_and_tiff_reads(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 12), colour) for colour in (RED, BLUE)]
    frames[0].save(tmp_path / "two.gif", save_all=True, append_images=frames[1:])
    _assert_close(load_image(tmp_path / "two.gif")[5, 5], RED)
    _assert_close(load_image(_save(Image.new("RGB", (16, 12), BLUE), tmp_path / "blue.tif"))[5, 5], BLUE)


def test_messages_name_the_given_name_and_not_the_decoder(tmp_path: Path) -> None:
    data = _noise_jpeg_bytes()
    with pytest.raises(ImageError) as caught:
        load_image(data[: len(data) // 2], name="“cut.jpg”")
    assert str(caught.value) == "“cut.jpg” is damaged or cut short (corrupt or truncated), so it cannot be shown"


# --- resizing ---------------------------------------------------------------------------------------------------


def test_resize_to_square_and_to_height_width() -> None:
    image = np.zeros((30, 50, 3), dtype=np.uint8)
    assert resize(image, 24).shape == (24, 24, 3)
    resized = resize(image, (10, 40))
    assert resized.shape == (10, 40, 3) and resized.dtype == np.uint8
    assert resize(image, (30, 50)) is image


def test_model_input_stacks_float_batches_without_rescaling() -> None:
    white = np.full((30, 50, 3), 255, dtype=np.uint8)
    single = model_input(white, 32)
    assert single.shape == (1, 32, 32, 3) and single.dtype == np.float32
    assert single.max() == 255.0
    batch = model_input([white, np.zeros((64, 20, 3), dtype=np.uint8)], 32)
    assert batch.shape == (2, 32, 32, 3) and batch.dtype == np.float32


# --- large photos, more formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, kind", [("RGB", "JPEG"), ("CMYK", "JPEG"), ("L", "JPEG"), ("RGB", "PNG"),
                                        ("RGB", "WEBP")])
def test_large_photos_are_decoded_reduced_to_the_cap(mode: str, kind: str) -> None:
    left, right = (200, 30, 30), (30, 30, 200)
    image = Image.new("RGB", (3000, 1000), left)
    image.paste(right, (1500, 0, 3000, 1000))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, kind)
    decoded = decode_image(buffer.getvalue(), max_side=600)
    assert decoded.pixels.shape == (200, 600, 3) and decoded.original == (1000, 3000) and decoded.reduced
    tolerance = 40 if mode != "RGB" else 12  # JPEG's colours, and CMYK / grey round trips
    if mode == "L":
        left = right = (int(np.mean(left)),) * 3
    _assert_close(decoded.pixels[100, 100], left, tolerance)
    _assert_close(decoded.pixels[100, 500], right, tolerance)
    assert load_image(buffer.getvalue()).shape == (1000, 3000, 3)  # the library's default: full size


def test_a_turned_jpeg_reports_its_turned_size_and_small_ones_stay_whole(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to show
    path = _save(Image.new("RGB", (4000, 1000), RED), tmp_path / "turned.jpg", exif=exif.tobytes())
    decoded = decode_image(path, max_side=1000)
    assert decoded.original == (4000, 1000) and decoded.pixels.shape == (1000, 250, 3)
    small = decode_image(_save(Image.new("RGB", (300, 200), RED), tmp_path / "small.png"), max_side=1000)
    assert small.pixels.shape == (200, 300, 3) and not small.reduced


def test_an_mpo_gives_its_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "camera.jpg"
    Image.new("RGB", (64, 48), RED).save(path, "MPO", save_all=True, append_images=[Image.new("RGB", (64, 48), BLUE)])
    assert Image.open(path).format == "MPO" and Image.open(path).n_frames == 2
    pixels = load_image(path)
    assert pixels.shape == (48, 64, 3)
    _assert_close(pixels[10, 10], RED, 8)


@pytest.mark.parametrize("kind, words", [("ICO", "is an ICO image"), ("AVIF", "is an AVIF image"),
                                         ("PPM", "is a PPM image"),
                                         ("SGI", "is an SGI image"), ("TGA", "is a TGA image")])
def test_refusals_say_a_or_an_as_the_format_is_said(tmp_path: Path, kind: str, words: str) -> None:
    if kind not in Image.SAVE:
        pytest.skip(f"this Pillow cannot write {kind}")
    path = _save(Image.new("RGB", (16, 16)), tmp_path / f"picture.{kind.lower()}", format=kind)
    with pytest.raises(ImageError, match=words):
        load_image(path)
    assert article("AVIF") == article("ICO") == article("MPO") == article("image") == "an"
    assert article("HEIF") == article("PPM") == article("JPEG") == "a"
