"""The photo as it is: own aspect ratio on every path, maps at their native shape laid back onto the photo without
distortion, shape buckets for the compiled passes, and the detail levels."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers
from PIL import Image

from cam import cli
from cam.core.images import detail_sizes, input_shape, own_aspect, view_box
from cam.core.resample import upsample
from cam.explain.methods import Explainer
from cam.explain.pipeline import explain_image, photo_view, render_panels
from cam.explain.registry import METHODS, selected
from cam.models.checkpoints import LoadedModel, save_checkpoint

CLASSES = ["red", "grey"]


def test_input_shape_keeps_the_aspect_and_rounds_the_long_side_to_32() -> None:
    assert input_shape(768, 1024, 128) == (128, 160)  # 4:3 landscape: 170.7 -> 160
    assert input_shape(1024, 768, 128) == (160, 128)  # the same photo in portrait
    assert input_shape(1080, 1920, 256) == (256, 448)  # 16:9: 455.1 -> 448
    assert input_shape(500, 500, 320) == (320, 320)
    assert input_shape(1, 1, 128) == (128, 128)
    assert input_shape(100, 103, 128) == (128, 128)  # never shorter than the short side
    with pytest.raises(ValueError, match="multiple of 32"):
        input_shape(100, 100, 100)


def test_view_box_keeps_photos_up_to_two_to_one_and_crops_the_middle_of_longer_ones() -> None:
    assert view_box(160, 320) == (0, 0, 160, 320)
    assert view_box(40, 4000) == (0, 1960, 40, 80)  # a strip: its middle 2:1
    assert view_box(4000, 40) == (1960, 0, 80, 40)
    assert view_box(300, 400, max_aspect=1.0) == (0, 50, 300, 300)  # the middle square, for square-only networks
    assert own_aspect(np.zeros((40, 4000, 3), np.uint8), 128).shape == (128, 256, 3)


def test_detail_levels_are_multiples_of_32_of_the_training_size() -> None:
    assert detail_sizes(128) == {"standard": 128, "fine": 192, "finer": 256, "finest": 320}
    assert detail_sizes(32) == {"standard": 32, "finer": 64}


# ------------------------------------------------------------------------------------- a red-object detector
def red_detector() -> keras.Model:
    """Class "red" = mean over positions of ReLU(R - (G + B) / 2 - 20), seen through a 1x1 conv, a 2x2 max pool and a
    3x3 conv that passes the map on; class "grey" = a constant channel. Grad-CAM layer: ``last_conv``."""
    inputs = keras.Input((None, None, 3))
    a = layers.Conv2D(2, 1, activation="relu", name="first_conv")(inputs)
    a = layers.MaxPooling2D(2, name="pool")(a)
    a = layers.Conv2D(2, 3, padding="same", activation="relu", name="last_conv")(a)
    z = layers.Dense(2, name="logits")(layers.GlobalAveragePooling2D(name="gap")(a))
    model = keras.Model(inputs, layers.Activation("softmax", name="probabilities")(z))
    model.get_layer("first_conv").set_weights([np.array([[[[1.0, 0], [-0.5, 0], [-0.5, 0]]]], "float32"),
                                               np.array([-20.0, 1.0], "float32")])
    centre = np.zeros((3, 3, 2, 2), "float32")
    centre[1, 1] = np.eye(2)
    model.get_layer("last_conv").set_weights([centre, np.zeros(2, "float32")])
    model.get_layer("logits").set_weights([np.array([[1.0, 0], [0, 1.0]], "float32"), np.array([0, 5.0], "float32")])
    return model


def red_gap() -> keras.Model:
    """A NoPool-GAP stand-in: the same red channel at full resolution (``cam_features``), GAP, one dense layer."""
    inputs = keras.Input((None, None, 3))
    a = layers.Conv2D(2, 1, activation="relu", name="cam_features")(inputs)
    z = layers.Dense(2, name="logits")(layers.GlobalAveragePooling2D(name="gap")(a))
    model = keras.Model(inputs, layers.Activation("softmax", name="probabilities")(z))
    model.get_layer("cam_features").set_weights([np.array([[[[1.0, 0], [-0.5, 0], [-0.5, 0]]]], "float32"),
                                                 np.array([-20.0, 1.0], "float32")])
    model.get_layer("logits").set_weights([np.array([[1.0, 0], [0, 1.0]], "float32"), np.array([0, 5.0], "float32")])
    return model


def card(name: str, layer: str) -> dict:
    return {"name": name, "architecture": "test", "classes": CLASSES, "input_size": 128, "preprocessing": "none",
            "gradcam_layer": layer, "training": {"source": "hand-set weights"}, "metrics": {}}


@pytest.fixture(scope="module")
def detectors() -> tuple[LoadedModel, LoadedModel]:
    gradcam = LoadedModel(red_detector(), card("red_vgg", "last_conv"))
    return gradcam, LoadedModel(red_gap(), card("red_gap", "cam_features"))


def photo_with_red_square(height: int = 200, width: int = 400, left: int = 40) -> np.ndarray:
    """A grey photo with a red square in its left third."""
    photo = np.full((height, width, 3), 128, np.uint8)
    top = height // 2 - 30
    photo[top : top + 60, left : left + 60] = (255, 0, 0)
    return photo


def strength(map_: np.ndarray) -> np.ndarray:
    """Where a map says most: its value, or for a guided picture (h, w, 3) the size of its gradient."""
    return np.abs(map_).sum(axis=-1) if map_.ndim == 3 else map_


def assert_peaks_in_left_third(native: np.ndarray, photo_shape: tuple[int, int], what: str) -> None:
    at_photo = upsample(strength(native), photo_shape)
    column = np.unravel_index(np.argmax(at_photo), at_photo.shape)[1]
    assert column < photo_shape[1] / 3, f"{what}: peak at column {column} of {photo_shape[1]}"


@pytest.mark.parametrize("size", [128, 256])
def test_every_method_points_at_the_object_on_the_page_path(detectors, size) -> None:
    gradcam, cam_model = detectors
    photo = photo_with_red_square()
    result = explain_image(photo, Explainer(gradcam.model, "last_conv", cam_model.model), gradcam, cam_model,
                           "red", selected("all"), short_side=size)
    assert result.view.shapes == {"gradcam": (size, 2 * size), "cam": (size, 2 * size)}
    assert result.image.shape == photo.shape  # panels at the photo's own size
    for key, maps in result.explanation.maps.items():
        assert_peaks_in_left_third(maps[0], photo.shape[:2], key)
    for panel in render_panels(result):
        assert panel.image.shape == photo.shape
        assert f"from a {2 * size}x{size} input" in panel.caption


@pytest.mark.parametrize("size", [128, 256])
def test_every_method_points_at_the_object_on_the_command_line(detectors, tmp_path, size) -> None:
    gradcam, cam_model = detectors
    paths = [save_checkpoint(loaded.model, loaded.card, tmp_path / "models") for loaded in detectors]
    Image.fromarray(photo_with_red_square()).save(tmp_path / "photo.png")
    out = tmp_path / f"out{size}"
    code = cli.main(["explain", str(tmp_path / "photo.png"), "--model", str(paths[0]), "--cam-model", str(paths[1]),
                     "--class", "red", "--methods", "all", "--raw", "--size", str(size), "--out", str(out)])
    assert code == 0
    for key in METHODS:
        native = np.load(out / f"photo_{key}.npy")
        assert_peaks_in_left_third(native, (200, 400), key)
        with Image.open(out / f"photo_{key}.png") as saved:
            assert saved.size == (400, 200)
    assert np.load(out / "photo_grad_cam.npy").shape == (size // 2, size)  # one 2x2 pooling in the detector


def test_portrait_and_landscape_give_maps_of_their_own_shape_and_orientation(detectors) -> None:
    gradcam, cam_model = detectors
    explainer = Explainer(gradcam.model, "last_conv", cam_model.model)
    portrait = photo_with_red_square(400, 300, left=30)  # 3:4
    landscape = photo_with_red_square(360, 640, left=60)  # 16:9
    for photo, shape in ((portrait, (160, 128)), (landscape, (128, 224))):
        result = explain_image(photo, explainer, gradcam, cam_model, "red")
        maps = result.explanation.maps
        assert maps["nopool_cam"].shape[1:] == shape and maps["guided_grad_cam"].shape[1:3] == shape
        assert maps["grad_cam"].shape[1:] == (shape[0] // 2, shape[1] // 2)
        assert_peaks_in_left_third(maps["nopool_cam"][0], photo.shape[:2], "nopool_cam")


def test_batch_equals_one_by_one_for_mixed_shapes_and_compilations_follow_the_buckets(detectors) -> None:
    gradcam, cam_model = detectors
    explainer = Explainer(gradcam.model, "last_conv", cam_model.model)
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)
              for h, w in rng.integers(60, 400, size=(20, 2))]
    shapes = {photo_view(photo.shape[:2], gradcam, cam_model).shapes["gradcam"] for photo in photos}
    single = [explain_image(photo, explainer, gradcam, cam_model) for photo in photos]
    # At short side 128 a shape is 128 x (128, 160, ..., 256) or its portrait: at most 9, one graph per pass each.
    assert len(shapes) <= 9 and explainer.compilations == 2 * len(shapes)
    again = [explain_image(photo, explainer, gradcam, cam_model) for photo in photos]
    assert explainer.compilations == 2 * len(shapes)  # nothing new is compiled for shapes seen before
    for first, second in zip(single, again, strict=True):
        for key in first.explanation.maps:
            np.testing.assert_array_equal(first.explanation.maps[key], second.explanation.maps[key])
    # A batch of photos of one shape gives each photo's maps as one by one.
    same = [photo for photo in photos if photo_view(photo.shape[:2], gradcam, cam_model).shapes["gradcam"]
            == photo_view(photos[0].shape[:2], gradcam, cam_model).shapes["gradcam"]]
    shape = photo_view(same[0].shape[:2], gradcam, cam_model).shapes["gradcam"]
    batch = explainer(np.stack([own_aspect(photo, 128) for photo in same]).astype("float32"))
    assert batch.maps["grad_cam"].shape[1:] == (shape[0] // 2, shape[1] // 2)
    for index, photo in enumerate(same):
        alone = explainer(own_aspect(photo, 128)[None].astype("float32"))
        for key in ("grad_cam", "guided_grad_cam", "nopool_cam"):
            np.testing.assert_allclose(batch.maps[key][index], alone.maps[key][0], rtol=1e-5, atol=1e-6)


def test_a_square_only_network_sees_the_middle_square_not_a_squashed_photo(detectors) -> None:
    gradcam, cam_model = detectors
    fixed_input = keras.Input((64, 64, 3))
    square = LoadedModel(keras.Model(fixed_input, red_detector()(fixed_input)), card("square", "last_conv"))
    square.card["input_size"] = 64
    view = photo_view((300, 400), square, cam_model)
    assert view.square and view.box == (0, 50, 300, 300) and view.shapes == {"gradcam": (64, 64), "cam": (128, 128)}
    assert "square pictures only" in view.sentence()


def test_cards_accuracy_per_size_is_what_evaluate_reproduces(detectors, tmp_path, capsys) -> None:
    gradcam, _ = detectors
    path = save_checkpoint(gradcam.model, gradcam.card, tmp_path / "models")
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for index in range(6):  # three red-square photos and three grey ones, of three shapes
        height, width = ((120, 200), (200, 120), (150, 150))[index % 3]
        photo = photo_with_red_square(height, width, left=10) if index < 3 else np.full((height, width, 3), 128,
                                                                                          np.uint8)
        noise = rng.integers(0, 20, photo.shape, dtype=np.uint8)
        folder = root / "test" / CLASSES[index >= 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((photo - np.minimum(photo, noise)).astype(np.uint8)).save(folder / f"{index}.png")
    for size, squash in ((128, False), (256, False), (128, True)):
        argv = ["evaluate", str(path), "--data", str(root), "--size", str(size), "--update-card"]
        assert cli.main(argv + (["--squash"] if squash else [])) == 0
        printed = float(capsys.readouterr().out.split("accuracy ")[1].split()[0])
        stored = json.loads(Path(path).with_suffix(".json").read_text())["metrics"]
        key = f"{size} squashed" if squash else str(size)
        assert stored["test_by_size"][key]["accuracy"] == pytest.approx(printed, abs=1e-4)
        assert stored["test_by_size"][key]["n"] == 6
    # The headline figure is the card's own size at the photo's own aspect, not the squashed one.
    assert stored["test"] == stored["test_by_size"]["128"]
    assert stored["test"]["accuracy"] == 1.0


def test_a_strip_is_explained_on_its_middle_and_says_so(detectors) -> None:
    gradcam, cam_model = detectors
    strip = np.full((40, 4000, 3), 128, np.uint8)
    strip[:, 1990:2010] = (255, 0, 0)
    result = explain_image(strip, Explainer(gradcam.model, "last_conv", cam_model.model), gradcam, cam_model, "red")
    assert result.view.box == (0, 1960, 40, 80) and result.image.shape == (40, 80, 3)
    assert result.view.shapes["gradcam"] == (128, 256) and result.explanation.maps["nopool_cam"].shape == (1, 128, 256)
    assert result.view.sentence() == ("This photo is 4000x40 pixels and it is too long and thin to look at whole: the "
                                      "networks saw its middle 80x40 part, which the panels show.")
    assert all(panel.image.shape == (40, 80, 3) for panel in render_panels(result))
