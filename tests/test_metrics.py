"""Metrics, box parsing and mosaics on constructed cases whose answers are known."""

import json

import keras
import numpy as np
import pytest
from keras import layers

from cam.core.boxes import (
    Annotation,
    BoxError,
    box_mask,
    image_path,
    iou,
    mosaics,
    read_boxes,
    read_json,
    read_voc,
    tile_boxes,
)
from cam.core.predict import images_per_batch, predict_probabilities
from cam.core.resample import upsample
from cam.evaluate.metrics import (
    best_iou,
    cascading_randomization,
    curve_area,
    drop_and_increase,
    effective_grid,
    energy_in_boxes,
    explanation_images,
    largest_region_box,
    localization_scores,
    lost_structure,
    perturbation_curves,
    pixel_ranks,
    randomization_stages,
    rank_correlation,
    saliency,
)
from cam.explain.methods import grad_cam

BOX = (10.0, 10.0, 20.0, 20.0)


def peak(row: int, col: int, shape=(64, 64)) -> np.ndarray:
    map_ = np.zeros(shape, np.float32)
    map_[row, col] = 1.0
    return map_


# ------------------------------------------------------------------------------------------------ localization
def test_pointing_inside_hits_and_outside_misses():
    assert localization_scores(peak(15, 15), [BOX], tolerance=0)["pointing"] == 1.0
    assert localization_scores(peak(50, 50), [BOX], tolerance=15)["pointing"] == 0.0


def test_pointing_tolerance_at_the_border():
    # Pixel 34's centre is 14.5 px right of the box's edge at x = 20; pixel 35's is 15.5 px.
    assert localization_scores(peak(15, 34), [BOX], tolerance=15)["pointing"] == 1.0
    assert localization_scores(peak(15, 35), [BOX], tolerance=15)["pointing"] == 0.0
    assert localization_scores(peak(15, 34), [BOX], tolerance=0)["pointing"] == 0.0


def test_pointing_with_a_constant_map_misses():
    assert localization_scores(np.ones((64, 64)), [(0, 0, 64, 64)])["pointing"] == 0.0


def test_energy_in_box():
    inside = box_mask([BOX], (64, 64)).astype(np.float32)
    assert energy_in_boxes(inside, [BOX]) == 1.0
    assert energy_in_boxes(1.0 - inside, [BOX]) == 0.0
    # Negative values are evidence against, not energy: only the positive part outside counts here.
    assert energy_in_boxes(np.where(inside > 0, -5.0, 1.0), [BOX]) == 0.0
    assert np.isnan(energy_in_boxes(np.zeros((64, 64)), [BOX]))


def test_box_mask_takes_the_pixels_of_integer_boxes():
    mask = box_mask([(2, 1, 5, 3)], (6, 8))
    assert mask.sum() == 3 * 2 and mask[1:3, 2:5].all()


def test_iou_protocol_on_a_filled_box_and_a_far_one():
    filled = box_mask([BOX], (64, 64)).astype(np.float32)
    assert largest_region_box(filled) == BOX
    assert best_iou(filled, [BOX]) == pytest.approx(1.0)
    assert localization_scores(filled, [BOX])["iou_hit"] == 1.0
    far = box_mask([(40, 40, 60, 60)], (64, 64)).astype(np.float32)
    assert localization_scores(far, [BOX]) == {"pointing": 0.0, "energy": 0.0, "iou": 0.0, "iou_hit": 0.0}


def test_iou_protocol_keeps_the_largest_region_above_15_percent():
    map_ = box_mask([(40, 40, 60, 60)], (64, 64)) * 0.2 + box_mask([BOX], (64, 64)) * 1.0
    assert largest_region_box(map_) == (40, 40, 60, 60)  # 20x20 beats 10x10 although its values are lower
    assert largest_region_box(map_ * (map_ > 0.5)) == BOX
    assert largest_region_box(-np.ones((8, 8))) is None


def test_iou():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


# ------------------------------------------------------------------------------------------------ faithfulness
def quadrant_model() -> keras.Model:
    """p(class 0) = sigmoid(2 (0.05 m - 6)), m = mean pixel value of the top-left 8x8 quadrant of a 16x16 image."""
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(1, 1, use_bias=False, name="channel_mean")(inputs)
    x = layers.GlobalAveragePooling2D()(layers.Cropping2D(((0, 8), (0, 8)))(x))
    logits = layers.Dense(2, name="logits")(x)
    model = keras.Model(inputs, layers.Activation("softmax")(logits))
    model.get_layer("channel_mean").set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32)])
    model.get_layer("logits").set_weights([np.array([[0.05, -0.05]], np.float32), np.array([-6.0, 6.0], np.float32)])
    return model


@pytest.fixture(scope="module")
def quadrant_case():
    image = np.zeros((1, 16, 16, 3), np.float32)
    image[:, :8, :8] = 255.0
    perfect = np.zeros((1, 16, 16), np.float32)
    perfect[:, :8, :8] = 1.0
    random_map = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
    return quadrant_model(), image, perfect, random_map


def test_deletion_of_a_perfect_map_is_faster_than_of_a_random_one(quadrant_case):
    model, image, perfect, random_map = quadrant_case
    best, _ = perturbation_curves(model, image, perfect, np.array([0]), steps=16)
    chance, _ = perturbation_curves(model, image, random_map, np.array([0]), steps=16)
    assert best[0, 0] == pytest.approx(chance[0, 0]) and best[0, 0] > 0.99  # same start: the original image
    assert best[0, -1] < 0.01 and best[0, 4] < 0.01  # the quadrant is 1/4 of the pixels: gone after 4 of 16 steps
    assert curve_area(best)[0] < 0.15 < 0.4 < curve_area(chance)[0]


def test_insertion_of_a_perfect_map_is_faster_than_of_a_random_one(quadrant_case):
    model, image, perfect, random_map = quadrant_case
    # A blur much wider than the image leaves about its mean (64) everywhere: p(class 0) starts near 0.
    _, best = perturbation_curves(model, image, perfect, np.array([0]), steps=16, blur_sigma=50)
    _, chance = perturbation_curves(model, image, random_map, np.array([0]), steps=16, blur_sigma=50)
    assert best[0, 0] < 0.01 and best[0, -1] > 0.99
    assert curve_area(best)[0] > 0.85 > 0.8 > curve_area(chance)[0]


def test_curve_area_is_the_trapezoid_on_0_1():
    assert curve_area(np.ones((1, 17)))[0] == pytest.approx(1.0)
    assert curve_area(np.linspace(1, 0, 5)[None])[0] == pytest.approx(0.5)


def test_pixel_ranks_break_ties_at_random():
    flat = np.zeros((1, 4, 4))
    first, second = (pixel_ranks(flat, np.random.default_rng(seed))[0] for seed in (0, 1))
    assert sorted(first) == list(range(16)) and not np.array_equal(first, second)
    assert pixel_ranks(np.array([[[3.0, 1.0], [2.0, 0.0]]]), np.random.default_rng(0)).tolist() == [[0, 2, 1, 3]]


def test_average_drop_and_increase_by_hand():
    drop, increase = drop_and_increase(np.array([0.8, 0.5, 0.4]), np.array([0.4, 0.6, 0.4]))
    assert drop.tolist() == pytest.approx([50.0, 0.0, 0.0]) and drop.mean() == pytest.approx(50 / 3)
    assert increase.tolist() == [False, True, False]


def test_explanation_images_weight_pixels_by_the_normalized_map():
    images = np.full((1, 2, 2, 3), 100.0)
    explained = explanation_images(images, np.array([[[2.0, 4.0], [6.0, 6.0]]]))
    assert explained[0, :, :, 0].tolist() == [[0.0, 50.0], [100.0, 100.0]]


def test_saliency_sums_absolute_channels():
    guided = np.array([[[[1.0, -2.0, 0.5]]]])
    assert saliency(guided).tolist() == [[[3.5]]]
    assert saliency(np.ones((2, 3, 3))).shape == (2, 3, 3)


# ------------------------------------------------------------------------------------------------------ sanity
def tiny_cnn() -> keras.Model:
    """A frozen 1x1 'preprocessing' conv, a 3x3 conv with ReLU, GAP and logits, with fixed weights."""
    rng = np.random.default_rng(1)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(3, 1, name="frozen", trainable=False)(inputs)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(x)
    logits = layers.Dense(2, name="logits")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, layers.Activation("softmax")(logits))
    model.get_layer("frozen").set_weights([np.eye(3, dtype=np.float32)[None, None], np.zeros(3, np.float32)])
    model.get_layer("conv").set_weights([rng.normal(0, 0.01, (3, 3, 3, 4)).astype(np.float32), np.zeros(4, np.float32)])
    kernel = np.array([[1.0, -1.0], [0.5, -0.5], [-0.2, 0.2], [0.8, -0.8]], np.float32)
    model.get_layer("logits").set_weights([kernel, np.zeros(2, np.float32)])
    return model


def test_cascading_randomization_changes_grad_cam_and_not_the_original():
    model = tiny_cnn()
    images = np.random.default_rng(0).uniform(0, 255, (8, 8, 8, 3)).astype(np.float32)
    before = [w.copy() for w in model.get_weights()]
    trained = grad_cam(model, images, 0, "conv")
    assert rank_correlation(trained, trained) == pytest.approx(np.ones(8))  # no constant map among them
    assert randomization_stages(model) == ["logits", "conv"]
    correlations = {}
    for stage, clone in cascading_randomization(model, seed=0):
        randomized = grad_cam(clone, images, 0, "conv")
        assert (np.ptp(randomized.reshape(8, -1), axis=1) > 0).all()  # a real change of ranks, not a blank map
        correlations[stage] = rank_correlation(trained, randomized).mean()
        np.testing.assert_array_equal(clone.get_layer("frozen").get_weights()[0], before[0])  # frozen: kept
    assert list(correlations) == ["logits", "conv"]
    assert max(correlations.values()) < 0.9
    for weight, original in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(weight, original)


def test_a_randomization_stage_does_not_depend_on_random_draws_between_stages():
    model = tiny_cnn()
    clean = [[w.copy() for w in clone.get_weights()] for _, clone in cascading_randomization(model, seed=3)]
    disturbed = []
    for _, clone in cascading_randomization(model, seed=3):
        disturbed.append([w.copy() for w in clone.get_weights()])
        keras.layers.Dense(50).build((None, 50))  # draws from Keras's global generator, as a guided clone does
    for weights, again in zip(clean, disturbed, strict=True):
        for w, v in zip(weights, again, strict=True):
            np.testing.assert_array_equal(w, v)
    assert any((w != v).any() for w, v in zip(clean[0], clean[1], strict=True))  # the stages differ


def test_rank_correlation_edge_cases():
    maps = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    assert rank_correlation(maps, maps)[0] == pytest.approx(1.0)
    assert rank_correlation(maps, -maps)[0] == pytest.approx(-1.0)
    assert rank_correlation(maps, np.zeros_like(maps))[0] == 0.0
    assert np.isnan(rank_correlation(np.zeros_like(maps), maps)[0])


# -------------------------------------------------------------------------------------------------- resolution
def test_effective_grid_of_block_maps_and_a_checkerboard():
    coarse = np.random.default_rng(0).random((3, 2, 2)).astype(np.float32)
    blocks = coarse.repeat(16, axis=1).repeat(16, axis=2)
    checkerboard = (np.indices((32, 32)).sum(axis=0) % 2).astype(np.float32)[None]
    assert effective_grid(blocks).tolist() == [2, 2, 2]
    assert effective_grid(upsample(coarse, (32, 32))).tolist() == [2, 2, 2]  # how Grad-CAM is shown
    assert effective_grid(checkerboard).tolist() == [32]
    assert effective_grid(np.ones((1, 32, 32))).tolist() == [1]


def test_lost_structure_equals_a_least_squares_fit_of_the_grid_images():
    """Checked against a plain lstsq over the (S*S)-pixel images of every grid cell, shown as blocks and bilinearly
    (lost_structure itself works one axis at a time)."""
    rng = np.random.default_rng(1)
    side, block = 8, 2
    noise, smooth = rng.random((3, side, side)), upsample(rng.random((2, 4, 4)), (side, side))
    maps = np.concatenate([noise, smooth]).astype(np.float32)
    cells = np.eye(16).reshape(16, 4, 4)
    designs = [cells.repeat(block, axis=1).repeat(block, axis=2), upsample(cells, (side, side))]
    centred = (maps - maps.mean(axis=(1, 2), keepdims=True)).reshape(len(maps), -1).astype(np.float64)
    expected = []
    for m in centred:
        residuals = []
        for design in designs:
            columns = design.reshape(16, -1).T
            fitted = columns @ np.linalg.lstsq(columns, m, rcond=None)[0]
            residuals.append(((m - fitted) ** 2).sum())
        expected.append(min(residuals) / (m * m).sum())
    found = lost_structure(maps, block)
    np.testing.assert_allclose(found, expected, atol=1e-5)
    assert found[3:].max() < 1e-5 and found[:3].min() > 0.1  # upsampled 4x4 grids lose nothing, noise loses a lot


def test_predictions_are_batched_by_pixels_and_do_not_depend_on_the_batching():
    assert [images_per_batch(s, s) for s in (32, 128, 224, 4000)] == [256, 64, 20, 1]
    inputs = keras.Input((24, 24, 3))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3, activation="relu")(inputs))
    model = keras.Model(inputs, layers.Dense(3, activation="softmax")(x))
    images = np.random.default_rng(0).uniform(0, 255, (7, 24, 24, 3)).astype(np.float32)
    whole = predict_probabilities(model, images)
    np.testing.assert_allclose(predict_probabilities(model, images, batch_size=2), whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------- boxes
VOC = """<annotation>
  <filename>cat.jpg</filename>
  <size><width>100</width><height>80</height><depth>3</depth></size>
  <object><name>cat</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>40</xmax><ymax>60</ymax></bndbox></object>
  <object><name>dog</name><bndbox><xmin>50</xmin><ymin>1</ymin><xmax>120</xmax><ymax>80</ymax></bndbox></object>
</annotation>"""


def test_read_voc_converts_to_0_based_edges(tmp_path):
    path = tmp_path / "cat.xml"
    path.write_text(VOC)
    annotation = read_voc(path)
    assert (annotation.image, annotation.width, annotation.height) == ("cat.jpg", 100, 80)
    assert annotation.names == ["cat", "dog"]
    assert annotation.boxes("cat") == [(10.0, 20.0, 40.0, 60.0)]
    assert annotation.boxes("dog") == [(49.0, 0.0, 100.0, 80.0)]  # clipped to the image
    assert read_boxes(tmp_path) == [annotation] == read_boxes(path)


def test_read_json(tmp_path):
    path = tmp_path / "boxes.json"
    entries = [{"image": "a.png", "width": 64, "height": 48, "objects": [{"name": "dog", "bbox": [0, 0, 32, 24]}]}]
    path.write_text(json.dumps(entries))
    assert read_boxes(path) == [Annotation("a.png", 64, 48, (("dog", (0.0, 0.0, 32.0, 24.0)),), path)]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.xml", VOC.replace("<bndbox><xmin>11", "<box><xmin>11").replace("60</ymax></bndbox>", "60</ymax></box>"),
         "object 1: missing <bndbox/xmin>"),
        ("a.xml", VOC.replace("<xmin>11</xmin>", "<xmin>eleven</xmin>"), "must be numbers"),
        ("a.xml", VOC.replace("<xmax>40</xmax>", "<xmax>5</xmax>"), "is empty"),
        ("a.xml", "<annotation><filename>x", "not a readable XML file"),
        ("a.xml", "<root/>", "VOC file has <annotation>"),
        ("a.xml", VOC.replace("<width>100</width>", ""), "missing <size/width>"),
        ("a.json", "[{", "not a readable JSON file"),
        ("a.json", "{}", "expected a JSON list"),
        ("a.json", '[{"image": "a.png", "width": 4}]', "needs the keys"),
        ("a.json", '[{"image": "a", "width": 4, "height": 4, "objects": [{"name": "cat", "bbox": [0, 0, 1]}]}]',
         "a 'bbox' of four numbers"),
        ("a.json", '[{"image": "a", "width": -4, "height": 4, "objects": []}]', "must be positive"),
        ("a.txt", "", "expected a .json file"),
    ],
)
def test_malformed_box_files_raise_clear_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(BoxError, match=message.replace("(", r"\(").replace("[", r"\[")) as error:
        read_boxes(path)
    assert str(path) in str(error.value)


def test_missing_annotations_raise_clear_errors(tmp_path):
    with pytest.raises(BoxError, match="has none"):
        read_boxes(tmp_path)
    with pytest.raises(BoxError, match="not a readable JSON"):
        read_json(tmp_path / "missing.json")


def test_image_path_follows_the_voc_layout(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "JPEGImages" / "cat.jpg").write_bytes(b"x")
    annotation = Annotation("cat.jpg", 1, 1, (), tmp_path / "Annotations" / "cat.xml")
    assert image_path(annotation) == tmp_path / "JPEGImages" / "cat.jpg"
    assert image_path(Annotation("dog.jpg", 1, 1, (), None), tmp_path) is None


# ----------------------------------------------------------------------------------------------------- mosaics
def test_mosaics_put_four_different_classes_in_the_four_boxes():
    labels = np.repeat(np.arange(5), 3)
    images = (np.arange(15)[:, None, None, None] * np.ones((1, 32, 32, 3))).astype(np.uint8)  # image i is all i
    built, sources = mosaics(images, labels, n=20, seed=0)
    assert built.shape == (20, 64, 64, 3) and sources.shape == (20, 4)
    boxes = tile_boxes(32, 32)
    assert boxes == [(0, 0, 32, 32), (32, 0, 64, 32), (0, 32, 32, 64), (32, 32, 64, 64)]
    for mosaic, tiles in zip(built, sources, strict=True):
        assert len(set(labels[tiles])) == 4
        for box, source in zip(boxes, tiles, strict=True):
            assert (mosaic[box_mask([box], (64, 64))] == source).all()
    assert np.array_equal(mosaics(images, labels, n=20, seed=0)[1], sources)  # seeded
    with pytest.raises(ValueError, match="at least 4 classes"):
        mosaics(images[:9], labels[:9], n=1)


def test_effective_grid_of_a_photo_shaped_map_counts_cells_along_its_short_side() -> None:
    rng = np.random.default_rng(4)
    coarse = rng.normal(size=(2, 2, 3))  # Grad-CAM of a 3:2 photo: 2x3 cells
    assert effective_grid(upsample(coarse, (32, 48))).tolist() == [2, 2]
    fine = rng.normal(size=(1, 32, 48))
    assert effective_grid(fine).tolist() == [32]
    # On a square map it is what it always was.
    assert effective_grid(upsample(rng.normal(size=(1, 4, 4)), (32, 32))).tolist() == [4]
