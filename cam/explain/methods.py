"""Saliency methods on batches, with explicit gradients: Grad-CAM, Guided Backpropagation, Guided Grad-CAM, CAM,
and the higher-resolution CAM family (Grad-CAM++, HiResCAM, Layer-CAM, Score-CAM) plus gradient x input.

Conventions: ``images`` are float RGB 0..255 at the model's input size, shape (B, H, W, 3); the model does its
own preprocessing and ends in a softmax whose input is the pre-softmax score vector (the logits).
``classes`` is None (each image's top prediction), one int for all images, or one int per image.
``layer`` is any layer with a 4-D output (B, h, w, K); None means the layer the model cards record,
``cam.models.architectures.default_gradcam_layer`` (the last 4-D layer before pooling). A_k is channel k of that layer's
output, y_c the pre-softmax score of class c and g_k = dy_c/dA_k. ``cam.explain.registry`` lists the methods for the
tool.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from cam.core.catalog import GRAD_CAM, GUIDED_GRAD_CAM, LAYER_CAM, NOPOOL_CAM, Role
from cam.core.resample import bilinear_matrix
from cam.models.architectures import default_gradcam_layer

Classes = int | Sequence[int] | np.ndarray | None


class ExplanationError(ValueError):
    """A method asked for something the model cannot give (unknown layer, bad class, no GAP head)."""


# A slow method (Score-CAM) run inside ``in_steps`` computes in batches of that size and calls its hook with
# (passes done, passes in all) after each: a server shows progress, lets other work go first, or cancels by raising.
_STEPS: ContextVar[tuple[Callable[[int, int], None], int] | None] = ContextVar("steps", default=None)


@contextlib.contextmanager
def in_steps(hook: Callable[[int, int], None], batch_size: int) -> Iterator[None]:
    """Within this block (this thread), slow methods run ``batch_size`` passes at a time and call ``hook`` between."""
    token = _STEPS.set((hook, batch_size))
    try:
        yield
    finally:
        _STEPS.reset(token)


# ---------------------------------------------------------------------------------------------- model anatomy
def logits_of(model: keras.Model, tensor: tf.Tensor) -> tf.Tensor:
    """The pre-softmax scores, given the tensor that enters the model's last layer (softmax)."""
    last = model.layers[-1]
    if isinstance(last, layers.Activation) and last.activation is keras.activations.softmax:
        return tensor
    if isinstance(last, layers.Dense) and last.activation is keras.activations.softmax:
        return tf.matmul(tensor, last.kernel) + last.bias  # the same Dense without its softmax
    raise ExplanationError(
        f"model {model.name} must end in a softmax (Activation or Dense) so that its pre-softmax scores "
        f"can be read; its last layer is {type(last).__name__} '{last.name}'"
    )


def feature_layers(model: keras.Model) -> list[str]:
    """Names of the layers with a 4-D (B, h, w, K) output: the candidates for Grad-CAM."""
    return [layer.name for layer in model.layers if len(layer.output.shape) == 4]


def feature_layer(model: keras.Model, name: str) -> layers.Layer:
    """The layer named ``name``, checked to have a 4-D (B, h, w, K) output."""
    try:
        layer = model.get_layer(name)
    except ValueError:
        candidates = ", ".join(feature_layers(model))
        raise ExplanationError(f"model {model.name} has no layer '{name}'; 4-D layers: {candidates}") from None
    if len(layer.output.shape) != 4:
        raise ExplanationError(f"layer '{name}' has output shape {layer.output.shape}; Grad-CAM needs a 4-D map")
    return layer


def features_and_logits_model(model: keras.Model, layer: str) -> keras.Model:
    """A model from the same input to (A = the layer's output, the input of the final softmax)."""
    return keras.Model(model.inputs, [feature_layer(model, layer).output, model.layers[-1].input])


def _choose(logits: tf.Tensor, classes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Classes per image (-1 = top prediction) and their scores y_c."""
    classes = tf.where(classes < 0, tf.argmax(logits, axis=-1, output_type=tf.int32), classes)
    return classes, tf.gather(logits, classes, batch_dims=1)


def class_array(classes: Classes, batch: int, num_classes: int) -> np.ndarray:
    """``classes`` as an int32 array of length ``batch``, -1 meaning 'top prediction'; checks the range."""
    if classes is None:
        return np.full(batch, -1, np.int32)
    array = np.broadcast_to(np.asarray(classes, dtype=np.int64).reshape(-1), (batch,)).astype(np.int32)
    bad = array[(array < -1) | (array >= num_classes)]
    if bad.size:
        raise ExplanationError(f"class {int(bad[0])} is out of range: the model has classes 0..{num_classes - 1}")
    return array


def _batch(images: np.ndarray) -> tf.Tensor:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ExplanationError(f"images must have shape (B, H, W, 3) or (H, W, 3), not {images.shape}")
    return tf.convert_to_tensor(images)


# ------------------------------------------------------------------------------------------------- Grad-CAM
def layer_or_default(model: keras.Model, layer: str | None) -> str:
    """``layer``, or for None the layer the model cards record (``cam.models.architectures.default_gradcam_layer``)."""
    return layer or default_gradcam_layer(model)


def grad_cam_from(features: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """ReLU(sum_k a_k A_k) with a_k = spatial mean of dy_c/dA_k; (B, h, w, K) x2 -> (B, h, w)."""
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))


def upsample(maps: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Bilinear upsampling of (B, h, w) maps to (B, *size) inside TensorFlow, with ``cam.core.resample``'s matrices
    (the one resampler of the project): R_rows M R_cols^T."""
    rows = tf.constant(bilinear_matrix(int(maps.shape[1]), int(size[0])), maps.dtype)
    cols = tf.constant(bilinear_matrix(int(maps.shape[2]), int(size[1])), maps.dtype)
    return tf.einsum("ih,bhw,jw->bij", rows, maps, cols)


def features_and_gradients(
    model: keras.Model, images: np.ndarray, classes: Classes, names: Sequence[str]
) -> tuple[list[tf.Tensor], list[tf.Tensor], tf.Tensor]:
    """One forward and one backward pass: the outputs A of the layers ``names``, their gradients dy_c/dA and the
    explained classes c (top predictions where ``classes`` leaves them open)."""
    x = _batch(images)
    inner = keras.Model(model.inputs, [feature_layer(model, name).output for name in names] + [model.layers[-1].input])
    wanted = class_array(classes, x.shape[0], model.output_shape[-1])
    with tf.GradientTape() as tape:
        *features, before_softmax = inner(x, training=False)
        chosen, scores = _choose(logits_of(model, before_softmax), wanted)
    return features, tape.gradient(scores, features), chosen


def grad_cam(
    model: keras.Model,
    images: np.ndarray,
    classes: Classes = None,
    layer: str | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) maps (B, h, w) at the layer's resolution, or (B, *size) upsampled
    bilinearly: ReLU(sum_k a_k A_k), a_k = mean_ij g_k,ij."""
    [features], [gradients], _ = features_and_gradients(model, images, classes, [layer_or_default(model, layer)])
    maps = grad_cam_from(features, gradients)
    return (upsample(maps, size) if size else maps).numpy()


# -------------------------------------------------------------------------------- the high-resolution CAM family
def grad_cam_pp(
    model: keras.Model, images: np.ndarray, classes: Classes = None, layer: str | None = None
) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with the exponential score): (B, h, w) =
    ReLU(sum_k w_k A_k), w_k = sum_ij alpha_k,ij ReLU(g_k,ij),
    alpha_k,ij = g_k,ij^2 / (2 g_k,ij^2 + sum_ab A_k,ab g_k,ij^3) (0 where the denominator is 0)."""
    [a], [g], _ = features_and_gradients(model, images, classes, [layer_or_default(model, layer)])
    denominator = 2.0 * g**2 + tf.reduce_sum(a, axis=(1, 2), keepdims=True) * g**3
    alpha = tf.math.divide_no_nan(g**2, denominator)
    weights = tf.reduce_sum(alpha * tf.nn.relu(g), axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * a, axis=-1)).numpy()


def hires_cam(model: keras.Model, images: np.ndarray, classes: Classes = None, layer: str | None = None) -> np.ndarray:
    """HiResCAM (Draelos & Carin 2020): (B, h, w) = sum_k g_k * A_k element-wise, gradients not averaged; signed
    like CAM (negative = evidence against). For a head that is GAP + one dense layer it is CAM / (h*w)."""
    [a], [g], _ = features_and_gradients(model, images, classes, [layer_or_default(model, layer)])
    return tf.reduce_sum(g * a, axis=-1).numpy()


def layer_cam_from(features: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """ReLU(sum_k ReLU(g_k) * A_k), element-wise; (B, h, w, K) x2 -> (B, h, w)."""
    return tf.nn.relu(tf.reduce_sum(tf.nn.relu(gradients) * features, axis=-1))


def layer_cam(model: keras.Model, images: np.ndarray, classes: Classes = None, layer: str | None = None) -> np.ndarray:
    """Layer-CAM (Jiang et al. 2021) on one layer: (B, h, w) = ReLU(sum_k ReLU(g_k) * A_k), each position weighted
    by its own positive gradient, so it stays meaningful on shallow, high-resolution layers."""
    [a], [g], _ = features_and_gradients(model, images, classes, [layer_or_default(model, layer)])
    return layer_cam_from(a, g).numpy()


def stage_layers(model: keras.Model, count: int = 3) -> list[str]:
    """The last 4-D layer of each of the model's last ``count`` stages: the layers that feed a pooling layer, and
    the default layer (VGG16: ``block3..5_conv3``, ``..._bn`` with BatchNorm); one layer for a net without pooling."""
    pooling = (layers.MaxPooling2D, layers.AveragePooling2D)
    fed = [layer.input._keras_history.operation.name for layer in model.layers if isinstance(layer, pooling)]
    return list(dict.fromkeys([*fed, default_gradcam_layer(model)]))[-count:]


# The Layer-CAM paper's fusion (Jiang et al. 2021, eq. 7): each layer's map scaled by tanh(gamma * M / max M) before
# the element-wise maximum, so that the weak maps of shallow layers are not drowned by the deep ones; gamma = 2 as in
# the paper (and torch-cam, which scales every layer so).
LAYER_CAM_GAMMA = 2.0


def layer_cam_fused(
    model: keras.Model, images: np.ndarray, classes: Classes = None, names: Sequence[str] | None = None
) -> np.ndarray:
    """Layer-CAM fused over layers (Jiang et al. 2021, sec. 3.3), one backward pass for all: each layer's
    Layer-CAM M upsampled to the input size (B, H, W), scaled to tanh(LAYER_CAM_GAMMA * M / max M), then the
    element-wise maximum over the layers. ``names`` default: ``stage_layers(model)``."""
    x = _batch(images)
    features, gradients, _ = features_and_gradients(model, x, classes, names or stage_layers(model))
    fused = None
    for a, g in zip(features, gradients, strict=True):
        maps = upsample(layer_cam_from(a, g), x.shape[1:3])
        scaled = tf.math.divide_no_nan(maps, tf.reduce_max(maps, axis=(1, 2), keepdims=True))
        maps = tf.math.tanh(LAYER_CAM_GAMMA * scaled)
        fused = maps if fused is None else tf.maximum(fused, maps)
    return fused.numpy()


def score_cam_masks(features: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Score-CAM's masks: each channel A_k (B, h, w, K) upsampled bilinearly to ``size`` and scaled to [0, 1],
    (A_k - min A_k) / (max A_k - min A_k) (0 for a constant channel); (B, K, H, W)."""
    maps = upsample(tf.reshape(tf.transpose(features, (0, 3, 1, 2)), (-1, *features.shape[1:3])), size)
    low = tf.reduce_min(maps, axis=(1, 2), keepdims=True)
    masks = tf.math.divide_no_nan(maps - low, tf.reduce_max(maps, axis=(1, 2), keepdims=True) - low)
    return tf.reshape(masks, (features.shape[0], features.shape[3], *size)).numpy()


def score_cam_passes(model: keras.Model, layer: str | None = None) -> int:
    """Forward passes Score-CAM needs per image at most: one, plus one per channel of the layer (VGG16 block5: 513);
    channels that are constant on an image are skipped (``score_cam``)."""
    return 1 + int(feature_layer(model, layer_or_default(model, layer)).output.shape[-1])


def varying_channels(features: tf.Tensor) -> np.ndarray:
    """Of features (B, h, w, K), the (image, channel) pairs whose map is not constant, as indices image * K + k:
    the masked passes Score-CAM makes."""
    flat = tf.reshape(tf.transpose(features, (0, 3, 1, 2)), (features.shape[0] * features.shape[3], -1))
    return np.flatnonzero((tf.reduce_max(flat, axis=1) > tf.reduce_min(flat, axis=1)).numpy())


def score_cam(
    model: keras.Model, images: np.ndarray, classes: Classes = None, layer: str | None = None, batch_size: int = 256
) -> np.ndarray:
    """Score-CAM (Wang et al. 2020), gradient-free: (B, h, w) = ReLU(sum_k s_k A_k) with s_k = p_c(X * M_k), the
    softmax probability of class c for the image times mask M_k (``score_cam_masks``), as the authors' code does.
    Like that code it skips a channel that is constant on the image (s_k = 0; most are all zero after the ReLU: 152
    to 256 of VGG16's 512 on a photo), so it costs one forward pass plus one per ``varying_channels``, run
    ``batch_size`` masked images at a time."""
    x = _batch(images)
    inner = features_and_logits_model(model, layer_or_default(model, layer))
    features, before_softmax = inner(x, training=False)
    chosen, _ = _choose(logits_of(model, before_softmax), class_array(classes, x.shape[0], model.output_shape[-1]))
    count, channels = x.shape[0], features.shape[-1]
    # Row i of ``channel_maps`` is channel i % K of image i // K, as a one-channel feature map.
    channel_maps = tf.reshape(tf.transpose(features, (0, 3, 1, 2)), (-1, *features.shape[1:3], 1))
    varying = varying_channels(features)
    scores = np.zeros(count * channels, np.float32)
    hook, batch_size = _STEPS.get() or (None, batch_size)
    for start in range(0, len(varying), batch_size):
        pairs = varying[start : start + batch_size]
        image = pairs // channels
        masks = score_cam_masks(tf.gather(channel_maps, pairs), x.shape[1:3])[:, 0]
        probabilities = model(tf.gather(x, image) * masks[..., None], training=False)
        scores[pairs] = tf.gather(probabilities, tf.gather(chosen, image), batch_dims=1).numpy()
        if hook:
            hook(count + start + len(pairs), count + len(varying))
    weights = tf.constant(scores.reshape(count, 1, 1, channels))
    return tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()


def input_gradient(model: keras.Model, images: np.ndarray, classes: Classes = None) -> tuple[tf.Tensor, tf.Tensor]:
    """(x, d y_c / d x): the batch of RGB pixels 0..255 (B, H, W, 3) and the gradient of the pre-softmax score
    y_c of ``model`` with respect to it."""
    x = _batch(images)
    wanted = class_array(classes, x.shape[0], model.output_shape[-1])
    inner = keras.Model(model.inputs, model.layers[-1].input)
    with tf.GradientTape() as tape:
        tape.watch(x)
        _, scores = _choose(logits_of(model, inner(x, training=False)), wanted)
    return x, tape.gradient(scores, x)


def gradient_x_input(model: keras.Model, images: np.ndarray, classes: Classes = None) -> np.ndarray:
    """Gradient x input (Shrikumar et al. 2016), for reference: (B, H, W) = sum over colours of x * dy_c/dx, with x
    the RGB pixels 0..255; signed, at the input's resolution, no layer involved."""
    x, gradient = input_gradient(model, images, classes)
    return tf.reduce_sum(x * gradient, axis=-1).numpy()


# -------------------------------------------------------------------------------------- Guided Backpropagation
@tf.custom_gradient
def guided_relu(x: tf.Tensor) -> tf.Tensor:
    """ReLU forward; backward passes a gradient only where both the input and the incoming gradient are > 0."""

    def gradient(upstream: tf.Tensor) -> tf.Tensor:
        return upstream * tf.cast(x > 0, upstream.dtype) * tf.cast(upstream > 0, upstream.dtype)

    return tf.nn.relu(x), gradient


def _is_relu(activation) -> bool:
    return activation is keras.activations.relu or getattr(activation, "__name__", "") == "relu"


def guided_clone(model: keras.Model) -> keras.Model:
    """A copy of ``model`` (same weights) in which every ReLU is a guided ReLU; the original is untouched."""

    def clone_layer(layer: layers.Layer) -> layers.Layer:
        config = layer.get_config()
        if isinstance(layer, layers.ReLU):
            return layers.Activation(guided_relu, name=layer.name)
        if _is_relu(getattr(layer, "activation", None)):
            config["activation"] = guided_relu
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def guided_backprop(model: keras.Model, images: np.ndarray, classes: Classes = None) -> np.ndarray:
    """d y_c / d input through guided ReLUs, (B, H, W, 3), computed on a guided clone of ``model``."""
    return input_gradient(guided_clone(model), images, classes)[1].numpy()


def guided_grad_cam(
    model: keras.Model, images: np.ndarray, classes: Classes = None, layer: str | None = None
) -> np.ndarray:
    """Guided Backprop x Grad-CAM upsampled to the input size, element-wise, (B, H, W, 3)."""
    x = _batch(images)
    if classes is None:  # both factors must explain the same class
        classes = model.predict_on_batch(x).argmax(axis=-1)
    maps = grad_cam(model, x, classes, layer, size=tuple(x.shape[1:3]))
    return guided_backprop(model, x, classes) * maps[..., None]


# ------------------------------------------------------------------------------------------------------- CAM
def gap_head(model: keras.Model) -> tuple[layers.Layer, layers.Dense]:
    """The layer whose maps feed GlobalAveragePooling2D, and the Dense layer after it (Dropout may sit between)."""
    for index, layer in enumerate(model.layers):
        if isinstance(layer, layers.GlobalAveragePooling2D):
            after = [lyr for lyr in model.layers[index + 1 :] if not isinstance(lyr, layers.Dropout)]
            if after and isinstance(after[0], layers.Dense):
                source = layer.input._keras_history.operation
                return source, after[0]
    raise ExplanationError(
        f"model {model.name} has no GlobalAveragePooling2D followed by a Dense layer, so CAM is undefined for it; "
        "use Grad-CAM instead"
    )


def cam_from(features: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """CAM_c = sum_k w_kc A_k for every class c: (B, h, w, K) x (K, N) -> (B, h, w, N)."""
    return tf.einsum("bhwk,kn->bhwn", features, tf.cast(kernel, features.dtype))


def cam(model: keras.Model, images: np.ndarray, classes: Classes = None) -> np.ndarray:
    """CAM maps (B, h, w) from a GAP head's dense weights, not rectified (negative = evidence against)."""
    x = _batch(images)
    source, dense = gap_head(model)
    features, before_softmax = keras.Model(model.inputs, [source.output, model.layers[-1].input])(x, training=False)
    wanted, _ = _choose(logits_of(model, before_softmax), class_array(classes, x.shape[0], model.output_shape[-1]))
    return tf.gather(cam_from(features, dense.kernel), wanted, axis=-1, batch_dims=1).numpy()


# ------------------------------------------------------------------------------------------------ all in one
def layers_after(model: keras.Model, name: str) -> list[layers.Layer]:
    """The layers between ``name`` and the final softmax, which must form a chain (each feeds the next)."""
    chain, previous = [], feature_layer(model, name)
    for layer in model.layers[model.layers.index(previous) + 1 : -1]:
        if layer.input is not previous.output:
            raise ExplanationError(
                f"the layers after '{name}' in {model.name} do not form a chain ('{layer.name}' does not take "
                f"'{previous.name}' as its input); use grad_cam and guided_backprop separately"
            )
        chain.append(layer)
        previous = layer
    return chain


def _run(chain: list[layers.Layer], x: tf.Tensor) -> tf.Tensor:
    for layer in chain:
        x = layer(x, training=False)
    return x


FUSED_METHODS = (GRAD_CAM, GUIDED_GRAD_CAM, LAYER_CAM, NOPOOL_CAM)  # the method keys one Explainer pass fills


@dataclass
class Explanation:
    """Everything shown for a batch: maps at their native resolution keyed by method key (``cam.explain.registry``), and
    per model role (Role.GRADCAM, Role.GAP) the softmax outputs (B, N) and the class its maps explain (B,)."""

    probabilities: dict[str, np.ndarray]
    classes: dict[str, np.ndarray]
    maps: dict[str, np.ndarray]  # e.g. grad_cam (B, 2, 2) for VGG16 at 32x32, guided_grad_cam (B, H, W, 3)
    seconds: dict[str, float]  # per method key: the pass that gave its map (one pass gives several)
    cams: np.ndarray | None = None  # (B, H, W, M): CAM of every class of the GAP model, so any class is a lookup
    pooled: dict[str, np.ndarray] = field(default_factory=dict)  # per role: what its GAP layer gives (B, K)

    def cam_classes(self, classes: Classes = None) -> np.ndarray:
        """``classes`` of the GAP model as indices (B,), its top prediction where they are None or -1."""
        wanted = class_array(classes, len(self.cams), self.cams.shape[-1])
        return np.where(wanted < 0, self.probabilities[Role.GAP].argmax(axis=-1), wanted)

    def cam_for(self, classes: Classes = None) -> np.ndarray:
        """CAM maps (B, H, W) of ``classes`` (default: the GAP model's top prediction)."""
        return np.take_along_axis(self.cams, self.cam_classes(classes)[:, None, None, None], axis=-1)[..., 0]

    def explain_cam_class(self, classes: Classes = None) -> None:
        """Make the GAP model's maps (``nopool_cam``) explain ``classes``: a lookup in ``cams``."""
        self.classes[Role.GAP] = self.cam_classes(classes)
        self.maps[NOPOOL_CAM] = self.cam_for(classes)

    @classmethod
    def concatenate(cls, parts: list[Explanation]) -> Explanation:
        """One Explanation from consecutive batches: arrays concatenated, seconds added."""

        def merge(values: list[dict]) -> dict:
            return {key: np.concatenate([v[key] for v in values]) for key in values[0]}

        cams = None if parts[0].cams is None else np.concatenate([p.cams for p in parts])
        seconds = {key: sum(p.seconds[key] for p in parts) for key in parts[0].seconds}
        merged = (merge([getattr(p, name) for p in parts]) for name in ("probabilities", "classes", "maps"))
        return cls(*merged, seconds, cams)


class Explainer:
    """Grad-CAM, Guided Backprop and Guided Grad-CAM of one model plus CAM of a GAP model, in as few passes as
    the maths allows, compiled once (``tf.function``) per model and input shape and reused afterwards; it fills
    ``Explanation.maps`` for FUSED_METHODS.

    Grad-CAM model: one forward pass through a guided clone (its forward values equal the original's), then
    from A = the Grad-CAM layer, two cheap passes through the layers after A: normal ReLUs give dy_c/dA
    (Grad-CAM), guided ReLUs give the guided gradient, which one backward pass carries down to the pixels.
    GAP model: one forward pass; CAMs of all classes from the same features.
    """

    def __init__(
        self, gradcam_model: keras.Model | None, layer: str | None = None, cam_model: keras.Model | None = None
    ):
        if gradcam_model is None and cam_model is None:
            raise ExplanationError("an Explainer needs a Grad-CAM model, a GAP model or both")
        self.gradcam_model, self.cam_model = gradcam_model, cam_model
        self.layer = None if gradcam_model is None else layer_or_default(gradcam_model, layer)
        if gradcam_model is not None:
            guided = guided_clone(gradcam_model)
            self._bottom = keras.Model(guided.inputs, feature_layer(guided, self.layer).output)
            self._top, self._top_guided = layers_after(gradcam_model, self.layer), layers_after(guided, self.layer)
        if cam_model is not None:
            source, self._cam_dense = gap_head(cam_model)
            self._cam_inner = keras.Model(cam_model.inputs, [source.output, cam_model.layers[-1].input])
        # One compiled graph per pass and input shape (h, w), traced on first use: the upsampling matrices are
        # constants of the shape. Photos are rounded to a few shapes (cam.core.images.input_shape: at most S/32 + 1 per
        # orientation and short side S), so the graphs stay few; ``compilations`` counts them.
        self._steps: dict[tuple[str, int, int], tf.types.experimental.GenericFunction] = {}
        self.compilations = 0

    def _step(self, role: Role, shape: tuple[int, int]):
        """The compiled ``_gradcam_pass`` or ``_cam_pass`` (by model ``role``) for images of ``shape``."""
        key = (role, *shape)
        if key not in self._steps:
            image = tf.TensorSpec((None, *shape, 3), tf.float32)
            # TensorFlow logs a "retracing" warning once a pass has been traced for more than five shapes: expected
            # here, where each shape is traced once and kept.
            if role == Role.GRADCAM:
                signature = [image, tf.TensorSpec((None,), tf.int32)]
                self._steps[key] = tf.function(self._gradcam_pass, input_signature=signature)
            else:
                self._steps[key] = tf.function(self._cam_pass, input_signature=[image])
            self.compilations += 1
        return self._steps[key]

    def _gradcam_pass(self, x: tf.Tensor, classes: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            features = self._bottom(x, training=False)
            logits = logits_of(self.gradcam_model, _run(self._top, features))
            guided_logits = logits_of(self.gradcam_model, _run(self._top_guided, features))
            chosen, scores = _choose(logits, classes)
            guided_scores = tf.gather(guided_logits, chosen, batch_dims=1)
        gradients = tape.gradient(scores, features)
        maps = grad_cam_from(features, gradients)
        guided = tape.gradient(guided_scores, x)
        del tape
        upsampled = upsample(maps, x.shape[1:3])
        # Layer-CAM of the same layer from the same gradients, almost free here: the dashboard shows it where
        # Grad-CAM's map is empty, and computing it on its own took another 0.4 s per photo.
        return tf.nn.softmax(logits), chosen, maps, guided * upsampled[..., None], layer_cam_from(features, gradients)

    def _cam_pass(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        features, before_softmax = self._cam_inner(x, training=False)
        # The pooled features too (the GAP layer's output): cam.explain.verdict reads them, without a pass of its own.
        return (tf.nn.softmax(logits_of(self.cam_model, before_softmax)), cam_from(features, self._cam_dense.kernel),
                tf.reduce_mean(features, axis=(1, 2)))

    def in_batches(
        self, images: np.ndarray, classes: np.ndarray | None, batch_size: int, with_cam: bool = True
    ) -> Explanation:
        """``self`` on ``images`` ``batch_size`` at a time, merged into one Explanation; ``classes``: the Grad-CAM
        model's, one per image, None for its top predictions."""
        return Explanation.concatenate([
            self(images[start : start + batch_size], None if classes is None else classes[start : start + batch_size],
                 with_cam=with_cam)
            for start in range(0, len(images), batch_size)
        ])

    def __call__(
        self, images: np.ndarray | None, classes: Classes = None, cam_images: np.ndarray | None = None,
        with_cam: bool = True,
    ) -> Explanation:
        """Explain a batch (B, H, W, 3) of one shape; ``classes`` is the Grad-CAM model's class.
        ``cam_images``: the same images at the GAP model's input shape, when it differs (the only images without a
        Grad-CAM model); ``with_cam=False`` skips the GAP model. Its class is picked afterwards from
        ``Explanation.cams`` (all classes are computed)."""
        result = Explanation({}, {}, {}, {})
        if self.gradcam_model is not None:
            x = _batch(images)
            wanted = class_array(classes, x.shape[0], self.gradcam_model.output_shape[-1])
            started = time.perf_counter()
            step = self._step(Role.GRADCAM, tuple(x.shape[1:3]))
            probabilities, chosen, maps, guided_maps, layer_maps = (t.numpy() for t in step(x, wanted))
            seconds = time.perf_counter() - started
            result = Explanation({Role.GRADCAM: probabilities}, {Role.GRADCAM: chosen},
                                 {GRAD_CAM: maps, GUIDED_GRAD_CAM: guided_maps, LAYER_CAM: layer_maps},
                                 {GRAD_CAM: seconds, GUIDED_GRAD_CAM: seconds, LAYER_CAM: seconds})
        if self.cam_model is not None and with_cam:
            started = time.perf_counter()
            cam_x = _batch(images if cam_images is None else cam_images)
            step = self._step(Role.GAP, tuple(cam_x.shape[1:3]))
            result.probabilities[Role.GAP], result.cams, result.pooled[Role.GAP] = (t.numpy() for t in step(cam_x))
            result.seconds[NOPOOL_CAM] = time.perf_counter() - started
            result.explain_cam_class()
        return result
