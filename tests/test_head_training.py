"""CAM's VGG head (GAP -> bias-free Dense, class-centred) and the CPU route that fits it on cached features:
Grad-CAM equals CAM up to a constant and is never blank for the top class, the fit solves its problem, and a
stopped cache continues without redoing its parts."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cam.core.catalog import checkpoint_path
from cam.core.predict import predict_probabilities
from cam.explain.methods import cam, grad_cam
from cam.models.architectures import centre_classes, nopool_gap, vgg16
from cam.models.checkpoints import load_checkpoint
from cam.train import head_training


@pytest.fixture(scope="module")
def linear_vgg():
    """VGG16 with CAM's head, random convolutions and a random class-centred head."""
    model = vgg16(num_classes=4, batch_norm=False, head="linear")
    rng = np.random.default_rng(0)
    model.get_layer("logits").set_weights([centre_classes(rng.normal(size=(512, 4)).astype("float32"))])
    return model


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_centring_a_kernel_over_classes_keeps_every_probability_and_zeroes_the_logit_sum() -> None:
    rng = np.random.default_rng(1)
    kernel, features = rng.normal(size=(6, 4)), rng.random((50, 6))
    centred = centre_classes(kernel)
    np.testing.assert_allclose(softmax(features @ centred), softmax(features @ kernel), atol=1e-12)
    np.testing.assert_allclose((features @ centred).sum(axis=1), 0.0, atol=1e-12)


def test_the_linear_head_reads_block5_conv3_without_pooling_it(linear_vgg) -> None:
    names = [layer.name for layer in linear_vgg.layers]
    assert "block5_pool" not in names and "block4_pool" in names
    assert names.index("gap") == names.index("block5_conv3") + 1
    assert not linear_vgg.get_layer("logits").use_bias


def two_images(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height).uniform(0, 255, (2, height, width, 3)).astype("float32")


@pytest.mark.parametrize("shape", [(64, 64), (64, 96)])
def test_grad_cam_is_cam_over_the_number_of_cells(linear_vgg, shape) -> None:
    """Selvaraju et al. 2017, sec. 3.1: with GAP -> Dense the Grad-CAM weights are the CAM weights / (h w)."""
    images = two_images(*shape)
    for classes in (None, np.array([2, 3])):
        gradcam, cam_maps = grad_cam(linear_vgg, images, classes, "block5_conv3"), cam(linear_vgg, images, classes)
        cells = cam_maps.shape[1] * cam_maps.shape[2]
        np.testing.assert_allclose(gradcam, np.maximum(cam_maps, 0) / cells, rtol=1e-4, atol=1e-7)


def test_the_top_class_grad_cam_is_never_blank(linear_vgg) -> None:
    """Its map's mean is the top logit, and centred logits sum to 0: the top one is positive unless all are equal."""
    images = np.concatenate([two_images(64, 64), np.full((1, 64, 64, 3), 128.0, "float32")])
    maps = grad_cam(linear_vgg, images, None, "block5_conv3")
    logits = cam(linear_vgg, images, None).mean(axis=(1, 2))
    assert np.all(logits > 0) and np.all(maps.max(axis=(1, 2)) > 0)


def test_the_cross_entropy_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(2)
    features, targets = rng.random((20, 5)), softmax(rng.normal(size=(20, 3)))
    kernel = rng.normal(size=(5, 3))
    _, gradient = head_training.cross_entropy(kernel, features, targets, 0.01)
    step = 1e-6
    for index in [(0, 0), (3, 2), (4, 1)]:
        moved = kernel.copy()
        moved[index] += step
        numeric = (head_training.cross_entropy(moved, features, targets, 0.01)[0]
                   - head_training.cross_entropy(kernel, features, targets, 0.01)[0]) / step
        assert numeric == pytest.approx(gradient[index], rel=1e-3, abs=1e-6)


def test_the_fitted_head_separates_separable_features_and_is_centred() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 400)
    features = np.abs(rng.normal(size=(400, 8))) * 100  # non-negative and large, like pooled ReLU maps
    features[np.arange(400), labels] += 300
    kernel = head_training.fit_linear_head(features, np.eye(4)[labels], l2=1e-3, scale=float(features.std()))
    assert ((features @ kernel).argmax(1) == labels).mean() > 0.95
    np.testing.assert_allclose(kernel.sum(axis=1), 0.0, atol=1e-5)


def test_a_penalty_chosen_at_the_edge_of_the_grid_is_noted() -> None:
    assert head_training.grid_edge_note(1e-4, [1e-4, 1e-3, 1e-2]) == (
        "l2 0.0001 is the smallest tried: the best may lie beyond it; try smaller ones")
    assert "largest tried" in head_training.grid_edge_note(1e-2, [1e-3, 1e-2, 1e-4])
    assert head_training.grid_edge_note(1e-3, [1e-4, 1e-3, 1e-2]) is None
    assert head_training.grid_edge_note(1e-3, [1e-3]) is None  # one value: no grid to be at the edge of


def test_the_new_model_keeps_the_trained_convolutions(linear_vgg) -> None:
    trained = vgg16(num_classes=4, batch_norm=False, head_norm=True)
    kernel = centre_classes(np.random.default_rng(4).normal(size=(512, 4)).astype("float32"))
    model = head_training.linear_head_model(trained, kernel)
    np.testing.assert_array_equal(model.get_layer("block3_conv2").get_weights()[0],
                                  trained.get_layer("block3_conv2").get_weights()[0])
    images = two_images(64, 64)
    pooled = predict_probabilities(head_training.feature_model(trained), list(images))
    np.testing.assert_allclose(predict_probabilities(model, images), softmax(pooled @ kernel), rtol=1e-4, atol=1e-6)


def test_a_nopool_gap_keeps_its_layers_and_reads_the_kernel_with_its_bias_at_zero() -> None:
    trained = nopool_gap(num_classes=3, filters=(4, 4), dilations=(1, 2))
    trained.get_layer("logits").set_weights([np.ones((256, 3), "float32"), np.array([5.0, -1.0, 2.0], "float32")])
    kernel = centre_classes(np.random.default_rng(5).normal(size=(256, 3)).astype("float32"))
    model = head_training.linear_head_model(trained, kernel)
    assert [layer.name for layer in model.layers] == [layer.name for layer in trained.layers]
    np.testing.assert_array_equal(model.get_layer("conv2").get_weights()[0],
                                  trained.get_layer("conv2").get_weights()[0])
    np.testing.assert_array_equal(model.get_layer("logits").get_weights()[1], np.zeros(3))
    images = two_images(24, 32)
    pooled = predict_probabilities(head_training.feature_model(trained, "cam_features"), list(images))
    np.testing.assert_allclose(predict_probabilities(model, images), softmax(pooled @ kernel), rtol=1e-4, atol=1e-6)


def test_head_accuracy_counts_clean_views_only_and_adds_the_bias() -> None:
    features = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    cache = {(128, 0): features, (128, 1): features[:, ::-1], (224, 0): features}  # view 1 would score 1/3
    labels, photos = np.array([0, 1, 1]), np.arange(3)
    assert head_training.head_accuracy(cache, photos, labels, np.eye(2)) == {"128": 2 / 3, "224": 2 / 3}
    # A bias large enough for class 0 makes every photo class 0.
    assert head_training.head_accuracy(cache, photos, labels, np.eye(2), np.array([5.0, 0.0]))["128"] == 1 / 3


def test_a_stopped_cache_continues_from_its_saved_parts(tmp_path: Path, monkeypatch, linear_vgg) -> None:
    paths = []
    for index, size in enumerate([(40, 30), (30, 40), (32, 32)]):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(paths[-1])
    monkeypatch.setattr(head_training, "CHUNK", 2)
    out = tmp_path / "cache"
    head_training.cache_features(linear_vgg, paths, out, [(0, 32), (1, 32)], log=lambda _: None)
    first = head_training.load_cache(out, paths)
    assert sorted(first) == [(32, 0), (32, 1)] and first[32, 0].shape == (3, 512)
    # The clean view is the photo at its own aspect, as the page feeds it.
    direct = predict_probabilities(head_training.feature_model(linear_vgg),
                                   [head_training.view(p, 32, 0, i) for i, p in enumerate(paths)])
    np.testing.assert_allclose(first[32, 0], direct, rtol=1e-5)
    seconds = head_training.cache_seconds(out)
    assert sorted(seconds) == ["size32_view0", "size32_view1"] and all(s >= 0 for s in seconds.values())
    # A run stopped after its parts: the final files are made again from the parts, no image is looked at again.
    for final in out.glob("*.npz"):
        final.unlink()
    monkeypatch.setattr(head_training, "view", lambda *args: pytest.fail("an image was computed again"))
    head_training.cache_features(linear_vgg, paths, out, [(0, 32), (1, 32)], log=lambda _: None)
    again = head_training.load_cache(out, paths)
    np.testing.assert_array_equal(again[32, 1], first[32, 1])
    # Each file knows what its parts cost when they were made, also when a later run put it together.
    assert head_training.cache_seconds(out) == seconds


shipped = checkpoint_path("vgg16_photos")


@pytest.mark.skipif(not shipped.exists(), reason="no shipped photo VGG16")
def test_on_the_shipped_vgg16_grad_cam_is_cam_up_to_a_positive_constant() -> None:
    loaded = load_checkpoint(shipped)
    if "block5_pool" in [layer.name for layer in loaded.model.layers]:
        pytest.skip("the shipped VGG16 still has the MLP head")
    images = two_images(128, 160)
    gradcam, cam_maps = grad_cam(loaded.model, images, None, "block5_conv3"), cam(loaded.model, images, None)
    np.testing.assert_allclose(gradcam, np.maximum(cam_maps, 0) / (8 * 10), rtol=1e-4, atol=1e-6)
    assert np.all(gradcam.max(axis=(1, 2)) > 0)
