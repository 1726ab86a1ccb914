"""cam.pipeline: one image through both models, with the ImageNet VGG16 wrapper built offline."""

import json

import keras
import numpy as np
import pytest

from cam import models
from cam.methods import Explainer
from cam.models import LoadedModel, untrained_stand_in, vgg16
from cam.pipeline import explain_image, render_panels, side_by_side
from cam.registry import selected


def test_models_of_different_input_sizes_each_get_their_own_input():
    keras.utils.set_random_seed(0)
    big = LoadedModel(vgg16(input_size=64), {**untrained_stand_in("vgg16").card, "input_size": 64})
    gap = untrained_stand_in("nopool_gap")
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    result = explain_image(image, Explainer(big.model, "block5_conv3_bn", gap.model), big, gap, "dog")
    assert result.explanation.maps["grad_cam"].shape == (1, 4, 4) and result.explanation.cams.shape == (1, 32, 32, 4)
    assert big.classes[result.gradcam_class] == "dog" == gap.classes[result.cam_class]
    panels = render_panels(result)
    assert [panel.image.shape for panel in panels] == [(90, 120, 3)] * 3
    assert "4x4 -> 120x90" in panels[0].caption and "32x32 -> 120x90" in panels[2].caption
    assert side_by_side(panels).shape[0] > 90
    chosen = selected("layer_cam,nopool_cam,gradient_x_input")
    more = render_panels(explain_image(image, Explainer(big.model, None, gap.model), big, gap, "dog", chosen))
    assert [panel.key for panel in more] == ["layer_cam", "nopool_cam", "gradient_x_input"]
    assert [panel.image.shape for panel in more] == [(90, 120, 3)] * 3
    assert "Layer-CAM · vgg16 · dog" in more[0].caption and "4x4 -> 120x90" in more[0].caption
    assert "64x64 -> 120x90" in more[2].caption


def test_imagenet_wrapper_maps_its_classes_to_ours(tmp_path, monkeypatch):
    """vgg16_imagenet built with random weights (no download here): 1000 classes, pre-softmax logits, and an
    explicit 'cat' explains the most probable of ImageNet's five cats while NoPool-GAP explains its 'cat'."""
    index = {str(i): [f"n{i:08d}", f"class_{i}"] for i in range(1000)}
    (tmp_path / "index.json").write_text(json.dumps(index))
    real_vgg16 = keras.applications.VGG16
    monkeypatch.setattr(keras.applications, "VGG16", lambda **kw: real_vgg16(**{**kw, "weights": None}))
    monkeypatch.setattr(keras.utils, "get_file", lambda *args, **kwargs: str(tmp_path / "index.json"))
    imagenet = models.vgg16_imagenet()
    assert len(imagenet.classes) == 1000 and imagenet.model.output_shape == (None, 1000)
    assert imagenet.model.get_layer("predictions").activation is keras.activations.linear  # logits, then softmax
    gap = untrained_stand_in("nopool_gap")
    image = np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    result = explain_image(image, Explainer(imagenet.model, "block5_conv3", gap.model), imagenet, gap, "cat")
    probabilities = result.explanation.probabilities["gradcam"][0]
    cats = models.imagenet_class_groups()["cat"]
    assert result.gradcam_class == cats[int(np.argmax(probabilities[cats]))]
    assert gap.classes[result.cam_class] == "cat"
    assert result.explanation.maps["grad_cam"].shape == (1, 14, 14)
    with pytest.raises(ValueError, match="unknown"):
        explain_image(image, Explainer(imagenet.model, "block5_conv3", gap.model), imagenet, gap, "zebra")
