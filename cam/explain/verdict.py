"""The verdict: one sentence from both networks' answers, saying whether they agree, disagree, or should not be
trusted because the photo may be none of the things they know ("not sure").

Probability alone cannot tell an unknown object from a known one here: a coffee cup can get 97%. "Not sure" therefore
asks, first, a network that knows ImageNet's 1,000 classes (``cam.models.imagenet_net.Screen``) how much of its
probability falls on our four classes: under ``SCREEN_CUT``, the picture is none of them. Then it reads our networks'
features, checked against statistics of their training photos (``FeatureStats``). Two kinds of
features: the pooled ones (the GAP layer's output, what the head sees), or the statistics of several layers
(``layer_statistics``: each channel's mean and spread over the image, on a log scale, at ``STATISTICS_LAYERS``), which
describe colour, texture and parts at every depth of the network and so also what a 4-class head has learned to
ignore. The checks: the Mahalanobis distance to the nearest class, d(f) = min_c (f - mu_c)^T S^-1 (f - mu_c) with one
covariance S shared by the classes (in its top principal directions), or the features' length (a short vector: little
of what the network reacts to). Each is scaled so that 1 is the threshold that ``QUANTILE`` of held-out training
photos pass. Which check each network gets (``CHOSEN``) was measured by ``python -m benchmarks.bench_verdict``;
``python -m cam verdict fit`` writes the statistics next to each checkpoint (``checkpoints/<name>.ood.npz``). Without a
statistics file the verdict falls back to the probability rule (``SURE_PROBABILITY``) and says so in its details.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from cam.core.catalog import checkpoint_path
from cam.core.images import own_aspect
from cam.models.checkpoints import LoadedModel
from cam.models.imagenet_net import Screen, Sighting

if TYPE_CHECKING:  # cam.explain.pipeline imports the methods (TensorFlow); only its ImageResult is named here
    from cam.explain.pipeline import ImageResult

log = logging.getLogger(__name__)
FEATURE_LAYER = "gap"  # the pooled features the head reads, in both of our architectures
# Per architecture (a card's "architecture"): the layers whose per-channel statistics make the "layers" features,
# one at the end of each stage of the network.
STATISTICS_LAYERS = {
    "vgg16": ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"),
    "nopool_gap_dilated": ("conv3_relu", "conv6_relu", "conv10_relu", "conv12_relu", "conv14_relu", "cam_features"),
    "nopool_gap": ("conv2_relu", "conv4_relu", "conv8_relu", "conv12_relu", "conv16_relu", "cam_features"),
}
LOG_OFFSET = 1e-3  # log(x + LOG_OFFSET): channel statistics span several orders of magnitude
DIMENSIONS = 16  # principal directions of the shared covariance kept by default
QUANTILE = 0.99  # share of held-out training photos that pass a check (chosen by benchmarks.bench_verdict)
SURE_PROBABILITY = 0.7  # the fallback without statistics: a network below this top probability is not sure
# "Not sure" when the 1000-class screen puts less than this share of its probability on our four classes' ImageNet
# groups (chosen by benchmarks.bench_verdict); its top class is named when it is at least NAMED_PROBABILITY.
SCREEN_CUT = 0.2
NAMED_PROBABILITY = 0.3
KNOWN = "birds, cats, dogs and horses"
STATS_SUFFIX = ".ood.npz"


def stats_path(name: str) -> Path:
    """Where the feature statistics of our model ``name`` live: next to its checkpoint."""
    return checkpoint_path(name).with_suffix(STATS_SUFFIX)


# ------------------------------------------------------------------------------------------------ features
def layer_statistics(activations: Sequence[np.ndarray]) -> np.ndarray:
    """Features (B, 2 * sum C) from activations [(B, h, w, C), ...]: per layer, each channel's log mean and log
    standard deviation over the image, log(x + LOG_OFFSET)."""
    parts = []
    for values in activations:
        values = np.asarray(values, np.float64)
        parts += [values.mean(axis=(1, 2)), values.std(axis=(1, 2))]
    return np.log(np.concatenate(parts, axis=1) + LOG_OFFSET)


class FeatureReader:
    """A model's features for images of any size, each turned into the model's input at the standard detail by
    ``cam.core.images.own_aspect``, as the explanations see it: the pooled ones (layer ``FEATURE_LAYER``), or with
    ``layers``, the ``layer_statistics`` of those layers."""

    def __init__(self, loaded: LoadedModel, layers: Sequence[str] = ()):
        import keras

        self.loaded, self.layers = loaded, tuple(layers)
        model = loaded.model
        outputs = [model.get_layer(name).output for name in self.layers or (FEATURE_LAYER,)]
        self._model = keras.Model(model.inputs, [*outputs, model.output])

    def __call__(self, images: Sequence[np.ndarray], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Features (N, K) and probabilities (N, C) of ``images`` (RGB uint8 arrays), each at its own aspect with the
        short side the model was trained at (the standard detail); images whose inputs share a shape go in one
        batch."""
        from cam.core.predict import by_shape

        inputs = [own_aspect(image, self.loaded.input_size).astype(np.float32) for image in images]
        features: list[np.ndarray | None] = [None] * len(inputs)
        probabilities = np.zeros((len(inputs), self._model.outputs[-1].shape[-1]))
        for indices in by_shape(inputs).values():
            for start in range(0, len(indices), batch_size):
                chosen = indices[start : start + batch_size]
                *outputs, probabilities[chosen] = self._model.predict_on_batch(
                    np.stack([inputs[i] for i in chosen]))
                batch = layer_statistics(outputs) if self.layers else np.asarray(outputs[0], np.float64)
                for row, index in zip(batch, chosen, strict=True):
                    features[index] = row
        return np.stack(features) if features else np.zeros((0, 0)), probabilities


# ------------------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class FeatureStats:
    """Statistics of a model's features on its training photos, and the check ``unusual`` makes with them.
    Mahalanobis: z = (f - mean) @ projection whitens the shared within-class covariance in its top principal
    directions, ``centres`` are the classes' means in z, and ``threshold`` the squared distance that QUANTILE of
    held-out photos stay under. Low norm: a photo whose feature vector is shorter than ``floor`` (what all but
    1 - QUANTILE of held-out photos exceed) gives the network little to go on. ``layers``: the features are the
    ``layer_statistics`` of these layers; empty: the pooled features."""

    mean: np.ndarray  # (K,)
    projection: np.ndarray  # (K, D)
    centres: np.ndarray  # (C, D)
    threshold: float  # inf: the distance is not checked
    classes: tuple[str, ...]
    floor: float = 0.0  # 0: the norm is not checked
    check: str = "mahalanobis"  # one of CHECKS
    layers: tuple[str, ...] = ()

    def distances(self, features: np.ndarray) -> np.ndarray:
        """min over classes of the squared Mahalanobis distance, divided by the threshold (N,): above 1 is far."""
        z = (np.atleast_2d(features) - self.mean) @ self.projection
        squared = ((z[:, None, :] - self.centres[None]) ** 2).sum(-1)
        return squared.min(axis=1) / self.threshold

    def unusual(self, features: np.ndarray) -> np.ndarray:
        """How unusual each photo's features are (N,), in units of the check's threshold: above 1 is "not sure"."""
        features = np.atleast_2d(features)
        short = self.floor / np.maximum(np.linalg.norm(features, axis=1), 1e-12)
        return np.maximum(self.distances(features), short)

    def save(self, path: Path) -> Path:
        np.savez_compressed(path, mean=self.mean.astype(np.float32), projection=self.projection.astype(np.float32),
                            centres=self.centres.astype(np.float32), threshold=self.threshold,
                            classes=np.asarray(self.classes), floor=self.floor, check=self.check,
                            layers=np.asarray(self.layers, dtype=str))
        return path

    @classmethod
    def load(cls, path: Path) -> FeatureStats:
        with np.load(path) as data:
            return cls(data["mean"].astype(np.float64), data["projection"].astype(np.float64),
                       data["centres"].astype(np.float64), float(data["threshold"]),
                       tuple(str(name) for name in data["classes"]), float(data["floor"]), str(data["check"]),
                       tuple(str(name) for name in data["layers"]) if "layers" in data else ())


CHECKS = ("mahalanobis", "low_norm", "none")
FEATURES = ("pooled", "layers")


@dataclass(frozen=True)
class Choice:
    """What "not sure" checks on one network: a check (``CHECKS``) of which features (``FEATURES``), and how many
    principal directions a Mahalanobis distance keeps."""

    check: str
    features: str = "pooled"
    dimensions: int = DIMENSIONS


# Per role (the Grad-CAM model, the GAP model), as measured by benchmarks.bench_verdict on the photo pair, together
# with the screen (SCREEN_CUT): the pooled features of a 4-class network tell few other pictures from our photos
# (VGG16's: 23% at 4% of our photos), the statistics of its layers most of them; NoPool-GAP's layers too, but their
# pass is the costliest and added little beside the screen (COST_SLACK there).
CHOSEN = (Choice("mahalanobis", "layers", 16), Choice("none"))


def fit_stats(features: np.ndarray, labels: np.ndarray, classes: Sequence[str], held_out: np.ndarray,
              dimensions: int = DIMENSIONS, quantile: float = QUANTILE, check: str = "mahalanobis",
              layers: Sequence[str] = ()) -> FeatureStats:
    """Statistics of training ``features`` (N, K) with class ``labels`` (N,); the threshold of ``check`` is set by the
    ``quantile`` of ``held_out`` features (M, K) of other photos: their distances (mahalanobis) or, from below,
    their norms (low_norm); "none" never calls a photo unusual. ``layers``: those the features came from (see
    ``FeatureStats``)."""
    if check not in CHECKS:
        raise ValueError(f"unknown check {check!r}; choose from {', '.join(CHECKS)}")
    mean = features.mean(axis=0)
    means = np.stack([features[labels == c].mean(axis=0) for c in range(len(classes))])
    within = features - means[labels]
    covariance = within.T @ within / len(features)
    values, vectors = np.linalg.eigh(covariance)  # ascending
    keep = np.argsort(values)[::-1][: min(dimensions, len(values))]
    projection = vectors[:, keep] / np.sqrt(np.maximum(values[keep], 1e-12 * values.max()))
    centres = (means - mean) @ projection
    unscaled = FeatureStats(mean, projection, centres, 1.0, tuple(classes))
    threshold = float(np.quantile(unscaled.distances(held_out), quantile)) if check == "mahalanobis" else np.inf
    floor = float(np.quantile(np.linalg.norm(held_out, axis=1), 1 - quantile)) if check == "low_norm" else 0.0
    return FeatureStats(mean, projection, centres, threshold, tuple(classes), floor, check, tuple(layers))


def training_sample(root: str | Path, n: int, held_out: int, seed: int = 0
                    ) -> tuple[list[Path], np.ndarray, list[Path], list[str]]:
    """A seeded sample of ``root``/train: ``n`` photos (paths, labels) to fit on, ``held_out`` others to set the
    threshold with, and the class names."""
    from cam.data.folders import list_classes, list_images

    classes = list_classes(root, "train")
    paths, labels = list_images(root, "train", classes)
    order = np.random.default_rng(seed).permutation(len(paths))
    fit, rest = order[:n], order[n : n + held_out]
    return [paths[i] for i in fit], labels[fit], [paths[i] for i in rest], classes


def statistics_layers(loaded: LoadedModel, features: str) -> tuple[str, ...]:
    """The layers whose statistics ``features`` ("layers") reads in ``loaded``; () for the pooled features."""
    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; choose from {', '.join(FEATURES)}")
    if features == "pooled":
        return ()
    architecture = loaded.card.get("architecture")
    if architecture not in STATISTICS_LAYERS:
        raise ValueError(f"no statistics layers are known for the architecture {architecture!r}")
    return STATISTICS_LAYERS[architecture]


def fit_model(loaded: LoadedModel, root: str | Path, n: int = 1200, held_out: int = 400, seed: int = 0,
              choice: Choice = Choice("mahalanobis")) -> FeatureStats:
    """The statistics of ``loaded`` for ``choice`` on a seeded sample of ``root``/train (see ``training_sample``)."""
    from cam.core.images import load_image

    fit_paths, labels, held_paths, classes = training_sample(root, n, held_out, seed)
    if list(classes) != loaded.classes:
        raise ValueError(f"the dataset's classes {classes} are not the model's {loaded.classes}")
    layers = statistics_layers(loaded, choice.features)
    read = FeatureReader(loaded, layers)
    features, _ = read([load_image(path) for path in fit_paths])
    held, _ = read([load_image(path) for path in held_paths])
    return fit_stats(features, labels, classes, held, choice.dimensions, check=choice.check, layers=layers)


def load_stats(name: str) -> FeatureStats | None:
    """The statistics of model ``name``, or None when there is no usable file (logged; the verdict falls back)."""
    path = stats_path(name)
    if not path.is_file():
        return None
    try:
        return FeatureStats.load(path)
    except (OSError, ValueError, KeyError) as error:
        log.warning("feature statistics %s unusable (%s: %s); the verdict uses probabilities only", path,
                    type(error).__name__, error)
        return None


# ------------------------------------------------------------------------------------------------ the verdict
@dataclass(frozen=True)
class Answer:
    """One network's answer: its name for people, its top class in our four-class vocabulary (None: a class
    outside it, e.g. one of ImageNet's), that class's probability, and how unusual its features are (1 = the
    threshold; None: no statistics) by which check (``CHECKS``)."""

    network: str
    class_name: str | None
    probability: float
    distance: float | None = None
    check: str = "mahalanobis"


@dataclass(frozen=True)
class Verdict:
    kind: str  # "agree", "disagree" or "not sure"
    sentence: str  # Markdown, one sentence
    detail: str  # the rule and the numbers behind it, for the technical details


def screen_words(sighting: Sighting) -> tuple[bool, str, str]:
    """Whether the screen's ``sighting`` makes a picture "not sure", the reason in plain words, and its numbers."""
    unsure = sighting.share < SCREEN_CUT
    named = sighting.top_probability >= NAMED_PROBABILITY and not sighting.top_is_ours
    seen = (f"*{sighting.top_name}* here ({sighting.top_probability:.0%})" if named
            else "no bird, cat, dog or horse here")
    why = f"a network that knows 1,000 kinds of things sees {seen}"
    detail = (f"1000-class screen (EfficientNet-Lite0, ImageNet): {sighting.share:.0%} of its probability on our "
              f"classes' ImageNet groups (not sure under {SCREEN_CUT:.0%}); its top class {sighting.top_name} "
              f"{sighting.top_probability:.0%}")
    return unsure, why, detail


def verdict(answers: Sequence[Answer], sighting: Sighting | None = None) -> Verdict:
    """One sentence from the networks' answers and the 1000-class screen's ``sighting`` (None: not asked). "Not
    sure" when the screen puts under SCREEN_CUT of its probability on our classes, when a network's features are
    far from every class of its training photos (distance above 1), or, for a network without statistics, when its
    top probability is under SURE_PROBABILITY, or when its top class is none of ours; else they agree or disagree."""
    if not answers:
        raise ValueError("a verdict needs at least one network's answer")
    said = {"mahalanobis": "distance of its features to the training photos' classes",
            "low_norm": "shortness of its feature vector", "none": "features not checked"}

    def numbers(a: Answer) -> str:
        if a.distance is None:
            return f"no feature statistics, so the probability rule (under {SURE_PROBABILITY:.0%} is not sure)"
        if a.check == "none":
            return "features not checked (they did not tell other pictures from ours when measured)"
        return f"{said[a.check]} {a.distance:.2f} of the threshold"

    unsure = [a for a in answers if a.class_name is None
              or (a.distance > 1.0 if a.distance is not None else a.probability < SURE_PROBABILITY)]
    rule = (f"Not sure when a network's features are more unusual than those of {QUANTILE:.0%} of held-out "
            "training photos" if all(a.distance is not None for a in answers) else
            "Feature statistics missing for some network; the probability rule is used for it")
    screened, screen_why, screen_detail = screen_words(sighting) if sighting else (False, "", "")
    detail = f"{rule}. " + "; ".join(
        f"{a.network}: {a.class_name or 'another class'} {a.probability:.0%}, {numbers(a)}" for a in answers) + "."
    if sighting:
        detail += f" {screen_detail[0].upper()}{screen_detail[1:]}."
    if screened or unsure:
        # The screen says most (what the picture shows); far features more than low confidence: a network can be
        # 98% sure of a picture unlike its photos.
        far = [a for a in unsure if a.distance is not None and a.distance > 1.0]
        if screened:
            why, ours = screen_why, "ours"
        elif far:
            whose = far[0].network if len(far) == 1 < len(answers) else "the networks"
            why, ours = f"this picture looks unlike the photos {whose} learned from", "they"
        else:
            why = ("neither network is confident" if len(unsure) == len(answers) > 1
                   else f"{' and '.join(a.network for a in unsure)} is not confident")
            ours = "they"
        return Verdict("not sure", f"**Not sure**: {why}; {ours} know only {KNOWN}.", detail)
    names = list(dict.fromkeys(a.class_name for a in answers))
    if len(names) == 1:
        shares = ", ".join(f"{a.network} {a.probability:.0%}" for a in answers)
        subject = "Both networks say" if len(answers) > 1 else f"{answers[0].network} says"
        return Verdict("agree", f"{subject} **{names[0]}** ({shares}).", detail)
    says = ", ".join(f"{a.network} says {a.class_name}" for a in answers)
    return Verdict("disagree", f"The networks disagree: {says}.", detail)


class Judge:
    """The verdict on images explained by a pair of models (``cam.explain.pipeline.ImageResult``): asks the 1000-class
    ``screen`` (by default the shipped one, when its checkpoint is there; None: not asked), and reads each model's
    features when it has statistics (one extra forward pass each), else uses its probabilities."""

    def __init__(self, models: Sequence[LoadedModel], screen: Screen | Literal["shipped"] | None = "shipped"):
        self.screen = Screen.load() if screen == "shipped" else screen
        self.parts: dict[str, tuple[FeatureReader, FeatureStats] | None] = {}
        for loaded in models:
            name = loaded.card["name"]
            stats = load_stats(name) if loaded.trained else None
            if stats is not None and stats.classes != tuple(loaded.classes):
                log.warning("feature statistics of %s are for classes %s; ignored", name, stats.classes)
                stats = None
            try:
                self.parts[name] = None if stats is None else (FeatureReader(loaded, stats.layers), stats)
            except ValueError as error:  # a layer the network lacks
                log.warning("feature statistics of %s unusable (%s); the verdict uses probabilities only", name, error)
                self.parts[name] = None

    def answers(self, result: ImageResult) -> list[Answer]:
        """Each model's answer on ``result``'s image: its top class (four-class name), probability, distance."""
        from cam.explain.pipeline import cifar4_name, model_name

        answers = []
        for role in result.roles:
            loaded = result.model(role)
            probabilities = result.explanation.probabilities[role][0]
            top = int(probabilities.argmax())
            part = self.parts.get(loaded.card["name"])
            distance, check = None, "mahalanobis"
            if part is not None:
                reader, stats = part
                check, distance = stats.check, 0.0
                if check != "none":
                    # The Explainer's pass gave the GAP model's pooled features already, at the standard detail; at
                    # another detail, for the other model, or for layer statistics, a pass at the size the statistics
                    # were fitted at.
                    pooled = result.explanation.pooled.get(role)
                    standard = result.view is None or result.view.short_side == loaded.input_size
                    given = pooled is not None and standard and not stats.layers
                    features = pooled[0] if given else reader([result.image])[0][0]
                    distance = float(stats.unusual(features)[0])
            answers.append(Answer(model_name(loaded), cifar4_name(loaded, top), float(probabilities[top]), distance,
                                  check))
        return answers

    def __call__(self, result: ImageResult) -> Verdict:
        sighting = self.screen.look([result.image])[0] if self.screen is not None else None
        return verdict(self.answers(result), sighting)
