"""Grad-CAM, Guided Backprop, Guided Grad-CAM and CAM against independent numpy computations and properties."""

import keras
import numpy as np
import pytest
from keras import layers

from cam.methods import (
    Explainer,
    ExplanationError,
    cam,
    grad_cam,
    guided_backprop,
    guided_grad_cam,
)
from cam.models import nopool_gap


def fixed(layer_weights: dict[str, list[np.ndarray]], model: keras.Model) -> keras.Model:
    for name, weights in layer_weights.items():
        model.get_layer(name).set_weights(weights)
    return model


@pytest.fixture(scope="module")
def mlp_head():
    """x (4x4x3) -> 1x1 conv (2 maps, ReLU) -> flatten -> dense 3 (ReLU) -> dense 2 -> softmax, fixed weights."""
    rng = np.random.default_rng(1)
    inputs = keras.Input((4, 4, 3))
    a = layers.Conv2D(2, 1, activation="relu", name="conv")(inputs)
    h = layers.Dense(3, activation="relu", name="hidden")(layers.Flatten(name="flat")(a))
    z = layers.Dense(2, name="logits")(h)
    model = keras.Model(inputs, layers.Activation("softmax", name="probabilities")(z))
    weights = {
        "conv": [rng.normal(size=(1, 1, 3, 2)).astype("float32"), np.array([0.1, -0.1], "float32")],
        "hidden": [rng.normal(size=(32, 3)).astype("float32"), np.array([0.2, -0.3, 0.1], "float32")],
        "logits": [rng.normal(size=(3, 2)).astype("float32"), np.zeros(2, "float32")],
    }
    x = rng.normal(size=(3, 4, 4, 3)).astype("float32")
    return fixed(weights, model), weights, x


def numpy_forward(weights, x):
    wc, bc = weights["conv"]
    w1, b1 = weights["hidden"]
    w2, b2 = weights["logits"]
    pre = x @ wc[0, 0] + bc  # (4, 4, 2)
    a = np.maximum(pre, 0)
    h_pre = a.reshape(-1) @ w1 + b1
    return pre, a, h_pre, np.maximum(h_pre, 0) @ w2 + b2


def numpy_grad_cam(weights, x, c):
    pre, a, h_pre, _ = numpy_forward(weights, x)
    w1, w2 = weights["hidden"][0], weights["logits"][0]
    d_a = (w1 @ (w2[:, c] * (h_pre > 0))).reshape(a.shape)  # dy_c/dA, plain ReLU backward
    alpha = d_a.mean(axis=(0, 1))
    return np.maximum((alpha * a).sum(-1), 0)


def numpy_guided_backprop(weights, x, c):
    pre, a, h_pre, _ = numpy_forward(weights, x)
    wc, w1, w2 = weights["conv"][0][0, 0], weights["hidden"][0], weights["logits"][0]
    g_h = w2[:, c]
    g_h_pre = g_h * (h_pre > 0) * (g_h > 0)  # guided ReLU: positive input and positive gradient
    g_a = (w1 @ g_h_pre).reshape(a.shape)
    g_pre = g_a * (pre > 0) * (g_a > 0)
    return g_pre @ wc.T


def test_grad_cam_matches_numpy(mlp_head):
    model, weights, x = mlp_head
    for c in (0, 1):
        maps = grad_cam(model, x, c, layer="conv")
        expected = np.stack([numpy_grad_cam(weights, image, c) for image in x])
        np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)


def test_grad_cam_by_hand_on_two_pixels():
    """A 1x2 image, one feature map A = ReLU(x_r); y_0 = 2 * mean(A), so a = 2 / 2 = 1 and the map is A itself."""
    inputs = keras.Input((1, 2, 3))
    a = layers.Conv2D(1, 1, activation="relu", name="conv")(inputs)
    z = layers.Dense(1, name="logits")(layers.GlobalAveragePooling2D()(a))
    model = keras.Model(inputs, layers.Activation("softmax")(z))
    model.get_layer("conv").set_weights([np.array([1.0, 0, 0], "float32").reshape(1, 1, 3, 1), np.zeros(1, "float32")])
    model.get_layer("logits").set_weights([np.array([[2.0]], "float32"), np.zeros(1, "float32")])
    x = np.array([[[[3.0, 9, 9], [-1.0, 9, 9]]]], "float32")  # red channel 3 and -1: A = [3, 0]
    np.testing.assert_allclose(grad_cam(model, x, 0, layer="conv"), [[[3.0, 0.0]]])


def test_guided_backprop_matches_numpy(mlp_head):
    model, weights, x = mlp_head
    for c in (0, 1):
        expected = np.stack([numpy_guided_backprop(weights, image, c) for image in x])
        np.testing.assert_allclose(guided_backprop(model, x, c), expected, rtol=1e-4, atol=1e-6)


def test_guided_grad_cam_is_the_product(mlp_head):
    model, _, x = mlp_head
    product = guided_backprop(model, x, 1) * grad_cam(model, x, 1, layer="conv", size=(4, 4))[..., None]
    np.testing.assert_allclose(guided_grad_cam(model, x, 1, layer="conv"), product, rtol=1e-5, atol=1e-7)


def test_guided_backprop_leaves_model_unchanged(mlp_head):
    model, weights, x = mlp_head
    before = model.predict_on_batch(x)
    plain_gradients = grad_cam(model, x, 0, layer="conv")
    guided_backprop(model, x, 0)
    for name, expected in weights.items():
        for actual, value in zip(model.get_layer(name).get_weights(), expected, strict=True):
            np.testing.assert_array_equal(actual, value)
    assert model.get_layer("conv").activation is keras.activations.relu
    np.testing.assert_array_equal(model.predict_on_batch(x), before)
    np.testing.assert_array_equal(grad_cam(model, x, 0, layer="conv"), plain_gradients)


def gap_model(seed: int, size: int = 6, features: int = 5, classes: int = 3) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(features, 3, padding="same", activation="relu", name="last_conv")(x)
    z = layers.Dense(classes, name="logits")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, layers.Activation("softmax")(z))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grad_cam_equals_cam_on_gap_head(seed):
    """Grad-CAM paper, section 3.1: with a GAP head, a_k = w_kc / (h*w), so Grad-CAM = ReLU(CAM) / (h*w)."""
    model = gap_model(seed)
    x = np.random.default_rng(seed).uniform(0, 255, (4, 6, 6, 3)).astype("float32")
    for c in range(3):
        g = grad_cam(model, x, c, layer="last_conv")
        m = np.maximum(cam(model, x, c), 0)
        np.testing.assert_allclose(g * 36, m, rtol=1e-4, atol=1e-5)
        assert np.ptp(m) > 0  # not a trivially zero map


def test_batch_equals_one_by_one_and_is_deterministic(mlp_head):
    model, _, x = mlp_head
    explainer = Explainer(model, "conv", gap_model(0, size=4))
    batch = explainer(x, [0, 1, 0])
    for i in range(len(x)):
        single = explainer(x[i : i + 1], [0, 1, 0][i])
        for name in ("gradcam", "guided_backprop", "guided_gradcam", "cams", "gradcam_probabilities"):
            np.testing.assert_allclose(getattr(batch, name)[i], getattr(single, name)[0], rtol=1e-5, atol=1e-7)
    again = explainer(x, [0, 1, 0])
    np.testing.assert_array_equal(again.gradcam, batch.gradcam)
    np.testing.assert_array_equal(again.guided_gradcam, batch.guided_gradcam)


def test_explainer_matches_separate_methods(mlp_head):
    model, _, x = mlp_head
    gap = gap_model(3, size=4)
    result = Explainer(model, "conv", gap)(x)
    top = model.predict_on_batch(x).argmax(-1)
    np.testing.assert_array_equal(result.gradcam_class, top)
    np.testing.assert_allclose(result.gradcam, grad_cam(model, x, top, layer="conv"), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.guided_backprop, guided_backprop(model, x, top), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.guided_gradcam, guided_grad_cam(model, x, top, "conv"), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.cam_for([1, 2, 0]), cam(gap, x, [1, 2, 0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.cam_for(), cam(gap, x), rtol=1e-5, atol=1e-6)


def test_softmax_inside_dense_reads_pre_softmax_scores():
    """keras.applications puts the softmax inside the last Dense; Grad-CAM must still use the pre-softmax score."""
    split = gap_model(5)
    keras.utils.set_random_seed(5)
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(5, 3, padding="same", activation="relu", name="last_conv")(x)
    fused = keras.Model(inputs, layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(x)))
    fused.set_weights(split.get_weights())
    images = np.random.default_rng(0).uniform(0, 255, (2, 6, 6, 3)).astype("float32")
    for c in range(3):
        np.testing.assert_allclose(
            grad_cam(fused, images, c, layer="last_conv"), grad_cam(split, images, c, layer="last_conv"), rtol=1e-5
        )


def test_nopool_gap_maps_have_the_input_size():
    model = nopool_gap(num_classes=4, input_size=20)
    x = np.random.default_rng(0).uniform(0, 255, (2, 20, 20, 3)).astype("float32")
    assert cam(model, x).shape == (2, 20, 20)
    assert grad_cam(model, x, layer="cam_features").shape == (2, 20, 20)
    assert not any(isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)) for layer in model.layers)
    assert all(layer.strides == (1, 1) for layer in model.layers if isinstance(layer, layers.Conv2D))


def test_clear_errors(mlp_head):
    model, _, x = mlp_head
    with pytest.raises(ExplanationError, match="no layer 'nope'.*conv"):
        grad_cam(model, x, layer="nope")
    with pytest.raises(ExplanationError, match="4-D"):
        grad_cam(model, x, layer="hidden")
    with pytest.raises(ExplanationError, match="class 2 is out of range"):
        grad_cam(model, x, 2, layer="conv")
    with pytest.raises(ExplanationError, match="class -3 is out of range"):
        guided_backprop(model, x, -3)
    with pytest.raises(ExplanationError, match="no GlobalAveragePooling2D"):
        cam(model, x)
    with pytest.raises(ExplanationError, match="shape"):
        grad_cam(model, x[..., :1], layer="conv")
    no_softmax = keras.Model(model.inputs, model.get_layer("logits").output)
    with pytest.raises(ExplanationError, match="must end in a softmax"):
        grad_cam(no_softmax, x, layer="conv")
