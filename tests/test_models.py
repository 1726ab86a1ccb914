"""Model builders, checkpoints and their cards, the registry, offline ImageNet errors, the shipped checkpoints."""

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from cam.core import catalog
from cam.core.predict import predict_probabilities
from cam.data.folders import load_split
from cam.explain.methods import grad_cam
from cam.models import architectures, checkpoints
from cam.models.architectures import caffe_preprocessing, nopool_gap, receptive_field, vgg16
from cam.models.checkpoints import load_checkpoint, save_checkpoint, untrained_stand_in
from cam.models.errors import CheckpointError, WeightsUnavailable

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def small_vgg():
    return vgg16(num_classes=4, input_size=32)


def test_vgg16_keeps_keras_layer_names_and_shapes(small_vgg):
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    for layer in reference.layers:
        if isinstance(layer, layers.Conv2D):
            ours = small_vgg.get_layer(layer.name)
            assert [w.shape for w in ours.weights] == [w.shape for w in layer.weights]
    assert small_vgg.get_layer("block5_conv3").output.shape == (None, 2, 2, 512)
    assert small_vgg.output_shape == (None, 4)


def test_caffe_preprocessing_equals_keras(small_vgg):
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    expected = keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(caffe_preprocessing()(x), expected, rtol=1e-5, atol=1e-3)


def test_nopool_gap_has_no_pooling_and_full_resolution_features():
    model = nopool_gap(input_size=24)
    assert not any(isinstance(layer, layers.MaxPooling2D | layers.AveragePooling2D) for layer in model.layers)
    assert all(layer.strides == (1, 1) for layer in model.layers if isinstance(layer, layers.Conv2D))
    assert model.get_layer("cam_features").output.shape[1:3] == (24, 24)
    assert architectures.default_gradcam_layer(model) == "cam_features"
    assert receptive_field(model) == 1 + 2 * len(architectures.NOPOOL_FILTERS)


def test_checkpoint_round_trip(tmp_path):
    loaded = untrained_stand_in("nopool_gap")
    path = save_checkpoint(loaded.model, loaded.card, tmp_path)
    again = load_checkpoint(path)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(again.model.predict_on_batch(x), loaded.model.predict_on_batch(x), rtol=1e-5)
    assert again.card == json.loads(json.dumps(loaded.card))
    assert again.classes == ["bird", "cat", "dog", "horse"] and again.input_size == 32


def test_checkpoint_errors(tmp_path):
    loaded = untrained_stand_in("nopool_gap")
    path = save_checkpoint(loaded.model, loaded.card, tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.keras")
    data = path.read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut.json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.keras")
    with zipfile.ZipFile(tmp_path / "foreign.keras", "w") as archive:
        archive.writestr("hello.txt", "not a model")
    (tmp_path / "foreign.json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError, match="could not load"):
        load_checkpoint(tmp_path / "foreign.keras")
    card = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**card, "classes": ["a", "b"]}))
    with pytest.raises(CheckpointError, match="does not match its card"):
        load_checkpoint(path)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    path.with_suffix(".json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(path)


@pytest.mark.parametrize("entry, value", [
    ("metrics", None), ("metrics", []), ("classes", None), ("classes", "cat"), ("input_size", "32"),
    ("input_size", None), ("gradcam_layer", None), ("gradcam_layer", ""), ("training", None), ("name", 7),
    ("gradcam_layer", "no_such_layer"), ("gradcam_layer", "logits"),  # unknown, and a layer without 4-D maps
])
def test_a_card_with_an_unusable_entry_is_refused_with_its_own_sentence(tmp_path, entry, value):
    loaded = untrained_stand_in("nopool_gap")
    path = save_checkpoint(loaded.model, loaded.card, tmp_path)
    path.with_suffix(".json").write_text(json.dumps({**loaded.card, entry: value}))
    with pytest.raises(checkpoints.CardError) as refused:
        load_checkpoint(path)
    assert refused.value.entry == entry
    words = checkpoints.problem_in_words(refused.value)
    field = checkpoints.CARD_FIELDS_IN_WORDS[entry]
    assert words == f"its description (model card) gives {field} missing or in a form this tool cannot use"
    assert "/" not in words and repr(value) not in words


def test_registry_falls_back_to_untrained_stand_in(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "CHECKPOINTS", tmp_path)
    loaded = checkpoints.load_model("nopool_gap")
    assert not loaded.trained and "UNTRAINED" in loaded.note
    with pytest.raises(ValueError, match="Unknown model"):
        checkpoints.load_model("resnet")


def test_imagenet_offline_error_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.vgg16.file_utils.get_file", offline)
    with pytest.raises(WeightsUnavailable) as error:
        checkpoints.vgg16_imagenet()
    assert "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in str(error.value)
    assert str(tmp_path / "models") in str(error.value)
    with pytest.raises(WeightsUnavailable, match="_notop.h5"):
        vgg16(weights="imagenet")


def test_imagenet_class_groups_cover_our_classes():
    groups = checkpoints.imagenet_class_groups()
    assert set(groups) == {"bird", "cat", "dog", "horse"}
    assert len(groups["dog"]) == 118 and groups["cat"] == [281, 282, 283, 284, 285]
    flat = [i for members in groups.values() for i in members]
    assert len(flat) == len(set(flat))


@pytest.mark.parametrize(
    ("name", "dataset", "size", "init"),
    [
        ("vgg16", "cifar4", 32, "from scratch"),
        ("nopool_gap", "cifar4", 32, "from scratch"),
        ("vgg16_photos", "photos4", 128, "the previous vgg16_photos (VGG16's convolutions from the HED"),
        ("nopool_gap_photos", "photos4", 128, "the previous 12-layer nopool_gap_photos"),
    ],
)
def test_shipped_checkpoint_loads_matches_card_and_beats_chance(name, dataset, size, init):
    """A smoke check of what ships; the real figure comes from `python -m cam evaluate`."""
    path = catalog.PROJECT_ROOT / "checkpoints" / f"{name}.keras"
    if not path.exists():
        pytest.fail(f"{path} is not shipped")
    loaded = load_checkpoint(path)
    assert loaded.classes == ["bird", "cat", "dog", "horse"] and loaded.input_size == size
    assert loaded.card["training"]["init"].startswith(init)
    assert loaded.card["parameters"] == loaded.model.count_params()
    if not (SHARED_DATA / dataset).is_dir():
        pytest.skip(f"no dataset at {SHARED_DATA / dataset}")
    data = load_split(SHARED_DATA / dataset, "test", size)
    pick = np.random.default_rng(0).choice(len(data.labels), 40, replace=False)
    predicted = loaded.model.predict_on_batch(data.images[pick].astype("float32")).argmax(1)
    assert (predicted == data.labels[pick]).mean() > 0.6
    if dataset == "photos4":  # the photo pair also at short side 224, each photo at its own aspect
        larger = load_split(SHARED_DATA / dataset, "test", 224, squash=False)
        predicted = predict_probabilities(loaded.model, [larger.images[i] for i in pick]).argmax(1)
        assert (predicted == larger.labels[pick]).mean() > 0.6
    maps = grad_cam(loaded.model, data.images[pick[:4]], layer=loaded.card["gradcam_layer"])
    assert np.isfinite(maps).all()
    native = {"vgg16_photos": 8, "nopool_gap_photos": 128}.get(name)
    if native:  # the photo pair's promise: Grad-CAM at least 8x8, NoPool-GAP's CAM at the input's size
        assert maps.shape[1:3] == (native, native)
