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
    heading: str  # a short caption for the side-by-side picture
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


def render_panels(result: ImageResult, colormap: str = "jet", opacity: float = 0.5, raw: bool = False) -> list[Panel]:
    """Grad-CAM, Guided Grad-CAM and CAM panels at the original image's size (``raw``: maps without the photo).
    Captions name the method, model, class, its probability and the map's native -> shown resolution."""
    e, image = result.explanation, result.image
    size = image.shape[:2]
    cam_map = e.cam_for([result.cam_class])[0]

    def shown(map_: np.ndarray) -> np.ndarray:
        return render.heatmap(map_, size, colormap) if raw else render.overlay(image, map_, opacity, colormap)

    def panel(method: str, loaded: LoadedModel, index: int, probabilities: np.ndarray, picture, native) -> Panel:
        grid = f"{native.shape[1]}x{native.shape[0]}"
        name, p = loaded.classes[index], probabilities[0, index]
        caption = f"{method} · {loaded.card['name']} · {name} (p={p:.2f}) · {grid} -> {size[1]}x{size[0]}"
        return Panel(method, caption, f"{method}: {name} {p:.0%}, {grid} map", picture, native)

    gradcam = (result.gradcam_model, result.gradcam_class, e.gradcam_probabilities)
    return [
        panel("Grad-CAM", *gradcam, shown(e.gradcam[0]), e.gradcam[0]),
        panel("Guided Grad-CAM", *gradcam, render.guided_image(e.guided_gradcam[0], size), e.guided_gradcam[0]),
        panel("NoPool-GAP CAM", result.cam_model, result.cam_class, e.cam_probabilities, shown(cam_map), cam_map),
    ]


def side_by_side(panels: list[Panel]) -> np.ndarray:
    """The panels in one picture, each headed by its method, class, probability and map size, for sharing."""
    return render.side_by_side([panel.image for panel in panels], [panel.heading for panel in panels])
