"""What the tool knows by name, in one place and without TensorFlow: the two model roles, the method keys that
other modules rely on, the scores' settings, and the models and model pairs the tool offers with where their
checkpoints live. It imports nothing heavy, so reading a report (the Evaluation page, ``cam.evaluate.report_content``)
never loads TensorFlow or Keras; ``cam.models`` builds and loads what is named here, ``cam.explain.registry`` defines
the methods."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class Role(StrEnum):
    """A model's part in the study; the value is what reports and options store."""

    GRADCAM = "gradcam"  # the model Grad-CAM explains (VGG16)
    GAP = "cam"  # the GAP model that CAM explains (NoPool-GAP)


ROLE_TITLES = {Role.GRADCAM: "Grad-CAM model", Role.GAP: "GAP (CAM) model"}

# Method keys with a part of their own (cam.explain.registry defines every method under its key).
GRAD_CAM, GUIDED_GRAD_CAM, NOPOOL_CAM, LAYER_CAM = "grad_cam", "guided_grad_cam", "nopool_cam", "layer_cam"
STUDY = (GRAD_CAM, GUIDED_GRAD_CAM, NOPOOL_CAM)  # the three methods of the study: the default everywhere
FALLBACK = LAYER_CAM  # shown in Grad-CAM's place when Grad-CAM's map is empty
# The retrained network's method, which the report compares the other methods with.
GAP_METHOD = NOPOOL_CAM

# --precision of training and of the report: "bfloat16" computes in bfloat16 and keeps float32 weights (Keras's
# mixed_bfloat16 policy); "auto" is bfloat16 where the hardware is fast at it (cam.core.device.fast_bfloat16).
PRECISIONS = ("auto", "bfloat16", "float32")

# The scores' settings (cam.evaluate.metrics computes them, the report describes them).
STEPS = 16
BLUR_SIGMA = 4.0  # pixels; at 32x32 it leaves colour blobs without recognisable shapes
POINTING_TOLERANCE = 15.0  # pixels, Zhang et al. 2016
REGION_THRESHOLD = 0.15  # of the map's maximum, Grad-CAM paper (Selvaraju et al. 2017)
MIN_IOU = 0.5
RESOLUTION_TOLERANCE = 0.05  # share of the map's variance a coarser grid may lose

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# $CAM_CHECKPOINTS overrides where the registry looks for our checkpoints (tests use an empty folder).
CHECKPOINTS = Path(os.environ.get("CAM_CHECKPOINTS", PROJECT_ROOT / "checkpoints"))
IMAGENET_VGG16 = "vgg16_imagenet"  # the one offered model that Keras downloads instead of a checkpoint of ours


def checkpoint_path(name: str) -> Path:
    """Where the registry keeps our checkpoint ``name`` (read at call time: $CAM_CHECKPOINTS, tests patch it)."""
    return CHECKPOINTS / f"{name}.keras"


def keras_cache_dir() -> Path:
    """The folder where ``keras.utils.get_file`` looks for downloaded weights."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


@dataclass(frozen=True)
class ModelSpec:
    """One model the tool offers: how to get it, and what it is (architecture, builder options, input size);
    ``cam.models.checkpoints.load_model(name)`` loads it."""

    name: str
    title: str
    how_to_get: str
    architecture: str = "vgg16"
    input_size: int = 32
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSet:
    """A pair of models of one input size that the tool compares: one for Grad-CAM (VGG16), one with a GAP head
    for CAM (NoPool-GAP)."""

    name: str
    title: str
    gradcam: str
    gap: str


def _ours(name: str, title: str, architecture: str, input_size: int, retrain: str, **options) -> ModelSpec:
    how = f"shipped in checkpoints/{name}.keras; retrain with {retrain}"
    return ModelSpec(name, title, how, architecture, input_size, options)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _ours(
            "vgg16_photos",
            "VGG16 (ours, photos, 128 px)",
            "vgg16",
            128,
            "`python -m cam.train.gpu_training` pack / fit / import on a GPU (see README)",
            batch_norm=False,
            head="linear",
        ),
        _ours(
            "nopool_gap_photos",
            "NoPool-GAP (ours, photos, 128 px)",
            "nopool_gap_dilated",
            128,
            "`python -m cam.train.gpu_training` pack / fit / import on a GPU (see README)",
        ),
        _ours("vgg16", "VGG16 (ours, CIFAR, 32 px)", "vgg16", 32, "`python -m cam train vgg16 --data cifar4`"),
        _ours(
            "nopool_gap",
            "NoPool-GAP (ours, CIFAR, 32 px)",
            "nopool_gap",
            32,
            "`python -m cam train nopool_gap --data cifar4`",
        ),
        ModelSpec(
            IMAGENET_VGG16,
            "VGG16 (ImageNet, 1000 classes)",
            "downloaded by Keras on first use (needs internet, or the weights file in " + str(keras_cache_dir()) + ")",
            input_size=224,
        ),
    )
}

# The model pairs the tool compares; see default_set for the one the dashboard and the command line start with.
MODEL_SETS: dict[str, ModelSet] = {
    model_set.name: model_set
    for model_set in (
        ModelSet("photos", "Photos (128 px)", "vgg16_photos", "nopool_gap_photos"),
        ModelSet("cifar", "CIFAR thumbnails (32 px)", "vgg16", "nopool_gap"),
    )
}


def default_set() -> ModelSet:
    """The first model set whose two checkpoints are here (the photo pair once trained); with none complete, the
    last (CIFAR: its untrained stand-ins are the smallest)."""
    sets = list(MODEL_SETS.values())
    complete = [m for m in sets if checkpoint_path(m.gradcam).is_file() and checkpoint_path(m.gap).is_file()]
    return complete[0] if complete else sets[-1]


CIFAR4_CLASSES = ("bird", "cat", "dog", "horse")
