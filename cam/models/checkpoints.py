"""Checkpoints and their model cards: save, read and check, load; the models ``cam.core.catalog`` offers, loaded
by name (``load_model``), with untrained stand-ins where a checkpoint is missing; and what a card says, in words."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from cam.core.catalog import (
    CHECKPOINTS,
    CIFAR4_CLASSES,
    IMAGENET_VGG16,
    REGISTRY,
    ModelSet,
    checkpoint_path,
    keras_cache_dir,
)
from cam.models.architectures import (
    ARCHITECTURES,
    IMAGENET_TO_CIFAR4,
    any_input_size,
    caffe_preprocessing,
    default_gradcam_layer,
    download_or_explain,
)
from cam.models.errors import CheckpointError, WeightsUnavailable

CARD_KEYS = ("name", "architecture", "classes", "input_size", "preprocessing", "gradcam_layer", "training", "metrics")


VGG16_IMAGENET_FILES = ("vgg16_weights_tf_dim_ordering_tf_kernels.h5", "imagenet_class_index.json")


VGG16_IMAGENET_URLS = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/",
                       "https://storage.googleapis.com/download.tensorflow.org/data/")


VGG16_IMAGENET_MD5 = "64373286793e3c8b2b4e3219cbf3544b"  # of the weights file, as keras.applications checks it




class CardError(CheckpointError):
    """A model card with a missing or unusable entry; ``entry`` names the first one."""

    def __init__(self, message: str, entry: str) -> None:
        super().__init__(message)
        self.entry = entry


def _is_name(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


# What each entry of a card must be (checked by read_card): the dashboard and the command line read them unguarded.
CARD_CHECKS: dict[str, Callable[[object], bool]] = {
    "name": _is_name,
    "architecture": _is_name,
    "classes": lambda value: isinstance(value, list) and len(value) > 1 and all(_is_name(v) for v in value),
    "input_size": lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= 8,
    "preprocessing": lambda value: isinstance(value, str),
    "gradcam_layer": _is_name,
    "training": lambda value: isinstance(value, dict),
    "metrics": lambda value: isinstance(value, dict),
}


# The entries of a card in words, for the sentence a visitor reads when one is wrong.
CARD_FIELDS_IN_WORDS = {
    "name": "its name", "architecture": "its architecture", "classes": "its list of classes",
    "input_size": "its input size", "preprocessing": "its preprocessing", "gradcam_layer": "the layer Grad-CAM reads",
    "training": "how it was trained", "metrics": "its test results",
}


def imagenet_class_groups() -> dict[str, list[int]]:
    """For each of our classes, the ImageNet class indices that belong to it."""
    return {name: [i for lo, hi in ranges for i in range(lo, hi + 1)] for name, ranges in IMAGENET_TO_CIFAR4.items()}


@dataclass
class LoadedModel:
    """A Keras model and its card (a dict; see ``CARD_KEYS``). ``trained`` is False for a random stand-in."""

    model: keras.Model
    card: dict
    trained: bool = True
    note: str = ""

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def input_size(self) -> int:
        """The short side the network was trained at (the default input; ``flexible`` networks take any size)."""
        return int(self.card["input_size"])

    @property
    def flexible(self) -> bool:
        """Whether the network takes any height and width (convolutions and GAP); else only its square input."""
        return tuple(self.model.input_shape[1:3]) == (None, None)


def vgg16_imagenet() -> LoadedModel:
    """The standard 1000-class VGG16 with ImageNet weights and class names (downloads on first use). Both files are
    fetched before the network is built, so that offline it fails at once, not after building 138 million
    parameters (2 s on a small machine, on a server's first visit)."""
    def fetch(name: str, folder_url: str, md5: str | None = None) -> str:
        return download_or_explain(
            lambda: keras.utils.get_file(name, folder_url + name, cache_subdir="models", file_hash=md5), name)

    weights_file = fetch(VGG16_IMAGENET_FILES[0], VGG16_IMAGENET_URLS[0], VGG16_IMAGENET_MD5)
    index_file = fetch(VGG16_IMAGENET_FILES[1], VGG16_IMAGENET_URLS[1])
    inputs = keras.Input((224, 224, 3), name="image")
    base = keras.applications.VGG16(weights=weights_file, input_tensor=caffe_preprocessing()(inputs),
                                    classifier_activation=None)
    # classifier_activation=None leaves Keras's 1000-way "predictions" layer linear: name its output "logits"
    # and end in a softmax, as our own models do.
    logits = layers.Identity(name="logits")(base.output)
    probabilities = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    model = keras.Model(inputs, probabilities, name="vgg16_imagenet")
    index = json.loads(Path(index_file).read_text())
    card = {
        "name": "vgg16_imagenet",
        "architecture": "vgg16 (keras.applications, 1000 ImageNet classes)",
        "classes": [index[str(i)][1] for i in range(1000)],
        "input_size": 224,
        "preprocessing": "inside the model: RGB 0..255 -> BGR minus ImageNet mean (caffe)",
        "gradcam_layer": "block5_conv3",
        "training": {"source": "ImageNet weights published by Keras (not trained by this project)"},
        "metrics": {},
        "class_groups": imagenet_class_groups(),
    }
    return LoadedModel(model, card)


def save_checkpoint(model: keras.Model, card: dict, directory: Path = CHECKPOINTS) -> Path:
    """Write ``<dir>/<card name>.keras`` and its card ``<dir>/<card name>.json``; returns the .keras path."""
    missing = [key for key in CARD_KEYS if key not in card]
    if missing:
        raise ValueError(f"model card lacks {missing}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{card['name']}.keras"
    model.save(path)
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def read_card(path: str | Path) -> dict:
    """The model card ``NAME.json`` of checkpoint ``NAME.keras``, checked to be JSON with every ``CARD_KEYS``."""
    card_path = Path(path).with_suffix(".json")
    if not card_path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {card_path}")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"Model card {card_path} is not valid JSON: {error}") from error
    missing = [key for key in CARD_KEYS if key not in card] if isinstance(card, dict) else list(CARD_KEYS)
    if missing:
        raise CardError(f"Model card {card_path} lacks {', '.join(missing)}", missing[0])
    wrong = [key for key, valid in CARD_CHECKS.items() if not valid(card[key])]
    if wrong:
        raise CardError(f"Model card {card_path} has an unusable {', '.join(wrong)}: "
                        f"{', '.join(repr(card[key])[:80] for key in wrong)}", wrong[0])
    return card


def load_checkpoint(path: str | Path) -> LoadedModel:
    """Load ``NAME.keras`` (Keras safe mode) and its card ``NAME.json``, checking that they agree."""
    path = Path(path).with_suffix(".keras")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    card = read_card(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a Keras archive (truncated or not a .keras file)")
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        raise CheckpointError(f"Keras could not load {path}: {type(error).__name__}: {error}") from error
    outputs, size = model.output_shape[-1], model.input_shape[1]
    if outputs != len(card["classes"]) or size not in (None, card["input_size"]):
        raise CheckpointError(
            f"{path} does not match its card: model has {outputs} classes at {size}px, "
            f"card says {len(card['classes'])} classes at {card['input_size']}px"
        )
    layers_4d = [layer.name for layer in model.layers if len(layer.output.shape) == 4]
    if card["gradcam_layer"] not in layers_4d:  # refused here: the page must never put another layer in its place
        raise CardError(f"{path}: its card's gradcam_layer {card['gradcam_layer']!r} is not one of the model's "
                        f"4-D layers ({', '.join(layers_4d)})", "gradcam_layer")
    return LoadedModel(any_input_size(model), card)


def untrained_stand_in(name: str, seed: int = 0) -> LoadedModel:
    """A randomly initialised model of a registry entry's architecture and input size (or of the architecture
    ``name`` at 32 px), for when no checkpoint exists yet."""
    keras.utils.set_random_seed(seed)
    spec = REGISTRY.get(name)
    architecture, input_size, options = (spec.architecture, spec.input_size, spec.options) if spec else (name, 32, {})
    model = ARCHITECTURES[architecture](num_classes=len(CIFAR4_CLASSES), input_size=None, **options)
    card = {
        "name": name,
        "architecture": architecture,
        "classes": list(CIFAR4_CLASSES),
        "input_size": input_size,
        "preprocessing": "inside the model",
        "gradcam_layer": default_gradcam_layer(model),
        "training": {"source": "untrained: random weights, no checkpoint found"},
        "metrics": {},
    }
    return LoadedModel(model, card, trained=False, note=f"No checkpoint for '{name}': showing an UNTRAINED model.")


def availability(name: str) -> str:
    """Whether a registry model can be used here as it is, judged from files only (nothing is loaded)."""
    if name == IMAGENET_VGG16:
        missing = [file for file in VGG16_IMAGENET_FILES if not (keras_cache_dir() / file).is_file()]
        if missing:
            return f"not yet: downloads {', '.join(missing)} into {keras_cache_dir()} on first use"
        return f"yes, weights cached in {keras_cache_dir()}"
    path = checkpoint_path(name)
    if path.is_file():
        return f"yes, checkpoint {path}"
    return f"no checkpoint at {path}: an UNTRAINED stand-in is used"


PHOTOS_TEST = "photos4_test"  # the card's metrics key for a model's accuracy on photos4/test when trained on others


def photo_accuracy(card: dict) -> float | None:
    """A model's accuracy on photos4/test: measured for the CIFAR models (``python -m cam evaluate NAME --data
    photos4 --update-card --card-key photos4_test``), or the test accuracy of a model trained on photos4."""
    metrics = card.get("metrics", {})
    if PHOTOS_TEST in metrics:
        return metrics[PHOTOS_TEST].get("accuracy")
    trained_on = str(card.get("training", {}).get("data", ""))
    return metrics.get("test", {}).get("accuracy") if Path(trained_on).name == "photos4" else None


def accuracy_on_photos(model_set: ModelSet) -> str:
    """Each model's accuracy on photos4/test in words ("VGG16 92%, NoPool-GAP 87%"), read from the cards; '' when a
    card or the figure is missing."""
    shares = []
    for name in (model_set.gradcam, model_set.gap):
        try:
            accuracy = photo_accuracy(read_card(checkpoint_path(name)))
        except CheckpointError:
            return ""
        if accuracy is None:
            return ""
        shares.append(f"{REGISTRY[name].title.split(' (')[0]} {accuracy:.0%}")
    return ", ".join(shares)


def problem_in_words(error: Exception) -> str:
    """Why a model could not be loaded, in words for a visitor (no path, no exception text: log those)."""
    if isinstance(error, WeightsUnavailable):
        return "its weights could not be downloaded (this server may have no internet connection)"
    if isinstance(error, CardError):
        return (f"its description (model card) gives {CARD_FIELDS_IN_WORDS.get(error.entry, error.entry)} missing or "
                "in a form this tool cannot use")
    if isinstance(error, CheckpointError):
        return "its saved file is missing, damaged or does not match its description"
    return "it could not be loaded"


def load_model(name: str) -> LoadedModel:
    """Load a model of the registry by name, or a checkpoint by path (``something.keras``)."""
    if name == IMAGENET_VGG16:
        return vgg16_imagenet()
    if name in REGISTRY:
        path = checkpoint_path(name)
        return load_checkpoint(path) if path.exists() else untrained_stand_in(name)
    if name.endswith(".keras") or Path(name).with_suffix(".json").exists():
        return load_checkpoint(name)
    raise ValueError(f"Unknown model {name!r}; choose one of {', '.join(REGISTRY)} or a path to a .keras file")
