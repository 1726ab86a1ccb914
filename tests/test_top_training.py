"""The CPU route that fine-tunes a network's top on cached maps (VGG16: block5 and the head on block4_pool's maps;
NoPool-GAP: its last convolutions and head on conv12's full-resolution maps, kept on disk): the cached route computes
the same network, an epoch shows each training photo once, the frozen layers stay and the cache is tied to them."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cam.models.architectures import centre_classes, nopool_gap, vgg16
from cam.models.checkpoints import load_checkpoint, save_checkpoint
from cam.train import head_training, top_training
from tests.test_gpu_training import randomise_batch_norms

SHAPES = [(40, 30), (30, 40), (32, 32), (48, 32), (32, 32), (36, 32), (32, 40), (40, 30)]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """An image folder of 8 noise photos of several shapes in two classes."""
    root = tmp_path_factory.mktemp("photos")
    for index, (width, height) in enumerate(SHAPES):
        folder = root / "train" / ("bird", "cat")[index % 2]
        folder.mkdir(parents=True, exist_ok=True)
        noise = np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """VGG16 with CAM's head (random weights, 2 classes) saved as a checkpoint with a card."""
    model = vgg16(num_classes=2, batch_norm=False, head="linear")
    model.get_layer("logits").set_weights([centre_classes(np.random.default_rng(0).normal(size=(512, 2)))])
    card = {"name": "vgg16_photos", "architecture": "vgg16", "classes": ["bird", "cat"], "input_size": 32,
            "preprocessing": "none", "gradcam_layer": "block5_conv3", "training": {"init": "random"}, "metrics": {}}
    return save_checkpoint(model, card, tmp_path_factory.mktemp("start"))


@pytest.fixture(scope="module")
def nopool_checkpoint(tmp_path_factory) -> Path:
    """A 14-layer NoPool-GAP of 4 filters per layer (random weights and BatchNorm statistics, 2 classes)."""
    model = nopool_gap(num_classes=2, filters=(4,) * 14, dilations=(1, 2) * 7)
    randomise_batch_norms(model, 1)
    card = {"name": "nopool_gap_photos", "architecture": "nopool_gap_dilated", "classes": ["bird", "cat"],
            "input_size": 32, "preprocessing": "none", "gradcam_layer": "cam_features",
            "training": {"init": "random"}, "metrics": {}}
    return save_checkpoint(model, card, tmp_path_factory.mktemp("nopool"))


def test_parts_concatenated_on_disk_equal_the_concatenation_in_memory(tmp_path: Path) -> None:
    arrays = [np.arange(n * 6, dtype=np.float16).reshape(n, 6) + n for n in (3, 1, 5)]
    parts = []
    for index, array in enumerate(arrays):
        parts.append(tmp_path / f"part{index}.npz")
        np.savez(parts[-1], flat=array, other=np.zeros(2))
    head_training.concatenate_to_npy(parts, "flat", tmp_path / "whole.npy")
    whole = np.load(tmp_path / "whole.npy", mmap_mode="r")
    assert whole.dtype == np.float16
    np.testing.assert_array_equal(whole, np.concatenate(arrays))
    np.savez(parts[1], flat=arrays[1].astype(np.float32))
    with pytest.raises(ValueError, match="differ in type"):
        head_training.concatenate_to_npy(parts, "flat", tmp_path / "mixed.npy")


def test_the_nopool_top_on_its_full_resolution_maps_on_disk_gives_the_whole_networks_logits(
    tmp_path: Path, photo_folder, nopool_checkpoint
) -> None:
    model = load_checkpoint(nopool_checkpoint).model
    paths = sorted((photo_folder / "train").glob("*/*.png"))
    top_training.cache_maps(model, paths, tmp_path, [(0, 32)], log=lambda _: None)
    assert not list((tmp_path / "parts").iterdir())  # the maps are on disk once, in size32_view0.flat.npy
    indices, maps = top_training.load_maps(tmp_path, paths, top_training.frozen_fingerprint(model))[32, 0]
    assert isinstance(maps[0].base, np.memmap)
    top = top_training.top_model(model)
    assert [layer.name for layer in top.layers[1:4]] == ["conv13", "conv13_bn", "conv13_relu"]
    # Trained as it predicts: no dropout, BatchNorm frozen (a head fitted without dropout breaks with it).
    batch = maps[0][None].astype("float32")
    np.testing.assert_array_equal(top(batch, training=True), top(batch, training=False))
    for index, path in enumerate(paths):
        clean = head_training.view(path, 32, 0, index)
        assert maps[index].shape == (*clean.shape[:2], 4)  # no pooling: the photo's own size
        whole = model.predict_on_batch(clean[None].astype("float32"))[0]
        logits = top.predict_on_batch(maps[index][None].astype("float32"))[0]
        np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(), whole, atol=2e-3)


def test_fitting_the_nopool_top_keeps_the_lower_layers_and_the_batchnorm_statistics(
    tmp_path: Path, monkeypatch, photo_folder, nopool_checkpoint
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    common = ["--checkpoint", str(nopool_checkpoint), "--data", str(photo_folder), "--cache", str(cache)]
    top_training.main(["cache", *common, "--plan", "0:32"])
    scores = iter((0.5, 0.9))
    monkeypatch.setattr(top_training, "clean_accuracy", lambda *args: {"32": next(scores)})
    top_training.main(["fit", *common, "--epochs", "1", "--lr", "1e-2", "--batch-size", "2", "--out", str(out)])
    before = load_checkpoint(nopool_checkpoint).model
    after = load_checkpoint(out / "nopool_gap_photos.keras").model
    for name in ("conv1", "conv12", "conv12_bn", "conv13_bn", "conv14_bn"):  # BatchNorm in the top is frozen too
        for old, new in zip(before.get_layer(name).get_weights(), after.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(new, old)
    assert after.get_layer("conv13_bn").trainable  # saved as it was, for a later fit
    for name in ("conv13", "conv14", "cam_features"):
        assert not np.array_equal(after.get_layer(name).get_weights()[0], before.get_layer(name).get_weights()[0])
    np.testing.assert_array_equal(after.get_layer("logits").get_weights()[1], 0)  # CAM's head: no bias
    card = json.loads((out / "nopool_gap_photos.json").read_text())
    assert "conv12_relu" in card["training"]["init"]
    assert "conv13, conv14, cam_features, logits fine-tuned" in card["training"]["trainer"]


def test_packed_maps_of_several_shapes_come_back_unchanged() -> None:
    maps = [np.arange(n * 3 * 5, dtype=np.float32).reshape(n, 3, 5) for n in (1, 2, 4)]
    packed = top_training.pack_maps(maps)
    for back, original in zip(top_training.unpack_maps(packed["flat"], packed["shapes"]), maps, strict=True):
        np.testing.assert_array_equal(back, original)


def test_the_top_on_cached_maps_gives_the_whole_networks_logits(tmp_path: Path, photo_folder, checkpoint) -> None:
    model = load_checkpoint(checkpoint).model
    paths = sorted((photo_folder / "train").glob("*/*.png"))
    top_training.cache_maps(model, paths, tmp_path, [(0, 32)], log=lambda _: None)
    cache = top_training.load_maps(tmp_path, paths, top_training.frozen_fingerprint(model))
    indices, maps = cache[32, 0]
    assert indices.tolist() == list(range(len(paths)))
    top = top_training.top_model(model)
    for index, path in enumerate(paths):
        clean = head_training.view(path, 32, 0, index)
        assert maps[index].shape[:2] == (clean.shape[0] // 16, clean.shape[1] // 16)
        whole = model.predict_on_batch(clean[None].astype("float32"))[0]
        logits = top.predict_on_batch(maps[index][None].astype("float32"))[0]
        # float16 maps: the logits agree to the cache's precision
        np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(), whole, atol=2e-3)


def test_augmented_views_are_cached_for_the_training_split_only() -> None:
    train, validation = head_training.split_train_validation(50, head_training.VALIDATION_FRACTION,
                                                             head_training.SPLIT_SEED)
    assert top_training.cached_indices(50, 0).tolist() == list(range(50))
    assert top_training.cached_indices(50, 1).tolist() == sorted(train.tolist())
    assert not set(top_training.cached_indices(50, 2).tolist()) & set(validation.tolist())


def test_an_epoch_shows_each_drawn_photo_once_in_batches_of_one_view_and_shape() -> None:
    rng = np.random.default_rng(0)
    train = np.arange(0, 40, 2)
    shapes = [(2, 3, 8), (3, 2, 8), (2, 2, 8)]

    def view_cache(indices):
        return indices, [np.zeros(shapes[(i + j) % 3], np.float16) for j, i in enumerate(indices)]

    cache = {(32, 0): view_cache(np.arange(40)), (32, 1): view_cache(train), (64, 0): view_cache(np.arange(40))}
    photos = np.concatenate([train, train[:5]])  # a balanced draw repeats photos of small classes
    batches = top_training.epoch_batches(cache, photos, 4, rng)
    shown = [int(cache[key][0][p]) for key, positions in batches for p in positions]
    assert sorted(shown) == sorted(photos.tolist())
    for key, positions in batches:
        assert len(positions) <= 4 and len({cache[key][1][p].shape for p in positions}) == 1
    assert len({key for key, _ in batches}) == 3  # every view is drawn


def test_a_balanced_draw_shows_every_class_equally_often() -> None:
    labels = np.array([0] * 30 + [1] * 6 + [2] * 12)
    train = np.arange(0, 48, 2)  # 15, 3 and 6 training photos
    drawn = top_training.balanced_draw(train, labels, np.random.default_rng(0))
    assert len(drawn) == len(train) and set(drawn.tolist()) <= set(train.tolist())
    assert np.bincount(labels[drawn]).tolist() == [8, 8, 8]


@pytest.mark.parametrize("validation, best_epoch", [((0.5, 0.6, 0.7), 2), ((0.5, 0.4, 0.3), 0)])
def test_fit_trains_block5_and_the_head_only_and_keeps_the_best_epoch(
    tmp_path: Path, monkeypatch, photo_folder, checkpoint, validation, best_epoch
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    common = ["--checkpoint", str(checkpoint), "--data", str(photo_folder), "--cache", str(cache)]
    top_training.main(["cache", *common, "--plan", "0:32", "1:32"])
    # One validation photo cannot rank epochs: the validation accuracy before and after each epoch is set here.
    scores = iter(validation)
    monkeypatch.setattr(top_training, "clean_accuracy", lambda *args: {"32": next(scores)})
    top_training.main(["fit", *common, "--epochs", "2", "--lr", "1e-3", "--batch-size", "2", "--out", str(out)])
    before, after = load_checkpoint(checkpoint).model, load_checkpoint(out / "vgg16_photos.keras").model
    for name in ("block1_conv1", "block4_conv3"):
        np.testing.assert_array_equal(after.get_layer(name).get_weights()[0], before.get_layer(name).get_weights()[0])
    changed = not np.array_equal(after.get_layer("block5_conv3").get_weights()[0],
                                 before.get_layer("block5_conv3").get_weights()[0])
    assert changed == (best_epoch > 0)
    card = json.loads((out / "vgg16_photos.json").read_text())
    assert card["training"]["best_epoch"] == best_epoch
    assert [row["val_32"] for row in card["training"]["history"]] == list(validation[1:])
    assert card["training"]["previous"] == {"init": "random"} and card["metrics"] == {}
    np.testing.assert_allclose(after.get_layer("logits").get_weights()[0].sum(axis=1), 0, atol=1e-5)


def test_a_cache_made_by_other_frozen_blocks_is_refused(tmp_path: Path, photo_folder, checkpoint) -> None:
    model = load_checkpoint(checkpoint).model
    paths = sorted((photo_folder / "train").glob("*/*.png"))
    top_training.cache_maps(model, paths, tmp_path, [(0, 32)], log=lambda _: None)
    with pytest.raises(ValueError, match="other frozen layers"):
        top_training.load_maps(tmp_path, paths, top_training.frozen_fingerprint(model) + 1.0)
    with pytest.raises(ValueError, match="other photos"):
        top_training.load_maps(tmp_path, paths[::-1], top_training.frozen_fingerprint(model))
