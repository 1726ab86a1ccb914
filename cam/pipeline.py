"""One image in, everything the dashboard and the command line show out: the class each model explains,
the three maps, and panels rendered at the image's full resolution with captions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cam import render
from cam.images import model_input
from cam.methods import Explainer, Explanation
from cam.models import LoadedModel


@dataclass
class Panel:
    """One rendered result at the original image's full resolution."""

    title: str
    caption: str
    image: np.ndarray  # RGB uint8 (H, W, 3), H x W = the original image
    native: np.ndarray  # the map's float values at its native resolution


@dataclass
class ImageResult:
    """The explanation of one image by a Grad-CAM model and a GAP (CAM) model, with the classes they explain."""

    image: np.ndarray
    gradcam_model: LoadedModel
    cam_model: LoadedModel
    explanation: Explanation  # batch of one
    gradcam_class: int
    cam_class: int

    def top_predictions(self, which: str, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable classes of the 'gradcam' or the 'cam' model, with probabilities."""
        loaded = self.gradcam_model if which == "gradcam" else self.cam_model
        probabilities = getattr(self.explanation, f"{which}_probabilities")[0]
        order = np.argsort(probabilities)[::-1][:k]
        return [(loaded.classes[i], float(probabilities[i])) for i in order]


def cifar4_name(loaded: LoadedModel, index: int) -> str | None:
    """The name of class ``index`` of ``loaded`` in the four-class vocabulary, via the card's class groups
    (ImageNet's many dogs are all 'dog'); None when the class has no counterpart."""
    groups = loaded.card.get("class_groups")
    if groups is None:
        return loaded.classes[index]
    return next((name for name, members in groups.items() if index in members), None)


def gradcam_index(loaded: LoadedModel, probabilities: np.ndarray, name: str) -> int:
    """The Grad-CAM model's class for ``name``: its own class of that name, or, for a model with class groups
    (ImageNet), the most probable of the group's classes."""
    if name in loaded.classes:
        return loaded.classes.index(name)
    groups = loaded.card.get("class_groups", {})
    if name not in groups:
        raise ValueError(f"class '{name}' is unknown to {loaded.card['name']}")
    members = np.asarray(groups[name])
    return int(members[probabilities[members].argmax()])


def explain_image(
    image: np.ndarray,
    explainer: Explainer,
    gradcam_model: LoadedModel,
    cam_model: LoadedModel,
    class_name: str | None = None,
) -> ImageResult:
    """Explain ``class_name`` (default: the Grad-CAM model's top prediction) with both models. One class drives
    both: the GAP model explains the same class when it knows it, else its own top prediction."""
    x = model_input(image, gradcam_model.input_size)
    cam_x = model_input(image, cam_model.input_size)
    explanation = explainer(x, cam_images=cam_x)  # top prediction first: one pass, and the probabilities
    chosen = int(explanation.gradcam_class[0])
    if class_name is not None:
        wanted = gradcam_index(gradcam_model, explanation.gradcam_probabilities[0], class_name)
        if wanted != chosen:
            explanation, chosen = explainer(x, wanted, cam_x), wanted
    name = class_name or cifar4_name(gradcam_model, chosen)
    cam_class = (
        cam_model.classes.index(name) if name in cam_model.classes else int(explanation.cam_probabilities[0].argmax())
    )
    return ImageResult(image, gradcam_model, cam_model, explanation, chosen, cam_class)


def _resolution(native: np.ndarray, image: np.ndarray) -> str:
    return f"{native.shape[1]}x{native.shape[0]} -> {image.shape[1]}x{image.shape[0]}"


def render_panels(result: ImageResult, colormap: str = "jet", opacity: float = 0.5, raw: bool = False) -> list[Panel]:
    """Grad-CAM, Guided Grad-CAM and CAM panels at the original image's size (``raw``: maps without the photo)."""
    e, image = result.explanation, result.image
    size = image.shape[:2]
    gradcam_title = result.gradcam_model.card["name"]
    gradcam_class = result.gradcam_model.classes[result.gradcam_class]
    gradcam_p = e.gradcam_probabilities[0, result.gradcam_class]
    cam_class = result.cam_model.classes[result.cam_class]
    cam_p = e.cam_probabilities[0, result.cam_class]
    cam_map = e.cam_for([result.cam_class])[0]

    def shown(map_: np.ndarray) -> np.ndarray:
        return render.heatmap(map_, size, colormap) if raw else render.overlay(image, map_, opacity, colormap)

    return [
        Panel(
            "Grad-CAM",
            f"Grad-CAM · {gradcam_title} · {gradcam_class} (p={gradcam_p:.2f}) · {_resolution(e.gradcam[0], image)}",
            shown(e.gradcam[0]),
            e.gradcam[0],
        ),
        Panel(
            "Guided Grad-CAM",
            f"Guided Grad-CAM · {gradcam_title} · {gradcam_class} (p={gradcam_p:.2f}) · "
            f"{_resolution(e.guided_gradcam[0], image)}",
            render.guided_image(e.guided_gradcam[0], size),
            e.guided_gradcam[0],
        ),
        Panel(
            "NoPool-GAP CAM",
            f"CAM · {result.cam_model.card['name']} · {cam_class} (p={cam_p:.2f}) · {_resolution(cam_map, image)}",
            shown(cam_map),
            cam_map,
        ),
    ]
