"""The saliency methods the tool offers, in one place: the command line, the report, the dashboard and the tests
loop over ``METHODS``. Adding a method is one function (``cam.explain.methods``) plus one ``register(Method(...))``
here.

Each method explains one of two models (``role``): the Grad-CAM model (VGG16) or the GAP model (NoPool-GAP).
Its ``compute(model, images, classes, layer)`` returns a batch of maps at their native resolution, (B, h, w), or
(B, H, W, 3) for a guided picture; ``layer`` is the Grad-CAM model's chosen layer (None: the card's layer).
The Explainer's one compiled pass gives the ``fused`` ones; ``explain`` computes the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import keras
import numpy as np

from cam.core.catalog import GRAD_CAM, GUIDED_GRAD_CAM, LAYER_CAM, NOPOOL_CAM, STUDY, Role
from cam.explain import methods
from cam.explain.methods import Explanation

Compute = Callable[[keras.Model, np.ndarray, np.ndarray, "str | None"], np.ndarray]


@dataclass(frozen=True)
class Method:
    """One saliency method: its key (file names, options), its label and a sentence for people, the model role it
    explains, the layers it reads and the function that computes a batch of maps."""

    key: str
    label: str
    role: Role
    compute: Compute
    reads: Callable[[keras.Model, str | None], list[str]]  # (model, chosen layer) -> the layers it reads
    summary: str  # one plain sentence for the dashboard
    non_negative: bool = True  # False: signed maps (negative = evidence against)
    slow: bool = False  # many forward passes per map: the report scores it on fewer images

    @property
    def fused(self) -> bool:
        """Given by the Explainer's one pass (``cam.explain.methods.FUSED_METHODS``)."""
        return self.key in methods.FUSED_METHODS


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to ``METHODS`` (replacing one with the same key); returns it."""
    METHODS[method.key] = method
    return method


def selected(keys: str | Iterable[str] | None = None) -> list[Method]:
    """The methods named by ``keys``: comma-separated text or a list of keys, "all" for every method, None for
    the study's three. Raises ValueError naming the known keys for an unknown one."""
    if keys is None:
        keys = STUDY
    if isinstance(keys, str):
        keys = list(METHODS) if keys.strip() == "all" else [key.strip() for key in keys.split(",") if key.strip()]
    unknown = [key for key in keys if key not in METHODS]
    if unknown or not keys:
        raise ValueError(f"unknown method {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)} "
                         "or all")
    return [METHODS[key] for key in dict.fromkeys(keys)]


def explain(
    explanation: Explanation, chosen: Iterable[Method], models: dict[str, keras.Model], images: dict[str, np.ndarray],
    layer: str | None = None, batch_size: int | None = None, limits: dict[str, int] | None = None,
) -> Explanation:
    """Add the maps of the ``chosen`` methods the Explainer did not give, each explaining the class that
    ``explanation`` holds for its role; ``models`` and ``images`` per role. The one explain loop of the page (a
    batch of one), the batch job and the report: ``batch_size`` images at a time (default all), and a method in
    ``limits`` only for the first ``limits[key]`` images (the report's Score-CAM). Returns ``explanation``."""
    for method in chosen:
        if method.key in explanation.maps:
            continue
        started = time.perf_counter()
        x, classes = images[method.role], explanation.classes[method.role]
        count = min(len(x), (limits or {}).get(method.key, len(x)))
        step = batch_size or max(count, 1)
        own_layer = layer if method.role == Role.GRADCAM else None
        bounds = [(start, min(start + step, count)) for start in range(0, count, step)]
        parts = [method.compute(models[method.role], x[a:b], classes[a:b], own_layer) for a, b in bounds]
        explanation.maps[method.key] = np.concatenate(parts) if parts else np.zeros((0, 0, 0), np.float32)
        explanation.seconds[method.key] = time.perf_counter() - started
    return explanation


def _one_layer(model: keras.Model, layer: str | None) -> list[str]:
    return [methods.layer_or_default(model, layer)]


def _gap_source(model: keras.Model, layer: str | None) -> list[str]:
    return [methods.gap_head(model)[0].name]


for _method in (
    Method(GRAD_CAM, "Grad-CAM", Role.GRADCAM, methods.grad_cam, _one_layer,
           "Regions that raised VGG16's score for the class, on one of its last layers (a small, blurry map)."),
    Method(GUIDED_GRAD_CAM, "Guided Grad-CAM", Role.GRADCAM, methods.guided_grad_cam, _one_layer,
           "Pixel-level edges inside the Grad-CAM region that pushed the decision.", non_negative=False),
    Method(NOPOOL_CAM, "NoPool-GAP CAM", Role.GAP, lambda model, x, c, layer: methods.cam(model, x, c),
           _gap_source, "A network built never to shrink the image: its map has the full input resolution.",
           non_negative=False),
    Method("grad_cam_pp", "Grad-CAM++", Role.GRADCAM, methods.grad_cam_pp, _one_layer,
           "Grad-CAM that weighs each position's positive influence, so several objects of a class all show."),
    Method("hires_cam", "HiResCAM", Role.GRADCAM, methods.hires_cam, _one_layer,
           "Grad-CAM without averaging: each position keeps its own influence, so the map follows the model "
           "exactly; blue is evidence against.", non_negative=False),
    Method(LAYER_CAM, "Layer-CAM", Role.GRADCAM, methods.layer_cam, _one_layer,
           "Each position weighed by its own positive influence; works on earlier, sharper layers too."),
    Method("layer_cam_fused", "Layer-CAM, 3 layers fused", Role.GRADCAM,
           lambda model, x, c, layer: methods.layer_cam_fused(model, x, c),
           lambda model, layer: methods.stage_layers(model),
           "Layer-CAM of three layers of VGG16, from sharp to coarse, combined: sharper without retraining."),
    Method("score_cam", "Score-CAM", Role.GRADCAM, methods.score_cam, _one_layer,
           "Shows VGG16 the photo through each of its feature maps and weighs the map by the score it gets; "
           "no gradients, but hundreds of passes (slow).", slow=True),
    Method("gradient_x_input", "Gradient x input", Role.GRADCAM,
           lambda model, x, c, layer: methods.gradient_x_input(model, x, c), lambda model, layer: ["input"],
           "Each pixel's value times its influence on the score: full resolution, noisy; for reference.",
           non_negative=False),
):
    register(_method)
