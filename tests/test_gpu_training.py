"""Training the photo pair with Keras on torch (cam.train.gpu_training): int8 transfer of large kernels, weight pieces,
weights by layer name, the 12 -> 14 layer warm start that keeps the logits, aspect-grouped batches, views and
validation batches of a tiny pack, and (when torch imports) a real ``fit`` on CPU torch imported back here."""

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from cam.core.images import own_aspect
from cam.models.architectures import nopool_gap, receptive_field
from cam.models.checkpoints import load_checkpoint
from cam.train import gpu_training
from cam.train.gpu_training import (
    INT8_MIN_SIZE,
    TRAINING_SIDES,
    Views,
    batches_by_aspect,
    collate,
    decode,
    dequantized,
    layer_weights,
    load_pieces,
    nopool_warm_start,
    quantized,
    save_pieces,
    set_layer_weights,
    validation_batches,
)

REPO = Path(__file__).resolve().parents[1]
TORCH_SITE = Path("/work/torchsite")
PHOTO_SIZES = ((160, 160), (240, 160), (160, 213))  # (width, height): square, landscape 3:2, portrait 3:4


def randomise_batch_norms(model: keras.Model, seed: int) -> None:
    """Non-trivial BatchNorm gammas, betas and moving statistics, so that a swapped or dropped one would show."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.get_weights()[0].shape
            layer.set_weights([
                rng.uniform(0.8, 1.2, channels), rng.uniform(-0.1, 0.1, channels),
                rng.uniform(-0.1, 0.1, channels), rng.uniform(0.8, 1.2, channels),
            ])


def logits_of(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return np.asarray(keras.Model(model.input, model.get_layer("logits").output)(images, training=False))


def write_pack(folder: Path, count: int, train: int, seed: int = 0) -> dict:
    """A pack as ``gpu_training.pack`` writes it: ``count`` random photos of PHOTO_SIZES in turn, as WebP bytes one
    after another with their offsets, label ``i % 4``, the first ``train`` for training and the rest for validation."""
    rng = np.random.default_rng(seed)
    blobs = []
    for i in range(count):
        width, height = PHOTO_SIZES[i % 3]
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "WEBP", quality=75)
        blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    labels = np.arange(count) % 4
    gpu_training.write_pack(folder, blobs, labels, np.arange(train), np.arange(train, count),
                            np.eye(4, dtype=np.float32)[labels], [f"{i}.webp" for i in range(count)])
    return gpu_training.load_pack(folder)


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_pack(tmp_path_factory.mktemp("pack"), 12, 8)


# --- weights ------------------------------------------------------------------------------------------------------


def test_large_kernels_travel_as_int8_within_half_a_step_and_small_arrays_exactly() -> None:
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.05, (3, 3, 64, 200)).astype(np.float32)  # 115200 weights
    kernel[..., 7] = 0.0  # a dead output channel: scale 1, back as zeros
    kernel[0, 0, 0, 3] = 2.0  # one large weight: channel 3's step is 2/127
    bias = rng.normal(0, 1, 200).astype(np.float32)
    assert kernel.size >= INT8_MIN_SIZE > bias.size
    packed = quantized({"conv/0": kernel, "conv/1": bias})
    assert set(packed) == {"conv/0.q", "conv/0.scale", "conv/1"}
    assert packed["conv/0.q"].dtype == np.int8 and packed["conv/0.q"].shape == kernel.shape
    assert packed["conv/0.scale"].dtype == np.float32 and packed["conv/0.scale"].shape == (200,)
    assert packed["conv/0.q"][0, 0, 0, 3] == 127 and packed["conv/0.scale"][7] == 1.0
    np.testing.assert_array_equal(packed["conv/1"], bias)

    weights = dequantized(packed)
    assert set(weights) == {"conv/0", "conv/1"}
    np.testing.assert_array_equal(weights["conv/1"], bias)
    half_step = np.abs(kernel).reshape(-1, 200).max(axis=0) / 127 / 2
    error = np.abs(weights["conv/0"] - kernel).reshape(-1, 200).max(axis=0)
    assert np.all(error <= half_step * (1 + 1e-5) + 1e-12)
    assert half_step[3] == pytest.approx(1 / 127)  # 2.0 / 127 / 2
    np.testing.assert_array_equal(weights["conv/0"][..., 7], 0.0)
    assert error[:7].max() > half_step[:7].min() / 10  # really rounded, not float32 passed through


def test_weight_pieces_round_trip_and_a_new_save_removes_stale_pieces(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(gpu_training, "CHUNK_BYTES", 1000)
    weights = {
        "a/0": np.arange(300, dtype=np.float32).reshape(3, 100),
        "b/0": np.linspace(-1, 1, 200, dtype=np.float32).reshape(2, 2, 50),
        "c/0": np.array(7.0, np.float32),
    }
    index = save_pieces(weights, tmp_path / "m")
    assert index == [["a/0", [3, 100], 0], ["b/0", [2, 2, 50], 300], ["c/0", [], 500]]
    pieces = sorted(tmp_path.glob("m.*.bin"))
    # 501 floats = 2004 bytes: 1000 + 1000 + 4
    assert [piece.name for piece in pieces] == ["m.0.bin", "m.1.bin", "m.2.bin"]
    assert [piece.stat().st_size for piece in pieces] == [1000, 1000, 4]
    loaded = load_pieces(tmp_path / "m", index)
    assert set(loaded) == set(weights)
    for key, value in weights.items():
        assert loaded[key].shape == value.shape and loaded[key].dtype == np.float32
        np.testing.assert_array_equal(loaded[key], value)

    small = {"c/0": np.array([1.5, -2.5], np.float32)}
    index = save_pieces(small, tmp_path / "m")
    assert [piece.name for piece in tmp_path.glob("m.*.bin")] == ["m.0.bin"]
    np.testing.assert_array_equal(load_pieces(tmp_path / "m", index)["c/0"], small["c/0"])

    # More than 10 pieces: read back in numeric order (m.10.bin after m.9.bin, not after m.1.bin).
    monkeypatch.setattr(gpu_training, "CHUNK_BYTES", 100)
    index = save_pieces(weights, tmp_path / "m")
    assert len(list(tmp_path.glob("m.*.bin"))) == 21  # 2004 / 100
    np.testing.assert_array_equal(load_pieces(tmp_path / "m", index)["b/0"], weights["b/0"])


def test_weights_by_layer_name_set_another_build_and_refuse_missing_or_misshapen_ones() -> None:
    keras.utils.set_random_seed(0)
    source = nopool_gap(filters=(4, 4), input_size=None)
    randomise_batch_norms(source, 1)
    weights = layer_weights(source)
    assert set(weights) == {
        "conv1/0", "conv1_bn/0", "conv1_bn/1", "conv1_bn/2", "conv1_bn/3",
        "conv2/0", "conv2_bn/0", "conv2_bn/1", "conv2_bn/2", "conv2_bn/3",
        "cam_features/0", "cam_features/1", "logits/0", "logits/1",
    }
    assert weights["conv2/0"].shape == (3, 3, 4, 4) and weights["logits/0"].shape == (256, 4)
    assert all(value.dtype == np.float32 for value in weights.values())

    keras.utils.set_random_seed(1)
    target = nopool_gap(filters=(4, 4), input_size=None)
    images = np.random.default_rng(2).uniform(0, 255, (2, 12, 20, 3)).astype(np.float32)
    assert not np.allclose(source.predict(images, verbose=0), target.predict(images, verbose=0))
    set_layer_weights(target, weights)
    np.testing.assert_array_equal(source.predict(images, verbose=0), target.predict(images, verbose=0))

    missing = {key: value for key, value in weights.items() if key != "conv2_bn/3"}
    with pytest.raises(ValueError, match=r"for layer conv2_bn$"):
        set_layer_weights(target, missing)
    misshapen = {**weights, "conv1/0": np.zeros((3, 3, 3, 5), np.float32)}
    with pytest.raises(ValueError, match=r"for layer conv1$"):
        set_layer_weights(target, misshapen)


def test_the_warm_start_gives_the_14_layer_network_the_12_layer_ones_logits() -> None:
    """The photo design with small widths: layers 1-10 alike, then (like NOPOOL_PHOTO_FILTERS/DILATIONS) two layers
    of layer 10's width and dilation 32 inserted before the last two."""
    old_filters, old_dilations = (4, 4, 4, 6, 6, 6, 8, 8, 8, 8, 12, 12), (1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 1, 1)
    new_filters = old_filters[:10] + (8, 8) + old_filters[10:]
    new_dilations = old_dilations[:10] + (32, 32) + old_dilations[10:]
    keras.utils.set_random_seed(0)
    old = nopool_gap(filters=old_filters, dilations=old_dilations, input_size=None)
    randomise_batch_norms(old, 1)
    new = nopool_gap(filters=new_filters, dilations=new_dilations, input_size=None)
    assert receptive_field(new) == receptive_field(old) + 2 * 2 * 32

    rng = np.random.default_rng(2)
    sample = rng.uniform(0, 255, (4, 48, 48, 3)).astype(np.float32)
    weights = nopool_warm_start(old, new, sample)
    set_layer_weights(new, weights)
    # Old conv11-12 (and their BatchNorms) are the new conv13-14; conv1-10 and the head are copied.
    for new_layer, old_layer in (("conv13", "conv11"), ("conv14_bn", "conv12_bn"), ("conv10", "conv10"),
                                 ("conv10_bn", "conv10_bn"), ("logits", "logits")):
        pairs = zip(new.get_layer(new_layer).get_weights(), old.get_layer(old_layer).get_weights(), strict=True)
        for new_weight, old_weight in pairs:
            np.testing.assert_array_equal(new_weight, old_weight)
    kernel = new.get_layer("conv11").get_weights()[0]
    assert kernel.shape == (3, 3, 8, 8) and kernel.sum() == 8 and np.array_equal(kernel[1, 1], np.eye(8))

    other = rng.uniform(0, 255, (3, 40, 56, 3)).astype(np.float32)  # other photos, another shape
    old_logits, new_logits = logits_of(old, other), logits_of(new, other)
    assert np.abs(old_logits).max() > 1e-2  # not trivially zero
    np.testing.assert_allclose(new_logits, old_logits, atol=1e-4, rtol=1e-4)


# --- data ---------------------------------------------------------------------------------------------------------


def test_batches_by_aspect_hold_whole_batches_of_one_side_and_similar_aspects() -> None:
    indices = np.arange(64)
    aspects = np.where(indices < 32, 1.0, 2.0)
    batches = batches_by_aspect(indices, aspects, 4, epoch=3, seed=0)
    assert len(batches) == 16 and all(len(batch) == 4 for batch in batches)
    assert sorted(key[0] for batch in batches for key in batch) == list(range(64))  # each drawn index once
    for batch in batches:
        assert len({side for _, side, _ in batch}) == 1 and batch[0][1] in TRAINING_SIDES
        assert all(epoch == 3 for _, _, epoch in batch)
        assert all(isinstance(value, int) for key in batch for value in key)
        assert len({aspects[index] for index, _, _ in batch}) == 1  # one group of 64: sorted, so every batch pure
    assert len({batch[0][1] for batch in batches}) > 1  # sides vary across batches

    assert batches_by_aspect(indices, aspects, 4, epoch=3, seed=0) == batches  # deterministic
    order = [key[0] for batch in batches for key in batch]
    later = batches_by_aspect(indices, aspects, 4, epoch=4, seed=0)
    assert [key[0] for batch in later for key in batch] != order

    # Four groups of 64 drawn with replacement: at most one mixed batch per group, where its aspects change.
    drawn = np.random.default_rng(0).choice(indices, 256)
    batches = batches_by_aspect(drawn, aspects, 4, epoch=0)
    assert len(batches) == 64
    mixed = sum(len({aspects[index] for index, _, _ in batch}) > 1 for batch in batches)
    assert mixed <= 4


def test_collate_crops_each_view_about_its_centre_to_the_common_shape() -> None:
    def columns(height: int, width: int) -> np.ndarray:
        """Each pixel's value is its column index (in all three channels)."""
        return np.broadcast_to(np.arange(width, dtype=np.uint8)[None, :, None], (height, width, 3)).copy()

    images, targets = collate([(columns(128, 160), np.array([1.0, 0.0])), (columns(128, 192), np.array([0.0, 1.0]))])
    assert images.shape == (2, 128, 160, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0, 5, :, 1], np.arange(160))  # already the common shape: unchanged
    np.testing.assert_array_equal(images[1, 5, :, 1], np.arange(16, 176))  # (192 - 160) / 2 = 16 cut each side
    np.testing.assert_array_equal(targets, [[1.0, 0.0], [0.0, 1.0]])

    tall, _ = collate([(columns(160, 128), 0), (columns(128, 128), 0)])  # rows cropped about the centre too
    assert tall.shape == (2, 128, 128, 3)


def test_views_of_a_pack_have_the_asked_short_side_at_the_photos_own_aspect(tiny_pack: dict) -> None:
    views = Views(tiny_pack)
    # photos 0, 1, 2: 160x160, 240x160 (3:2 landscape), 160x213 (portrait)
    for index, shape in ((0, (128, 128, 3)), (1, (128, 192, 3)), (2, (160, 128, 3))):
        view, target = views[(index, 128, 0)]
        assert view.dtype == np.uint8 and view.shape == shape and min(view.shape[:2]) == 128
        np.testing.assert_array_equal(target, tiny_pack["targets"][index])
        assert target.argmax() == index % 4
    assert views[(1, 192, 0)][0].shape == (192, 288, 3)  # 192 * 1.5 = 288, a multiple of 32
    first, again, other = views[(4, 160, 0)][0], views[(4, 160, 0)][0], views[(4, 160, 1)][0]
    np.testing.assert_array_equal(first, again)  # seeded by (seed, epoch, index)
    assert not np.array_equal(first, other)


def test_validation_batches_hold_the_whole_validation_photos_at_the_short_side(tiny_pack: dict) -> None:
    batches = validation_batches(tiny_pack, 128, batch=2)
    val_index = tiny_pack["val_index"]
    assert sum(len(labels) for _, labels in batches) == len(val_index) == 4
    assert Counter(np.concatenate([labels for _, labels in batches]).tolist()) == Counter(
        tiny_pack["labels"][val_index].tolist()
    )
    expected = [own_aspect(np.asarray(decode(tiny_pack, int(i))), 128) for i in val_index]
    for images, labels in batches:
        assert images.ndim == 4 and min(images.shape[1:3]) == 128 and len(images) == len(labels) <= 2
        for image in images:  # each one a validation photo as cam.explain.pipeline shows it
            assert any(image.shape == view.shape and np.array_equal(image, view) for view in expected)
    shapes = {images.shape[1:] for images, _ in batches}
    assert shapes == {(128, 128, 3), (128, 192, 3), (160, 128, 3)}  # photos 8-11: square, landscape, portrait


# --- a real run on torch ------------------------------------------------------------------------------------------


def torch_environment() -> dict[str, str]:
    paths = [str(REPO)] + ([str(TORCH_SITE)] if TORCH_SITE.is_dir() else [])
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": os.pathsep.join(paths), "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.slow
def test_a_fit_on_torch_writes_weights_that_import_here_as_a_checkpoint(tmp_path: Path) -> None:
    env = torch_environment()
    probe = subprocess.run([sys.executable, "-c", "import torch, keras"], env=env, capture_output=True, timeout=300)
    if probe.returncode:
        pytest.skip("torch does not import with Keras on its torch backend here")

    name = "nopool_gap_photos"
    pack_dir = tmp_path / "pack"
    write_pack(pack_dir, 6, 4)  # one step of 4 photos per epoch, 2 validation photos: the CPU must keep up
    np.savez(pack_dir / f"init_{name}.npz", **quantized(layer_weights(gpu_training.build(name))))
    (pack_dir / "pack.json").write_text(json.dumps({"start": "fresh", "held_out": ["cat=x/y"], "held_out_photos": 3}))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "cam.train.gpu_training", "fit", "--pack", str(pack_dir), "--model", name,
               "--seconds", "1", "--out", str(run), "--workers", "0", "--batch", "4"]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{name} epoch 2/2" in done.stdout

    record = json.loads((run / f"{name}.json").read_text())
    assert record["epochs_run"] == record["epochs_planned"] == 2 and record["keras_backend"] == "torch"
    assert record["recipe"]["batch"] == 4 and len(record["history"]) == 2
    assert set(record["best_validation"]) == {"val_128", "val_224"}
    weights = load_pieces(run / name, record["arrays"])
    fresh = gpu_training.build(name)
    set_layer_weights(fresh, weights)  # every layer present, every shape right
    np.testing.assert_array_equal(fresh.get_layer("logits").get_weights()[0], weights["logits/0"])

    saved = gpu_training.import_run(run, name, tmp_path / "checkpoints")
    loaded = load_checkpoint(saved)
    assert "torch" in loaded.card["training"]["trainer"]
    assert loaded.card["training"]["init"] == gpu_training.INITS["fresh", name]  # the pack's record reaches the card
    assert loaded.card["training"]["split"].startswith("4 train / 2 validation")
    assert "held out of training and validation: cat=x/y (3 photos)" in loaded.card["training"]["data"]
    assert loaded.card["training"]["epochs_run"] == 2 and loaded.card["gradcam_layer"] == "cam_features"
    np.testing.assert_array_equal(loaded.model.get_layer("conv14").get_weights()[0], weights["conv14/0"])


def test_a_packs_held_out_photos_stay_out_of_training_and_validation_unless_asked_for(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    blobs = [np.frombuffer(bytes([i]), np.uint8) for i in range(20)]
    held = np.zeros(20, bool)
    held[rng.choice(20, 6, replace=False)] = True
    labels = np.arange(20) % 4
    gpu_training.write_pack(tmp_path, blobs, labels, np.arange(16), np.arange(16, 20), np.eye(4)[labels],
                            [f"{i}.jpg" for i in range(20)], held)
    without, control = gpu_training.load_pack(tmp_path), gpu_training.load_pack(tmp_path, with_held_out=True)
    np.testing.assert_array_equal(control["train_index"], np.arange(16))  # the control: the split as packed
    np.testing.assert_array_equal(control["val_index"], np.arange(16, 20))
    np.testing.assert_array_equal(without["train_index"], [i for i in range(16) if not held[i]])
    np.testing.assert_array_equal(without["val_index"], [i for i in range(16, 20) if not held[i]])


def test_the_card_says_whether_a_run_held_photos_out_or_was_their_control() -> None:
    made = {"held_out": ["cat=x/y", "dog=z/w"], "held_out_photos": 9}
    assert gpu_training.held_out_words({}) == gpu_training.held_out_words({"held_out": []}) == ""
    assert gpu_training.held_out_words(made) == "; held out of training and validation: cat=x/y, dog=z/w (9 photos)"
    assert "every photo used: the control" in gpu_training.held_out_words({**made, "held_out_used": True})


def test_a_held_out_pack_refuses_the_shipped_start_which_saw_those_photos(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--start fresh"):
        gpu_training.pack(tmp_path, tmp_path / "teacher.npz", tmp_path / "out", hold_out=[("cat", "a")])
    assert not (tmp_path / "out").exists()


def test_same_layers_tells_a_continuation_from_a_design_change() -> None:
    """pack continues from a checkpoint of today's design and widens only the older 12-layer one."""
    assert gpu_training.same_layers(nopool_gap(filters=(4, 4)), nopool_gap(filters=(4, 4)))
    assert not gpu_training.same_layers(nopool_gap(filters=(4, 4)), nopool_gap(filters=(4, 6)))
    assert not gpu_training.same_layers(nopool_gap(filters=(4, 4)), nopool_gap(filters=(4, 4, 4)))
