"""One image in, everything the dashboard and the command line show out: the class each model explains,
the maps of the chosen methods (``cam.registry``), and panels rendered at the image's full resolution with
captions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cam import render
from cam.images import model_input
from cam.methods import GAP_MODEL, GRADCAM_MODEL, Explainer, Explanation
from cam.models import LoadedModel
from cam.registry import Method, explain, selected


@dataclass
class Panel:
    """One rendered result at the original image's full resolution."""

    key: str  # the method's key: file names
    title: str
    caption: str
    heading: str  # a short caption for the side-by-side picture
    image: np.ndarray  # RGB uint8 (H, W, 3), H x W = the original image
    native: np.ndarray  # the map's float values at its native resolution


@dataclass
class ImageResult:
    """The explanation of one image by a Grad-CAM model and a GAP (CAM) model, for the chosen methods."""

    image: np.ndarray
    gradcam_model: LoadedModel
    cam_model: LoadedModel
    explanation: Explanation  # batch of one
    methods: list[Method] = field(default_factory=selected)

    def model(self, role: str) -> LoadedModel:
        """The model of a role (GRADCAM_MODEL or GAP_MODEL)."""
        return self.gradcam_model if role == GRADCAM_MODEL else self.cam_model

    def explained_class(self, role: str) -> int:
        """The class the maps of that role's model explain."""
        return int(self.explanation.classes[role][0])

    @property
    def gradcam_class(self) -> int:
        return self.explained_class(GRADCAM_MODEL)

    @property
    def cam_class(self) -> int:
        return self.explained_class(GAP_MODEL)

    def top_predictions(self, role: str, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable classes of the model of ``role``, with probabilities."""
        probabilities = self.explanation.probabilities[role][0]
        order = np.argsort(probabilities)[::-1][:k]
        return [(self.model(role).classes[i], float(probabilities[i])) for i in order]


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
    methods: Sequence[Method] | None = None,
) -> ImageResult:
    """Explain ``class_name`` (default: the Grad-CAM model's top prediction) with both models and the ``methods``
    (default: the study's three). One class drives both: the GAP model explains the same class when it knows it,
    else its own top prediction."""
    x = model_input(image, gradcam_model.input_size)
    cam_x = model_input(image, cam_model.input_size)
    explanation = explainer(x, cam_images=cam_x)  # top prediction first: one pass, and the probabilities
    chosen = int(explanation.classes[GRADCAM_MODEL][0])
    if class_name is not None:
        wanted = gradcam_index(gradcam_model, explanation.probabilities[GRADCAM_MODEL][0], class_name)
        if wanted != chosen:
            explanation, chosen = explainer(x, wanted, cam_x), wanted
    name = class_name or cifar4_name(gradcam_model, chosen)
    explanation.explain_cam_class([cam_model.classes.index(name)] if name in cam_model.classes else None)
    methods = list(methods or selected())
    models = {GRADCAM_MODEL: gradcam_model.model, GAP_MODEL: cam_model.model}
    explain(explanation, methods, models, {GRADCAM_MODEL: x, GAP_MODEL: cam_x}, explainer.layer)
    return ImageResult(image, gradcam_model, cam_model, explanation, methods)


def render_panels(result: ImageResult, colormap: str = "jet", opacity: float = 0.5, raw: bool = False) -> list[Panel]:
    """One panel per method of ``result``, at the original image's size (``raw``: maps without the photo).
    Captions name the method, model, class, its probability and the map's native -> shown resolution."""
    image, size = result.image, result.image.shape[:2]
    panels = []
    for method in result.methods:
        native = result.explanation.maps[method.key][0]
        if native.ndim == 3:  # a guided picture (h, w, 3)
            picture = render.guided_image(native, size)
        elif raw:
            picture = render.heatmap(native, size, colormap)
        else:
            picture = render.overlay(image, native, opacity, colormap)
        loaded, index = result.model(method.role), result.explained_class(method.role)
        grid = f"{native.shape[1]}x{native.shape[0]}"
        name, p = loaded.classes[index], result.explanation.probabilities[method.role][0, index]
        caption = f"{method.label} · {loaded.card['name']} · {name} (p={p:.2f}) · {grid} -> {size[1]}x{size[0]}"
        panels.append(Panel(method.key, method.label, caption, f"{method.label}: {name} {p:.0%}, {grid} map",
                            picture, native))
    return panels


def side_by_side(panels: list[Panel]) -> np.ndarray:
    """The panels in one picture, each headed by its method, class, probability and map size, for sharing."""
    return render.side_by_side([panel.image for panel in panels], [panel.heading for panel in panels])
