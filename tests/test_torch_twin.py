"""The PyTorch twin derived from a Keras network's layers computes what the network computes, and gives its weights
back (needs torch; skipped without it)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cam.models.architectures import caffe_preprocessing, nopool_gap
from cam.train.gpu_training import build
from tests.test_backends import randomised

torch = pytest.importorskip("torch")
from cam.train.torch_twin import TorchTwin  # noqa: E402  (after the skip: it imports torch)

IMAGES = np.random.default_rng(1).uniform(0, 255, (2, 64, 96, 3)).astype("float32")


def keras_logits(model: keras.Model, images: np.ndarray, training: bool = False) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras.Model(model.inputs, model.get_layer("logits").output)(images,
                                                                                               training=training))


@pytest.mark.parametrize("name", ["vgg16_photos", "nopool_gap_photos"])
def test_the_twin_gives_the_keras_logits_and_its_weights_back(name: str) -> None:
    model = randomised(build(name))
    if "caffe_preprocess" in [layer.name for layer in model.layers]:  # keep the fixed BGR swap and mean
        model.get_layer("caffe_preprocess").set_weights(caffe_preprocessing().get_weights())
    expected = keras_logits(model, IMAGES)
    twin = TorchTwin(model).eval()
    with torch.no_grad():
        got = twin(torch.from_numpy(IMAGES)).numpy()
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
    copy = build(name)
    twin.copy_to(copy)
    for a, b in zip(model.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_training_step_of_the_twin_normalises_with_the_batch_and_moves_the_statistics_like_keras() -> None:
    model = randomised(nopool_gap(filters=(4, 4), dilations=(1, 3)))
    model.get_layer("dropout").rate = 0.0  # dropout's random draws differ between the libraries
    twin = TorchTwin(model).train()
    twin.layers["dropout"].p = 0.0
    got = twin(torch.from_numpy(IMAGES)).detach().numpy()
    np.testing.assert_allclose(got, keras_logits(model, IMAGES, training=True), rtol=1e-4, atol=1e-5)
    # Both moved their BatchNorm statistics by one step (Keras momentum 0.99 is PyTorch's 0.01; PyTorch's variance
    # is the unbiased one, n / (n - 1) larger for n = 2 x 64 x 96 values).
    moved = randomised(nopool_gap(filters=(4, 4), dilations=(1, 3)))
    twin.copy_to(moved)
    for layer in ("conv1_bn", "conv2_bn"):
        keras_stats, twin_stats = model.get_layer(layer).get_weights()[2:], moved.get_layer(layer).get_weights()[2:]
        for a, b in zip(keras_stats, twin_stats, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-3)
    start = randomised(nopool_gap(filters=(4, 4), dilations=(1, 3))).get_layer("conv1_bn").get_weights()[2]
    assert np.abs(model.get_layer("conv1_bn").get_weights()[2] - start).max() > 1e-4  # they did move


def test_the_twin_refuses_a_layer_it_does_not_know() -> None:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(2, 3, strides=2, padding="same", name="strided")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(ValueError, match="strided"):
        TorchTwin(model)
