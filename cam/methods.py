"""Grad-CAM, Guided Backpropagation, Guided Grad-CAM and CAM, on batches, with explicit gradients.

Conventions: ``images`` are float RGB 0..255 at the model's input size, shape (B, H, W, 3); the model does its
own preprocessing and ends in a softmax whose input is the pre-softmax score vector (the logits).
``classes`` is None (each image's top prediction), one int for all images, or one int per image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import layers

Classes = int | Sequence[int] | np.ndarray | None


class ExplanationError(ValueError):
    """A method asked for something the model cannot give (unknown layer, bad class, no GAP head)."""


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
def grad_cam_from(features: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """ReLU(sum_k a_k A_k) with a_k = spatial mean of dy_c/dA_k; (B, h, w, K) x2 -> (B, h, w)."""
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))


def upsample(maps: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Bilinear upsampling of (B, h, w) maps to (B, *size)."""
    return tf.image.resize(maps[..., None], size, method="bilinear")[..., 0]


def grad_cam(
    model: keras.Model,
    images: np.ndarray,
    classes: Classes = None,
    layer: str = "block5_conv3",
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Grad-CAM maps (B, h, w) at the layer's resolution, or (B, *size) upsampled bilinearly."""
    x = _batch(images)
    inner = features_and_logits_model(model, layer)
    wanted = class_array(classes, x.shape[0], model.output_shape[-1])
    with tf.GradientTape() as tape:
        features, before_softmax = inner(x, training=False)
        _, scores = _choose(logits_of(model, before_softmax), wanted)
    maps = grad_cam_from(features, tape.gradient(scores, features))
    return (upsample(maps, size) if size else maps).numpy()


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
    x = _batch(images)
    guided = guided_clone(model)
    wanted = class_array(classes, x.shape[0], model.output_shape[-1])
    inner = keras.Model(guided.inputs, guided.layers[-1].input)
    with tf.GradientTape() as tape:
        tape.watch(x)
        _, scores = _choose(logits_of(guided, inner(x, training=False)), wanted)
    return tape.gradient(scores, x).numpy()


def guided_grad_cam(
    model: keras.Model, images: np.ndarray, classes: Classes = None, layer: str = "block5_conv3"
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


@dataclass
class Explanation:
    """Everything shown for a batch. Maps are at their native resolution; probabilities are softmax outputs."""

    gradcam_probabilities: np.ndarray  # (B, N)
    gradcam_class: np.ndarray  # (B,) the class Grad-CAM and Guided Backprop explain
    gradcam: np.ndarray  # (B, h, w), e.g. 2x2 for VGG16 at 32x32
    guided_backprop: np.ndarray  # (B, H, W, 3) at the model input size
    guided_gradcam: np.ndarray  # (B, H, W, 3)
    gradcam_seconds: float  # one compiled pass gives the three above
    cam_probabilities: np.ndarray | None = None  # (B, M)
    cams: np.ndarray | None = None  # (B, H, W, M): CAM of every class, so any class is a lookup
    cam_seconds: float = 0.0

    def cam_for(self, classes: Classes = None) -> np.ndarray:
        """CAM maps (B, H, W) of ``classes`` (default: the GAP model's top prediction)."""
        wanted = class_array(classes, len(self.cams), self.cams.shape[-1])
        wanted = np.where(wanted < 0, self.cam_probabilities.argmax(axis=-1), wanted)
        return np.take_along_axis(self.cams, wanted[:, None, None, None], axis=-1)[..., 0]


class Explainer:
    """Grad-CAM, Guided Backprop and Guided Grad-CAM of one model plus CAM of a GAP model, in as few passes as
    the maths allows, compiled once (``tf.function``) per model and input size and reused afterwards.

    Grad-CAM model: one forward pass through a guided clone (its forward values equal the original's), then
    from A = the Grad-CAM layer, two cheap passes through the layers after A: normal ReLUs give dy_c/dA
    (Grad-CAM), guided ReLUs give the guided gradient, which one backward pass carries down to the pixels.
    GAP model: one forward pass; CAMs of all classes from the same features.
    """

    def __init__(self, gradcam_model: keras.Model, layer: str = "block5_conv3", cam_model: keras.Model | None = None):
        self.gradcam_model, self.layer, self.cam_model = gradcam_model, layer, cam_model
        guided = guided_clone(gradcam_model)
        self._bottom = keras.Model(guided.inputs, feature_layer(guided, layer).output)
        self._top, self._top_guided = layers_after(gradcam_model, layer), layers_after(guided, layer)
        size = tuple(gradcam_model.input_shape[1:3])
        self._gradcam_step = tf.function(
            self._gradcam_pass,
            input_signature=[tf.TensorSpec((None, *size, 3), tf.float32), tf.TensorSpec((None,), tf.int32)],
        )
        if cam_model is not None:
            source, self._cam_dense = gap_head(cam_model)
            self._cam_inner = keras.Model(cam_model.inputs, [source.output, cam_model.layers[-1].input])
            self._cam_step = tf.function(
                self._cam_pass, input_signature=[tf.TensorSpec((None, *cam_model.input_shape[1:3], 3), tf.float32)]
            )

    def _gradcam_pass(self, x: tf.Tensor, classes: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            features = self._bottom(x, training=False)
            logits = logits_of(self.gradcam_model, _run(self._top, features))
            guided_logits = logits_of(self.gradcam_model, _run(self._top_guided, features))
            chosen, scores = _choose(logits, classes)
            guided_scores = tf.gather(guided_logits, chosen, batch_dims=1)
        maps = grad_cam_from(features, tape.gradient(scores, features))
        guided = tape.gradient(guided_scores, x)
        del tape
        upsampled = upsample(maps, tf.shape(x)[1:3])
        return tf.nn.softmax(logits), chosen, maps, guided, guided * upsampled[..., None]

    def _cam_pass(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        features, before_softmax = self._cam_inner(x, training=False)
        return tf.nn.softmax(logits_of(self.cam_model, before_softmax)), cam_from(features, self._cam_dense.kernel)

    def __call__(
        self, images: np.ndarray, classes: Classes = None, cam_images: np.ndarray | None = None, with_cam: bool = True
    ) -> Explanation:
        """Explain a batch (B, H, W, 3) at the Grad-CAM model's input size; ``classes`` is that model's class.
        ``cam_images``: the same images at the GAP model's input size, when it differs; ``with_cam=False`` skips
        the GAP model. Its class is picked afterwards from ``Explanation.cams`` (all classes are computed)."""
        x = _batch(images)
        wanted = class_array(classes, x.shape[0], self.gradcam_model.output_shape[-1])
        started = time.perf_counter()
        probabilities, chosen, maps, guided, guided_maps = (t.numpy() for t in self._gradcam_step(x, wanted))
        result = Explanation(probabilities, chosen, maps, guided, guided_maps, time.perf_counter() - started)
        if self.cam_model is not None and with_cam:
            started = time.perf_counter()
            cam_x = x if cam_images is None else _batch(cam_images)
            result.cam_probabilities, result.cams = (t.numpy() for t in self._cam_step(cam_x))
            result.cam_seconds = time.perf_counter() - started
        return result
