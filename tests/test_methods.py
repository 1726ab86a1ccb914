"""Every method against independent numpy computations on small fixed-weight models, and the identities that hold
on a conv -> GAP -> dense head."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from cam.core.resample import upsample
from cam.explain.methods import (
    Explainer,
    ExplanationError,
    cam,
    grad_cam,
    grad_cam_pp,
    gradient_x_input,
    guided_backprop,
    guided_grad_cam,
    hires_cam,
    layer_cam,
    layer_cam_fused,
    score_cam,
    score_cam_masks,
    score_cam_passes,
    stage_layers,
    varying_channels,
)
from cam.models.architectures import nopool_gap


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


def numpy_gradient(weights, x, c):
    """A and g = dy_c/dA (plain ReLU backward) at the conv layer, (4, 4, 2) each."""
    pre, a, h_pre, _ = numpy_forward(weights, x)
    w1, w2 = weights["hidden"][0], weights["logits"][0]
    return a, (w1 @ (w2[:, c] * (h_pre > 0))).reshape(a.shape)


def numpy_grad_cam(weights, x, c):
    a, d_a = numpy_gradient(weights, x, c)
    alpha = d_a.mean(axis=(0, 1))
    return np.maximum((alpha * a).sum(-1), 0)


def numpy_grad_cam_pp(weights, x, c):
    a, g = numpy_gradient(weights, x, c)
    denominator = 2 * g**2 + a.sum(axis=(0, 1)) * g**3
    alpha = np.divide(g**2, denominator, out=np.zeros_like(g), where=denominator != 0)
    w = (alpha * np.maximum(g, 0)).sum(axis=(0, 1))
    return np.maximum((w * a).sum(-1), 0)


def numpy_hires_cam(weights, x, c):
    a, g = numpy_gradient(weights, x, c)
    return (g * a).sum(-1)


def numpy_layer_cam(weights, x, c):
    a, g = numpy_gradient(weights, x, c)
    return np.maximum((np.maximum(g, 0) * a).sum(-1), 0)


def numpy_gradient_x_input(weights, x, c):
    pre, a, _, _ = numpy_forward(weights, x)
    _, g = numpy_gradient(weights, x, c)
    return (x * ((g * (pre > 0)) @ weights["conv"][0][0, 0].T)).sum(-1)


def numpy_score_cam(weights, x, c):
    """The conv maps are 4x4 like the input, so each mask is a channel min-max scaled to [0, 1], no resampling."""
    _, a, _, _ = numpy_forward(weights, x)
    scores = []
    for k in range(a.shape[-1]):
        channel = a[..., k]
        span = channel.max() - channel.min()
        mask = (channel - channel.min()) / span if span > 0 else np.zeros_like(channel)
        logits = numpy_forward(weights, x * mask[..., None])[3]
        scores.append(np.exp(logits[c]) / np.exp(logits).sum())
    return np.maximum((np.asarray(scores) * a).sum(-1), 0)


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


@pytest.mark.parametrize(
    ("method", "reference"),
    [(grad_cam_pp, numpy_grad_cam_pp), (hires_cam, numpy_hires_cam), (layer_cam, numpy_layer_cam),
     (score_cam, numpy_score_cam)],
)
def test_layer_methods_match_numpy(mlp_head, method, reference):
    model, weights, x = mlp_head
    for c in (0, 1):
        expected = np.stack([reference(weights, image, c) for image in x])
        np.testing.assert_allclose(method(model, x, c, layer="conv"), expected, rtol=1e-4, atol=1e-6)
        assert np.ptp(expected) > 0  # not a trivially zero map


def test_gradient_x_input_matches_numpy(mlp_head):
    model, weights, x = mlp_head
    for c in (0, 1):
        expected = np.stack([numpy_gradient_x_input(weights, image, c) for image in x])
        np.testing.assert_allclose(gradient_x_input(model, x, c), expected, rtol=1e-4, atol=1e-5)


def test_score_cam_batches_give_the_same_maps(mlp_head):
    model, _, x = mlp_head
    np.testing.assert_allclose(score_cam(model, x, layer="conv", batch_size=1), score_cam(model, x, layer="conv"),
                               rtol=1e-5, atol=1e-7)
    assert score_cam_passes(model, "conv") == 3  # one forward, one per channel


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


def gap_features(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.Model(model.inputs, model.get_layer("last_conv").output)(x).numpy()


@pytest.mark.parametrize("seed", [0, 1])
def test_hires_cam_and_layer_cam_on_gap_head(seed):
    """On A -> GAP -> dense (logits y_c = sum_k w_kc mean_ij A_k,ij + b_c), g_k,ij = dy_c/dA_k,ij = w_kc / (h*w)
    at every position. Hence
    - Grad-CAM before its ReLU: a_k = mean_ij g_k,ij = w_kc / (h*w), so sum_k a_k A_k = CAM / (h*w);
    - HiResCAM: sum_k g_k,ij A_k,ij = sum_k w_kc A_k,ij / (h*w) = CAM / (h*w), the same map: equal to Grad-CAM
      before its ReLU, and ReLU(HiResCAM) = Grad-CAM;
    - Layer-CAM: ReLU(sum_k max(w_kc, 0) / (h*w) A_k), and A >= 0 (after a ReLU), so it is
      sum_k max(w_kc, 0) A_k / (h*w): the maps weighted by the positive dense weights only."""
    model = gap_model(seed)
    x = np.random.default_rng(seed).uniform(0, 255, (4, 6, 6, 3)).astype("float32")
    a, w = gap_features(model, x), model.get_layer("logits").get_weights()[0]
    signed = False
    for c in range(3):
        hires = hires_cam(model, x, c, layer="last_conv")
        np.testing.assert_allclose(hires * 36, cam(model, x, c), rtol=1e-4, atol=1e-4)
        relu_hires = np.maximum(hires, 0)
        np.testing.assert_allclose(relu_hires, grad_cam(model, x, c, layer="last_conv"), rtol=1e-4, atol=1e-6)
        positive = (a * np.maximum(w[:, c], 0)).sum(-1) / 36
        np.testing.assert_allclose(layer_cam(model, x, c, layer="last_conv"), positive, rtol=1e-4, atol=1e-6)
        assert np.ptp(hires) > 0
        signed |= bool((hires < 0).any())
    assert signed and (w < 0).any()  # so the ReLU and the positive-weights-only rule both matter here


def pooled_model(seed: int = 0) -> keras.Model:
    """8x8 input -> conv (8 maps) -> 2x2 max pooling -> conv (5 maps, 'last_conv', 4x4) -> GAP -> dense 3."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="first_conv")(inputs)
    x = layers.Conv2D(5, 3, padding="same", activation="relu", name="last_conv")(layers.MaxPooling2D(2)(x))
    z = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, layers.Activation("softmax")(z))


def tf_resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return tf.image.resize(np.asarray(maps)[..., None], size, method="bilinear").numpy()[..., 0]


def test_score_cam_masks_are_the_upsampled_activations_scaled_to_0_1():
    model = pooled_model()
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    a = gap_features(model, x)  # (2, 4, 4, 5)
    masks = score_cam_masks(a, (8, 8))
    assert masks.shape == (2, 5, 8, 8)
    for b in range(2):
        for k in range(5):
            up = tf_resize(a[b, ..., k], (8, 8))
            expected = (up - up.min()) / (up.max() - up.min()) if np.ptp(up) > 0 else np.zeros_like(up)
            np.testing.assert_allclose(masks[b, k], expected, rtol=1e-5, atol=1e-6)
    assert masks.min() == 0.0 and masks.max() == 1.0


def test_score_cam_skips_constant_channels_and_gives_the_same_maps():
    """Two of the five channels are zero everywhere (kernel 0, bias -1, ReLU), three vary: the authors' code skips
    such channels, and so do we; a channel that is 0 everywhere adds s_k * 0 to the map, so the maps equal those of a
    pass over every channel, computed here by hand from the masks."""
    model = pooled_model(2)
    kernel, bias = model.get_layer("last_conv").get_weights()
    kernel[..., :3], kernel[..., 3:], bias[3:] = np.abs(kernel[..., :3]), 0.0, -1.0
    model.get_layer("last_conv").set_weights([kernel, bias])
    x = np.random.default_rng(3).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    a = gap_features(model, x)
    assert not a[..., 3:].any() and a[..., :3].std(axis=(1, 2)).min() > 0
    assert list(varying_channels(tf.constant(a))) == [0, 1, 2, 5, 6, 7]  # image * 5 + channel
    masks = score_cam_masks(a, (8, 8))
    for c in range(3):
        every = np.stack([[model.predict_on_batch(x[b : b + 1] * masks[b, k][None, ..., None])[0, c] for k in range(5)]
                          for b in range(2)])  # (2, 5): s_k of every channel, the constant ones included
        expected = np.maximum((every[:, None, None, :] * a).sum(axis=-1), 0)
        np.testing.assert_allclose(score_cam(model, x, c), expected, rtol=1e-4, atol=1e-6)
    assert score_cam_passes(model) == 6  # at most; here 1 + 3 per image


def test_layer_cam_fused_is_the_maximum_of_tanh_scaled_upsampled_maps():
    model = pooled_model(1)
    assert stage_layers(model) == ["first_conv", "last_conv"]
    x = np.random.default_rng(1).uniform(0, 255, (3, 8, 8, 3)).astype("float32")
    for c in range(3):
        parts = []
        for name in ("first_conv", "last_conv"):
            maps = tf_resize(layer_cam(model, x, c, layer=name), (8, 8))
            # The paper's fusion (Jiang et al. 2021, eq. 7): tanh(2 M / max M) per layer, then the maximum.
            parts.append(np.tanh(2.0 * maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-30)))
        np.testing.assert_allclose(layer_cam_fused(model, x, c), np.maximum(*parts), rtol=1e-4, atol=1e-6)


def test_one_resampler_equals_tensorflow_bilinear():
    maps = np.random.default_rng(0).normal(size=(2, 3, 5)).astype("float32")
    for size in ((6, 10), (7, 13), (3, 5), (32, 32)):
        np.testing.assert_allclose(upsample(maps, size), tf_resize(maps, size), rtol=1e-5, atol=1e-6)


def test_batch_equals_one_by_one_and_is_deterministic(mlp_head):
    model, _, x = mlp_head
    explainer = Explainer(model, "conv", gap_model(0, size=4))
    batch = explainer(x, [0, 1, 0])
    for i in range(len(x)):
        single = explainer(x[i : i + 1], [0, 1, 0][i])
        for key, maps in batch.maps.items():
            np.testing.assert_allclose(maps[i], single.maps[key][0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(batch.cams[i], single.cams[0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(batch.probabilities["gradcam"][i], single.probabilities["gradcam"][0], rtol=1e-5)
    again = explainer(x, [0, 1, 0])
    for key, maps in batch.maps.items():
        np.testing.assert_array_equal(again.maps[key], maps)


def test_explainer_matches_separate_methods(mlp_head):
    model, _, x = mlp_head
    gap = gap_model(3, size=4)
    result = Explainer(model, "conv", gap)(x)
    top = model.predict_on_batch(x).argmax(-1)
    assert set(result.maps) == {"grad_cam", "guided_grad_cam", "layer_cam", "nopool_cam"}
    np.testing.assert_array_equal(result.classes["gradcam"], top)
    np.testing.assert_allclose(result.maps["layer_cam"], layer_cam(model, x, top, layer="conv"), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(result.classes["cam"], gap.predict_on_batch(x).argmax(-1))
    np.testing.assert_allclose(result.maps["grad_cam"], grad_cam(model, x, top, layer="conv"), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.maps["guided_grad_cam"], guided_grad_cam(model, x, top, "conv"), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(result.maps["nopool_cam"], cam(gap, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.cam_for([1, 2, 0]), cam(gap, x, [1, 2, 0]), rtol=1e-5, atol=1e-6)
    result.explain_cam_class([1, 2, 0])
    np.testing.assert_allclose(result.maps["nopool_cam"], cam(gap, x, [1, 2, 0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.classes["cam"], [1, 2, 0])


def test_layer_none_is_the_cards_layer():
    """None means default_gradcam_layer, the layer the cards record: here the last conv before GAP."""
    model = pooled_model(2)
    x = np.random.default_rng(2).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(grad_cam(model, x, 1), grad_cam(model, x, 1, layer="last_conv"))
    assert Explainer(model).layer == "last_conv"


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
