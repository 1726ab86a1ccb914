"""cam.training: a two-step run of each architecture writes a loadable float32 checkpoint with a complete card."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from cam.data import load_split
from cam.models import CARD_KEYS, load_checkpoint
from cam.training import TrainConfig, predict_probabilities, train

RUNS = {
    "vgg16": ("vgg16", "float32"),
    "nopool_gap": ("nopool_gap", "float32"),
    # Trained in bfloat16, saved through float32_copy: checks that the checkpoint does not keep bfloat16.
    "nopool_gap_bf16": ("nopool_gap", "mixed_bfloat16"),
}


@pytest.fixture(scope="module", params=list(RUNS))
def trained(request, shared_tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """(model in memory, card, checkpoint path) of a two-step training run; one run per RUNS entry."""
    architecture, precision = RUNS[request.param]
    config = TrainConfig(
        architecture, str(shared_tiny_dataset), epochs=1, steps_per_epoch=2, batch_size=8, precision=precision
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


def test_checkpoint_is_float32(trained) -> None:
    loaded = load_checkpoint(trained[2])
    assert {layer.dtype_policy.name for layer in loaded.model.layers} == {"float32"}
    assert {weight.dtype for weight in loaded.model.weights} == {"float32"}


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
    for before, after in zip(start.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-6)
