"""One image in, everything the dashboard and the command line show out: the class each model explains,
the maps of the chosen methods (``cam.explain.registry``), and panels rendered at the image's full resolution with
captions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from cam.core.catalog import GRAD_CAM, GUIDED_GRAD_CAM, REGISTRY, Role
from cam.core.images import crop, input_shape, model_input, view_box
from cam.explain import render
from cam.explain.methods import Explainer, Explanation
from cam.explain.registry import METHODS, Method, explain, selected
from cam.models.checkpoints import LoadedModel


@dataclass
class Panel:
    """One rendered result at the original image's full resolution, with its text in plain words."""

    key: str  # the method's key: file names
    title: str  # the method's label
    caption: str  # e.g. "Grad-CAM on VGG16: cat, 72% — map of 2x2 cells, shown at 512x600"
    heading: str  # a short caption for the side-by-side picture
    image: np.ndarray  # RGB uint8 (H, W, 3), H x W = the original image
    native: np.ndarray  # the map's float values at its native resolution
    legend: str = ""  # how to read its colours
    empty: str = ""  # a sentence when the map is empty or the same everywhere
    note: str = ""  # a sentence when its model's own top prediction is another class


@dataclass(frozen=True)
class PhotoView:
    """How a photo is shown to the networks: the part they see (``cam.core.images.view_box``: all of it up to 2:1) and
    each model role's input shape (h, w), the photo's own aspect at short side ``short_side``, or the square a
    fixed-size network takes (then the part seen is the middle square, so nothing is squashed)."""

    photo_shape: tuple[int, int]
    box: tuple[int, int, int, int]  # (top, left, height, width) of the part seen
    shapes: dict[str, tuple[int, int]]
    short_side: int
    square: bool = False  # a network takes squares only (Keras's ImageNet VGG16)

    @property
    def cropped(self) -> bool:
        return self.box[2:] != self.photo_shape

    def sentence(self) -> str:
        """What the networks saw, in words: empty for a whole photo."""
        if not self.cropped:
            return ""
        height, width = self.photo_shape
        why = "a network here takes square pictures only" if self.square else "it is too long and thin to look at whole"
        return (f"This photo is {width}x{height} pixels and {why}: the networks saw its middle {self.box[3]}x"
                f"{self.box[2]} part, which the panels show.")


def trained_size(gradcam_model: LoadedModel | None, cam_model: LoadedModel | None) -> int:
    """The short side the flexible networks of a pair were trained at (the first one's; the first model's when
    neither is flexible): the standard detail level, from which ``cam.core.images.detail_sizes`` counts."""
    here = [loaded for loaded in (gradcam_model, cam_model) if loaded]
    return next((loaded for loaded in here if loaded.flexible), here[0]).input_size


def photo_view(
    photo_shape: tuple[int, int], gradcam_model: LoadedModel | None, cam_model: LoadedModel | None,
    short_side: int | None = None,
) -> PhotoView:
    """The PhotoView of a ``photo_shape`` (h, w) photo for these models; ``short_side`` default: ``trained_size``."""
    here = {role: loaded for role, loaded in ((Role.GRADCAM, gradcam_model), (Role.GAP, cam_model)) if loaded}
    short_side = short_side or trained_size(gradcam_model, cam_model)
    square = not all(loaded.flexible for loaded in here.values())
    box = view_box(*photo_shape, max_aspect=1.0) if square else view_box(*photo_shape)
    shape = input_shape(*box[2:], short_side)
    shapes = {role: shape if loaded.flexible else (loaded.input_size,) * 2 for role, loaded in here.items()}
    return PhotoView(tuple(photo_shape), box, shapes, short_side, square)


@dataclass
class ImageResult:
    """The explanation of one image by a Grad-CAM model and a GAP (CAM) model, for the chosen methods; either model
    may be missing (None), and then so are its methods."""

    image: np.ndarray
    gradcam_model: LoadedModel | None
    cam_model: LoadedModel | None
    explanation: Explanation  # batch of one
    methods: list[Method] = field(default_factory=selected)
    view: PhotoView | None = None  # how the photo was shown to the networks (``image`` is the part they saw)

    def model(self, role: Role) -> LoadedModel | None:
        """The model of ``role``."""
        return self.gradcam_model if role == Role.GRADCAM else self.cam_model

    @property
    def roles(self) -> list[Role]:
        """The roles whose model is here."""
        return [role for role in (Role.GRADCAM, Role.GAP) if self.model(role) is not None]

    def input_shape(self, role: Role) -> tuple[int, int] | None:
        """The (h, w) that ``role``'s network got, when known."""
        return self.view.shapes.get(role) if self.view else None

    def explained_class(self, role: Role) -> int:
        """The class the maps of that role's model explain."""
        return int(self.explanation.classes[role][0])

    @property
    def gradcam_class(self) -> int:
        return self.explained_class(Role.GRADCAM)

    @property
    def cam_class(self) -> int:
        return self.explained_class(Role.GAP)

    def class_name(self, role: Role | None = None) -> str:
        """The name of the class explained by ``role``'s model (default: the first model here)."""
        role = role or self.roles[0]
        return self.model(role).classes[self.explained_class(role)]

    def top_predictions(self, role: Role, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable classes of the model of ``role``, with probabilities."""
        probabilities = self.explanation.probabilities[role][0]
        order = np.argsort(probabilities)[::-1][:k]
        return [(self.model(role).classes[i], float(probabilities[i])) for i in order]

    def disagreement(self, role: Role) -> tuple[str, str] | None:
        """When ``role``'s model thinks the image is another class than the one its maps explain: one sentence
        saying so, and that class's name (to explain it instead); else None."""
        loaded, probabilities = self.model(role), self.explanation.probabilities[role][0]
        top, explained = int(probabilities.argmax()), self.explained_class(role)
        if top == explained:
            return None
        name = model_name(loaded)
        sentence = (f"{name} thinks this is {loaded.classes[top]} ({probabilities[top]:.0%}); this map shows its "
                    f"evidence for *{loaded.classes[explained]}*.")
        return sentence, cifar4_name(loaded, top) or loaded.classes[top]


def model_name(loaded: LoadedModel) -> str:
    """A model's short name for people: 'VGG16', 'NoPool-GAP' (its registry title without the details)."""
    spec = REGISTRY.get(loaded.card["name"])
    return spec.title.split(" (")[0] if spec else loaded.card["name"]


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


def model_inputs(image: np.ndarray, view: PhotoView) -> dict[str, np.ndarray]:
    """Per model role of ``view``, the photo as that network gets it: a batch of one, float RGB 0..255."""
    seen = crop(image, view.box)
    return {role: model_input(seen, shape) for role, shape in view.shapes.items()}


def explain_image(
    image: np.ndarray,
    explainer: Explainer,
    gradcam_model: LoadedModel | None,
    cam_model: LoadedModel | None,
    class_name: str | None = None,
    methods: Sequence[Method] | None = None,
    short_side: int | None = None,
) -> ImageResult:
    """Explain ``class_name`` (default: the Grad-CAM model's top prediction, or the GAP model's without a Grad-CAM
    model) with the models given and the ``methods`` of those models (default: the study's three), the photo at its
    own aspect ratio with short side ``short_side`` (``photo_view``). One class drives both: the GAP model explains
    the same class when it knows it, else its own top prediction. The result's image is the part the networks saw."""
    view = photo_view(image.shape[:2], gradcam_model, cam_model, short_side)
    inputs = model_inputs(image, view)
    x, cam_x = inputs.get(Role.GRADCAM), inputs.get(Role.GAP)
    explanation = explainer(x, cam_images=cam_x)  # top prediction first: one pass, and the probabilities
    name = class_name
    if gradcam_model is not None:
        chosen = int(explanation.classes[Role.GRADCAM][0])
        if class_name is not None:
            wanted = gradcam_index(gradcam_model, explanation.probabilities[Role.GRADCAM][0], class_name)
            if wanted != chosen:
                explanation, chosen = explainer(x, wanted, cam_x), wanted
        name = class_name or cifar4_name(gradcam_model, chosen)
    if cam_model is not None:
        if gradcam_model is None and name is not None and name not in cam_model.classes:
            raise ValueError(f"class '{name}' is unknown to {cam_model.card['name']}")
        explanation.explain_cam_class([cam_model.classes.index(name)] if name in cam_model.classes else None)
    here = {Role.GRADCAM: gradcam_model, Role.GAP: cam_model}
    methods = [method for method in (methods or selected()) if here[method.role] is not None]
    models = {role: loaded.model for role, loaded in here.items() if loaded is not None}
    explain(explanation, methods, models, {Role.GRADCAM: x, Role.GAP: cam_x}, explainer.layer)
    return ImageResult(crop(image, view.box), gradcam_model, cam_model, explanation, methods, view)


def flat(native: np.ndarray) -> bool:
    """Whether a map says nothing: all zero, the same value everywhere, or not finite."""
    values = np.asarray(native, dtype=np.float64)
    if not np.isfinite(values).all():
        return True
    scale = float(np.abs(values).max())
    return scale == 0.0 or float(np.ptp(values)) <= 1e-6 * scale


def legend(method: Method, class_name: str, guided: bool) -> str:
    """How to read a panel's colours, in one line."""
    if guided:
        return (f"Grey: no influence. The more a pixel stands out in colour or brightness, the more it pushed "
                f"the decision for *{class_name}*.")
    if method.non_negative:
        return f"Left colour of the strip: no evidence for *{class_name}*; right colour: the strongest evidence."
    return f"Left colour of the strip: evidence against *{class_name}*; right colour: the strongest evidence for it."


def render_panels(result: ImageResult, colormap: str = "jet", opacity: float = 0.5, raw: bool = False) -> list[Panel]:
    """One panel per method of ``result``, at the original image's size (``raw``: maps without the photo).
    Captions say in words the method, model, class, its probability and the map's native and shown sizes."""
    image, size = result.image, result.image.shape[:2]
    panels = []
    for method in result.methods:
        native = result.explanation.maps[method.key][0]
        guided = native.ndim == 3  # a guided picture (h, w, 3)
        if guided:
            picture = render.guided_image(native, size)
        elif raw:
            picture = render.heatmap(native, size, colormap)
        else:
            picture = render.overlay(image, native, opacity, colormap)
        loaded, index = result.model(method.role), result.explained_class(method.role)
        name, model = loaded.classes[index], model_name(loaded)
        p = result.explanation.probabilities[method.role][0, index]
        grid = f"{native.shape[1]}x{native.shape[0]}"
        seen = f" from a {shape[1]}x{shape[0]} input" if (shape := result.input_shape(method.role)) else ""
        caption = (f"{method.label} on {model}: {name}, {p:.0%} — map of {grid} cells{seen}, "
                   f"shown at {size[1]}x{size[0]}")
        # Said of the method, not the network: the network may be sure of the class while the method's map is 0.
        empty = (f"This map is {'empty' if not np.abs(native).max() else 'the same everywhere'}: {method.label} "
                 f"found no part of the photo that raises {model}'s score for *{name}*. This happens on some photos; "
                 "compare the other panels or try another class." if flat(native) else "")
        other = result.disagreement(method.role)
        panels.append(Panel(method.key, method.label, caption, f"{method.label}: {name} {p:.0%}, {grid} map",
                            picture, native, legend(method, name, guided), empty, other[0] if other else ""))
    return panels


def side_by_side(panels: list[Panel]) -> np.ndarray:
    """The panels in one picture, each headed by its method, class, probability and map size, for sharing."""
    return render.side_by_side([panel.image for panel in panels], [panel.heading for panel in panels])


def add_fallback(result: ImageResult, key: str, layer: str | None = None) -> bool:
    """When Grad-CAM's map of ``result`` says nothing (``flat``), add the map of method ``key`` (same model and
    class, on Grad-CAM's ``layer``; None: the card's) to its explanation, for ``with_fallback``; returns whether
    it is there and says something. Grad-CAM averages each channel's gradient first, so opposite signs can cancel
    to an empty map; Layer-CAM weighs every cell by its own positive gradient and is rarely empty on the same
    layer."""
    maps = result.explanation.maps
    if GRAD_CAM not in maps or not flat(maps[GRAD_CAM][0]):
        return False
    if key not in maps:
        method, loaded = METHODS[key], result.model(METHODS[key].role)
        x = model_input(result.image, result.input_shape(method.role) or loaded.input_size)
        explain(result.explanation, [method], {method.role: loaded.model}, {method.role: x}, layer)
    return not flat(maps[key][0])


def with_fallback(result: ImageResult, key: str, colormap: str = "jet", opacity: float = 0.5,
                  raw: bool = False) -> list[Panel]:
    """``render_panels``, with Grad-CAM's panel replaced, where its map is empty, by the panel of method ``key``
    (added to the explanation by ``add_fallback``) when that one says something, titled and noted as standing in
    for Grad-CAM (Grad-CAM's own panel is not rendered then). As ``render_panels`` when ``key`` is among the
    result's own methods (its panel is there already)."""
    maps = result.explanation.maps
    if (key in {method.key for method in result.methods} or key not in maps or flat(maps[key][0])
            or GRAD_CAM not in maps or not flat(maps[GRAD_CAM][0])):
        return render_panels(result, colormap, opacity, raw)
    method = METHODS[key]
    model = model_name(result.model(method.role))
    shown = [method if other.key == GRAD_CAM else other for other in result.methods]
    # Guided Grad-CAM is Grad-CAM's map times pixel detail, so it is empty too: say why, and point at the stand-in.
    guided_empty = (f"This map is empty because Grad-CAM's is: Guided Grad-CAM multiplies Grad-CAM's map by pixel "
                    f"detail. {method.label}, beside it, shows where {model} looks.")
    note = (f"Grad-CAM's map is empty for this photo: the influences on {model}'s score cancel out when averaged. "
            f"Shown in its place: {method.label} on the same layer, which keeps each part's own positive influence.")
    return [replace(panel, title=f"{method.label} (Grad-CAM found nothing)", note=note) if panel.key == key
            else replace(panel, empty=guided_empty) if panel.key == GUIDED_GRAD_CAM and panel.empty
            else panel for panel in render_panels(replace(result, methods=shown), colormap, opacity, raw)]
