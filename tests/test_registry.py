"""The contract every registered method keeps, checked over the whole registry on one small fixed-weight model."""

import keras
import numpy as np
import pytest
from keras import layers

from cam.core.catalog import ROLE_TITLES, STUDY
from cam.explain import registry
from cam.explain.methods import FUSED_METHODS, Explainer, Explanation


@pytest.fixture(scope="module")
def small():
    """8x8 input -> conv (6) -> 2x2 max pooling -> conv (5, 'last_conv', 4x4) -> GAP -> dense 3 -> softmax:
    a Grad-CAM model with two stages and a GAP head, so every method (CAM included) applies."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="first_conv")(inputs)
    x = layers.Conv2D(5, 3, padding="same", activation="relu", name="last_conv")(layers.MaxPooling2D(2)(x))
    z = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, layers.Activation("softmax", name="probabilities")(z))
    images = np.random.default_rng(4).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    return model, images


@pytest.mark.parametrize("key", list(registry.METHODS))
def test_every_method_keeps_the_contract(small, key):
    """Batch == one by one (with a different class per image), shape, finite, non-negative where the entry says
    so, the class respected (another class gives another map), the model unchanged."""
    model, x = small
    method = registry.METHODS[key]
    weights, before = [w.copy() for w in model.get_weights()], model.predict_on_batch(x)
    classes = np.array([0, 1, 2, 0])
    maps = method.compute(model, x, classes, None)
    assert maps.shape[0] == 4 and maps.shape[1:3] in {(4, 4), (8, 8)} and maps.ndim in (3, 4)
    assert np.isfinite(maps).all() and np.ptp(maps) > 0
    if method.non_negative:
        assert maps.min() >= 0
    for i, c in enumerate(classes):
        np.testing.assert_allclose(maps[i], method.compute(model, x[i : i + 1], [c], None)[0], rtol=1e-4, atol=1e-6)
    other = method.compute(model, x, (classes + 1) % 3, None)
    assert not np.allclose(other, maps)
    for actual, expected in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(model.predict_on_batch(x), before)
    assert method.role in ROLE_TITLES and method.reads(model, None) and method.label and method.summary


def test_the_explainer_gives_the_fused_methods_as_their_functions_do(small):
    model, x = small
    assert set(FUSED_METHODS) <= set(registry.METHODS)  # each map the pass gives is a registered method's
    explanation = Explainer(model, None, model)(x, [2, 1, 0, 1])
    assert set(explanation.maps) == set(FUSED_METHODS)
    for key in FUSED_METHODS:
        method = registry.METHODS[key]
        expected = method.compute(model, x, explanation.classes[method.role], None)
        np.testing.assert_allclose(explanation.maps[key], expected, rtol=1e-4, atol=1e-6)


def test_explain_adds_the_other_methods_for_the_same_classes(small):
    model, x = small
    explanation = Explainer(model, None, model)(x, [2, 1, 0, 1])
    chosen = registry.selected("grad_cam,layer_cam,hires_cam")
    registry.explain(explanation, chosen, {"gradcam": model, "cam": model}, {"gradcam": x, "cam": x})
    assert set(explanation.maps) == {*FUSED_METHODS, "layer_cam", "hires_cam"}
    expected = registry.METHODS["hires_cam"].compute(model, x, [2, 1, 0, 1], None)
    np.testing.assert_array_equal(explanation.maps["hires_cam"], expected)
    assert explanation.seconds["hires_cam"] > 0
    merged = Explanation.concatenate([explanation, explanation])
    assert merged.maps["hires_cam"].shape[0] == 8 and merged.classes["gradcam"].tolist() == [2, 1, 0, 1] * 2


def test_explain_in_batches_equals_all_at_once_and_keeps_a_limit(small):
    """The one explain loop: batches of 3 give the maps of one pass over all four images; a method limited to 3
    images gives exactly the first 3 of them (a batch is cut at the limit, not after it)."""
    model, x = small
    models, images = {"gradcam": model, "cam": model}, {"gradcam": x, "cam": x}
    chosen = registry.selected("hires_cam,grad_cam_pp")
    whole = registry.explain(Explainer(model, None, model)(x, [2, 1, 0, 1]), chosen, models, images)
    batched = registry.explain(Explainer(model, None, model)(x, [2, 1, 0, 1]), chosen, models, images,
                               batch_size=3, limits={"grad_cam_pp": 3})
    np.testing.assert_allclose(batched.maps["hires_cam"], whole.maps["hires_cam"], rtol=1e-5, atol=1e-7)
    assert batched.maps["grad_cam_pp"].shape[0] == 3
    np.testing.assert_allclose(batched.maps["grad_cam_pp"], whole.maps["grad_cam_pp"][:3], rtol=1e-5, atol=1e-7)


def test_selected_reads_keys_all_and_the_default():
    assert [m.key for m in registry.selected(None)] == list(STUDY)
    assert [m.key for m in registry.selected("all")] == list(registry.METHODS)
    assert [m.key for m in registry.selected(" layer_cam, grad_cam ,layer_cam")] == ["layer_cam", "grad_cam"]
    with pytest.raises(ValueError, match="unknown method nope; choose from grad_cam"):
        registry.selected("grad_cam,nope")
