"""cam.train.training: a two-step run of each architecture writes a loadable float32 checkpoint with a complete card."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from cam.core.predict import predict_probabilities
from cam.data.folders import load_split
from cam.models.checkpoints import CARD_KEYS, load_checkpoint
from cam.train.training import FusedBatchNormalization, TrainConfig, train

RUNS = {  # name: (architecture, precision, crop)
    "vgg16": ("vgg16", "float32", None),
    "nopool_gap": ("nopool_gap", "float32", None),
    # Trained in bfloat16 on 24x24 crops of any-size inputs, saved through float32_copy: checks that the
    # checkpoint is a float32 model of the card's input size.
    "nopool_gap_bf16_crop": ("nopool_gap", "bfloat16", 24),
}


@pytest.fixture(scope="module", params=list(RUNS))
def trained(request, shared_tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """(model in memory, card, checkpoint path) of a two-step training run; one run per RUNS entry."""
    architecture, precision, crop = RUNS[request.param]
    config = TrainConfig(
        architecture,
        str(shared_tiny_dataset),
        epochs=1,
        steps_per_epoch=2,
        batch_size=8,
        precision=precision,
        crop=crop,
    )
    out = tmp_path_factory.mktemp(request.param)
    try:
        model, card = train(config, out, request.param, log=lambda message: None)
    finally:
        keras.mixed_precision.set_global_policy("float32")  # a failed run must not leave bfloat16 to later tests
    return model, card, out / f"{request.param}.keras"


def test_card_is_complete(trained) -> None:
    _, card, path = trained
    assert set(CARD_KEYS) <= set(card)
    assert card["classes"] == ["bird", "cat", "dog", "horse"]
    assert card["training"]["epochs_run"] == 1
    assert card["training"]["seconds_per_epoch"] > 0
    for split, images in (("validation", 3), ("test", 12)):  # 10% of the 32 training images, and all test images
        report = card["metrics"][split]
        assert report["n"] == images
        assert set(report["per_class_accuracy"]) == set(card["classes"])
        assert np.asarray(report["confusion_matrix"]).shape == (4, 4)
        assert np.sum(report["confusion_matrix"]) == images
    assert load_checkpoint(path).card == card  # what was written is what train returned


def test_checkpoint_predicts_like_the_model_in_memory(trained, shared_tiny_dataset: Path) -> None:
    model, card, path = trained
    images = load_split(shared_tiny_dataset, "test", card["input_size"]).images
    loaded = load_checkpoint(path)
    np.testing.assert_allclose(
        predict_probabilities(loaded.model, images), predict_probabilities(model, images), rtol=1e-5, atol=1e-6
    )


def test_checkpoint_is_float32_at_the_cards_size_with_plain_layers(trained) -> None:
    loaded = load_checkpoint(trained[2])
    assert {layer.dtype_policy.name for layer in loaded.model.layers} == {"float32"}
    assert {weight.dtype for weight in loaded.model.weights} == {"float32"}
    # Saved at the training size, which the card keeps as the default input; loaded to take any size.
    assert loaded.card["input_size"] == 32 and loaded.flexible and loaded.model.input_shape == (None, None, None, 3)
    assert loaded.model.predict_on_batch(np.zeros((1, 32, 64, 3), "float32")).shape == (1, 4)
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in loaded.model.layers)


def test_crop_needs_a_model_that_takes_any_size(shared_tiny_dataset: Path, tmp_path: Path) -> None:
    config = TrainConfig("vgg16", str(shared_tiny_dataset), epochs=1, steps_per_epoch=1, crop=24)
    with pytest.raises(ValueError, match="nopool_gap"):
        train(config, tmp_path, log=lambda message: None)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_batch_normalization_is_batch_normalization(dtype: str) -> None:
    """Same inference and, in training, same outputs and moving mean as the plain layer; its moving variance is
    updated with the unbiased batch variance (n / (n - 1) times the plain layer's)."""
    x = np.random.default_rng(0).normal(2.0, 3.0, (4, 5, 5, 6)).astype("float32")
    weights = [np.random.default_rng(seed).uniform(0.5, 1.5, 6).astype("float32") for seed in range(4)]
    plain, fused = keras.layers.BatchNormalization(momentum=0.5), FusedBatchNormalization(momentum=0.5)
    for layer in (plain, fused):
        layer.build(x.shape)
        layer.set_weights(weights)
    np.testing.assert_array_equal(fused(x, training=False), plain(x, training=False))

    def run(layer: keras.layers.Layer) -> np.ndarray:
        return keras.ops.convert_to_numpy(keras.ops.cast(layer(keras.ops.cast(x, dtype), training=True), "float32"))

    tolerance = {"float32": 1e-5, "bfloat16": 3e-2}[dtype]
    np.testing.assert_allclose(run(fused), run(plain), atol=tolerance * 2)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    expected_mean = 0.5 * weights[2] + 0.5 * x.mean(axis=(0, 1, 2))
    expected_variance = 0.5 * weights[3] + 0.5 * x.var(axis=(0, 1, 2)) * n / (n - 1)
    np.testing.assert_allclose(fused.moving_mean.numpy(), expected_mean, rtol=tolerance)
    np.testing.assert_allclose(fused.moving_variance.numpy(), expected_variance, rtol=tolerance)


def test_continue_training_from_a_checkpoint(shared_tiny_dataset: Path, tmp_path: Path) -> None:
    """--init PATH starts from that checkpoint's weights and keeps its training record in the card."""
    first = TrainConfig(
        "nopool_gap",
        str(shared_tiny_dataset),
        epochs=1,
        steps_per_epoch=1,
        batch_size=8,
        precision="float32",
        learning_rate=1e-9,
    )  # a learning rate this small leaves weights as loaded
    _, card = train(first, tmp_path / "a", "start", log=lambda message: None)
    second = TrainConfig(**{**vars(first), "init": str(tmp_path / "a" / "start.keras")})
    model, continued = train(second, tmp_path / "b", "continued", log=lambda message: None)
    assert continued["training"]["continued_from"]["date"] == card["training"]["date"]
    assert (
        continued["training"]["init"].startswith("from scratch") and "continued from" in continued["training"]["init"]
    )
    start = load_checkpoint(tmp_path / "a" / "start.keras").model
    # Trainable weights only: BatchNorm's moving statistics move with every training step, whatever the rate.
    for before, after in zip(start.trainable_weights, model.trainable_weights, strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-6)
