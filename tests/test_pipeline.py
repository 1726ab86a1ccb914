"""cam.explain.pipeline: one image through both models, with the ImageNet VGG16 wrapper built offline."""

import json

import keras
import numpy as np
import pytest

from cam.explain.methods import Explainer
from cam.explain.pipeline import explain_image, flat, render_panels, side_by_side
from cam.explain.registry import selected
from cam.models import checkpoints
from cam.models.architectures import vgg16
from cam.models.checkpoints import LoadedModel, untrained_stand_in


def test_models_of_different_input_sizes_each_get_their_own_input():
    keras.utils.set_random_seed(0)
    # A VGG16 that takes 64x64 squares only, beside a NoPool-GAP that takes any shape (trained at 32 px): both see the
    # photo's middle square, each at its own input; nothing is squashed.
    big = LoadedModel(vgg16(input_size=64), {**untrained_stand_in("vgg16").card, "input_size": 64})
    gap = untrained_stand_in("nopool_gap")
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    result = explain_image(image, Explainer(big.model, "block5_conv3_bn", gap.model), big, gap, "dog")
    assert result.view.box == (0, 15, 90, 90) and "square pictures only" in result.view.sentence()
    assert result.explanation.maps["grad_cam"].shape == (1, 4, 4) and result.explanation.cams.shape == (1, 32, 32, 4)
    assert big.classes[result.gradcam_class] == "dog" == gap.classes[result.cam_class]
    panels = render_panels(result)
    assert [panel.image.shape for panel in panels] == [(90, 90, 3)] * 3
    assert panels[0].caption.startswith("Grad-CAM on VGG16: dog, ")
    assert panels[0].caption.endswith("% — map of 4x4 cells from a 64x64 input, shown at 90x90")
    assert panels[2].caption.startswith("NoPool-GAP CAM on NoPool-GAP: dog, ")
    assert panels[2].caption.endswith("% — map of 32x32 cells from a 32x32 input, shown at 90x90")
    assert side_by_side(panels).shape[0] > 90
    chosen = selected("layer_cam,nopool_cam,gradient_x_input")
    more = render_panels(explain_image(image, Explainer(big.model, None, gap.model), big, gap, "dog", chosen))
    assert [panel.key for panel in more] == ["layer_cam", "nopool_cam", "gradient_x_input"]
    assert [panel.image.shape for panel in more] == [(90, 90, 3)] * 3
    assert more[0].caption.startswith("Layer-CAM on VGG16: dog, ") and "map of 4x4 cells" in more[0].caption
    assert "map of 64x64 cells from a 64x64 input, shown at 90x90" in more[2].caption
    # Both flexible (the stand-ins): the whole photo at its own aspect, short side 32 (their training size).
    whole = explain_image(image, Explainer(untrained_stand_in("vgg16").model, None, gap.model),
                          untrained_stand_in("vgg16"), gap)
    assert whole.view.box == (0, 0, 90, 120) and whole.view.shapes == {"gradcam": (32, 32), "cam": (32, 32)}


def test_imagenet_wrapper_maps_its_classes_to_ours(tmp_path, monkeypatch):
    """vgg16_imagenet built with random weights (no download here): 1000 classes, pre-softmax logits, and an
    explicit 'cat' explains the most probable of ImageNet's five cats while NoPool-GAP explains its 'cat'."""
    index = {str(i): [f"n{i:08d}", f"class_{i}"] for i in range(1000)}
    (tmp_path / "index.json").write_text(json.dumps(index))
    real_vgg16 = keras.applications.VGG16
    monkeypatch.setattr(keras.applications, "VGG16", lambda **kw: real_vgg16(**{**kw, "weights": None}))
    monkeypatch.setattr(keras.utils, "get_file", lambda *args, **kwargs: str(tmp_path / "index.json"))
    imagenet = checkpoints.vgg16_imagenet()
    assert len(imagenet.classes) == 1000 and imagenet.model.output_shape == (None, 1000)
    assert imagenet.model.get_layer("predictions").activation is keras.activations.linear  # logits, then softmax
    gap = untrained_stand_in("nopool_gap")
    image = np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    result = explain_image(image, Explainer(imagenet.model, "block5_conv3", gap.model), imagenet, gap, "cat")
    probabilities = result.explanation.probabilities["gradcam"][0]
    cats = checkpoints.imagenet_class_groups()["cat"]
    assert result.gradcam_class == cats[int(np.argmax(probabilities[cats]))]
    assert gap.classes[result.cam_class] == "cat"
    assert result.explanation.maps["grad_cam"].shape == (1, 14, 14)
    with pytest.raises(ValueError, match="unknown"):
        explain_image(image, Explainer(imagenet.model, "block5_conv3", gap.model), imagenet, gap, "zebra")


def test_either_model_alone_explains_the_same_class_and_notes_say_what_is_odd():
    keras.utils.set_random_seed(0)
    vgg, gap = untrained_stand_in("vgg16"), untrained_stand_in("nopool_gap")
    image = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    alone = explain_image(image, Explainer(None, None, gap.model), None, gap, "horse")
    assert [m.key for m in alone.methods] == ["nopool_cam"] and alone.class_name() == "horse"
    assert alone.roles == ["cam"] and render_panels(alone)[0].image.shape == (40, 50, 3)
    top = explain_image(image, Explainer(None, None, gap.model), None, gap)
    assert top.class_name() == top.top_predictions("cam", 1)[0][0] and top.disagreement("cam") is None
    with pytest.raises(ValueError, match="unknown"):
        explain_image(image, Explainer(None, None, gap.model), None, gap, "zebra")

    only = explain_image(image, Explainer(vgg.model), vgg, None, "cat")
    assert [m.key for m in only.methods] == ["grad_cam", "guided_grad_cam"] and only.roles == ["gradcam"]
    note = only.disagreement("gradcam")
    own, p = only.top_predictions("gradcam", 1)[0]
    if own == "cat":
        assert note is None
    else:
        assert note == (f"VGG16 thinks this is {own} ({p:.0%}); this map shows its evidence for *cat*.", own)
        assert render_panels(only)[0].note == note[0]


def test_an_empty_or_constant_map_is_said_in_words():
    assert flat(np.zeros((2, 2))) and flat(np.full((4, 4), 3.5)) and flat(np.array([[np.nan, 1.0]]))
    assert not flat(np.array([[0.0, 1e-9]])) and not flat(np.array([[1.0, 2.0]]))
    vgg, gap = untrained_stand_in("vgg16"), untrained_stand_in("nopool_gap")
    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    result = explain_image(image, Explainer(vgg.model, None, gap.model), vgg, gap, "bird")
    result.explanation.maps["grad_cam"][:] = 0.0
    result.explanation.maps["guided_grad_cam"][:] = 0.0  # Grad-CAM's zeros times Guided Backprop
    result.explanation.maps["nopool_cam"][:] = 2.0
    panels = render_panels(result)
    advice = "This happens on some photos; compare the other panels or try another class."
    assert panels[0].empty == ("This map is empty: Grad-CAM found no part of the photo that raises VGG16's score for "
                               f"*bird*. {advice}")
    assert panels[2].empty == ("This map is the same everywhere: NoPool-GAP CAM found no part of the photo that raises "
                               f"NoPool-GAP's score for *bird*. {advice}")
    assert panels[1].empty == ("This map is empty: Guided Grad-CAM found no part of the photo that raises VGG16's "
                               f"score for *bird*. {advice}")
    assert render_panels(explain_image(image, Explainer(vgg.model, None, gap.model), vgg, gap, "bird"))[1].empty == ""
    assert "Grey: no influence" in panels[1].legend and "evidence against *bird*" in panels[2].legend
