"""Training and evaluation of the registry's architectures on an image-folder dataset."""

from __future__ import annotations

import datetime
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cam.data import ImageSet, load_split, split_train_validation, to_dataset
from cam.device import describe_device
from cam.models import (
    CHECKPOINTS,
    default_gradcam_layer,
    load_checkpoint,
    nopool_gap,
    read_card,
    receptive_field,
    save_checkpoint,
    vgg16,
)
from cam.predict import predict_probabilities


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run; all of them go into the model card."""

    architecture: str
    data: str
    input_size: int = 32
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 0.05
    # Keras's SGD decays weights decoupled from the gradient (w -= lr * weight_decay * w): with momentum 0.9 that is
    # about ten times weaker than the same number as PyTorch's coupled L2.
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    validation_fraction: float = 0.1
    patience: int = 5
    seed: int = 0
    init: str = "scratch"  # "scratch", "imagenet" (vgg16, online) or a checkpoint path to continue training
    precision: str = "mixed_bfloat16"
    # Train on random crop x crop pieces and validate/test on whole images: for nopool_gap, which takes any size
    # (convolutions + GAP), this cuts a step's cost by (crop / input_size)^2 at full resolution.
    crop: int | None = None
    cutout: int = 0  # side of the square that cutout greys out in each training image; 0: none
    cutmix: float = 0.0  # probability per batch of CutMix (see cam.data.cut_mix); 0: none
    steps_per_epoch: int | None = None  # None: the whole training split; set for smoke tests


BUILDERS = {"vgg16": vgg16, "nopool_gap": nopool_gap}


class FusedBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose training step runs TensorFlow's fused kernel.

    Same weights and inference as the plain layer (so a trained model's weights copy into it one to one), but in
    mixed_bfloat16 on this CPU (oneDNN) the plain layer's unfused float32 statistics made a VGG16 step 1.4x slower;
    the fused kernel normalises in one pass at almost no cost. Used for training only.
    """

    def call(self, inputs, training=None, mask=None):
        if not training or self.axis not in (-1, len(inputs.shape) - 1) or len(inputs.shape) != 4:
            return super().call(inputs, training=training, mask=mask)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            tf.cast(self.gamma, tf.float32),
            tf.cast(self.beta, tf.float32),
            epsilon=self.epsilon,
            is_training=True,
        )
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum + tf.cast(batch, moving.dtype) * (1.0 - self.momentum))
        return outputs


def build(config: TrainConfig, num_classes: int) -> keras.Model:
    if config.architecture not in BUILDERS:
        raise ValueError(f"Unknown architecture {config.architecture!r}; choose one of {', '.join(BUILDERS)}")
    if config.init == "imagenet" and config.architecture != "vgg16":
        raise ValueError("--init imagenet exists for vgg16 only")
    if config.crop is not None and config.architecture != "nopool_gap":
        raise ValueError("--crop needs a model that takes any input size: nopool_gap")
    kwargs = {"weights": "imagenet"} if config.init == "imagenet" else {}
    input_size = None if config.crop else config.input_size
    model = BUILDERS[config.architecture](
        num_classes=num_classes, input_size=input_size, normalization=FusedBatchNormalization, **kwargs
    )
    if config.init not in ("scratch", "imagenet"):
        model.set_weights(load_checkpoint(config.init).model.get_weights())
    return model


def describe_init(config: TrainConfig) -> dict:
    """What the weights started from, for the card; a continued run keeps the earlier run's training record."""
    if config.init == "imagenet":
        return {"init": "ImageNet weights, fine-tuned"}
    if config.init == "scratch":
        return {"init": "from scratch (random init)"}
    earlier = read_card(config.init)["training"]
    return {"init": f"{earlier['init']}; continued from {config.init}", "continued_from": earlier}


class KeepBest(keras.callbacks.Callback):
    """Remember the weights of the epoch with the best validation accuracy; stop after ``patience`` without."""

    def __init__(self, patience: int):
        super().__init__()
        self.patience, self.best, self.best_epoch, self.best_weights = patience, -1.0, 0, None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        accuracy = (logs or {}).get("val_accuracy", 0.0)
        if accuracy > self.best:
            self.best, self.best_epoch, self.best_weights = accuracy, epoch + 1, self.model.get_weights()
        elif epoch + 1 - self.best_epoch >= self.patience:
            self.model.stop_training = True


def classification_report(model: keras.Model, data: ImageSet) -> dict:
    """Accuracy, per-class accuracy and confusion matrix (rows: true class, columns: predicted)."""
    predicted = predict_probabilities(model, data.images).argmax(axis=1)
    n = len(data.classes)
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (data.labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {
        "accuracy": float((predicted == data.labels).mean()),
        "n": int(len(data.labels)),
        "per_class_accuracy": {name: float(a) for name, a in zip(data.classes, per_class, strict=True)},
        "confusion_matrix": confusion.tolist(),
    }


def format_report(report: dict, classes: list[str]) -> str:
    lines = [f"accuracy {report['accuracy']:.4f} on {report['n']} images"]
    lines += [f"  {name:>8s}: {report['per_class_accuracy'][name]:.4f}" for name in classes]
    width = max(len(c) for c in classes) + 2
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * width + "".join(f"{c:>{width}s}" for c in classes))
    for name, row in zip(classes, report["confusion_matrix"], strict=True):
        lines.append(f"{name:>{width}s}" + "".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)


def float32_copy(model: keras.Model, config: TrainConfig, num_classes: int) -> keras.Model:
    """The trained weights in a float32 model, so that inference does not inherit the training precision."""
    keras.mixed_precision.set_global_policy("float32")
    clean = BUILDERS[config.architecture](num_classes=num_classes, input_size=config.input_size)
    clean.set_weights(model.get_weights())
    return clean


def train(
    config: TrainConfig, out_dir: Path = CHECKPOINTS, name: str | None = None, log=print
) -> tuple[keras.Model, dict]:
    """Train on ``data/train`` (validation split taken from it), evaluate on ``data/test`` if present,
    save ``<out_dir>/<name>.keras`` and its card; returns the float32 model and the card."""
    keras.utils.set_random_seed(config.seed)
    log(f"device: {describe_device()}; precision: {config.precision}")
    full = load_split(config.data, "train", config.input_size)
    for path, reason in full.bad_files:
        log(f"skipped unreadable file {path}: {reason}")
    train_idx, val_idx = split_train_validation(len(full.labels), config.validation_fraction, config.seed)
    train_set, val_set = full.subset(train_idx), full.subset(val_idx)
    log(f"data: {len(train_idx)} training, {len(val_idx)} validation images, classes {full.classes}")

    keras.mixed_precision.set_global_policy(config.precision)
    try:
        model = build(config, len(full.classes))
        steps = config.steps_per_epoch or math.ceil(len(train_idx) / config.batch_size)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=steps * config.epochs, warmup_target=config.learning_rate, warmup_steps=steps
        )
        model.compile(
            optimizer=keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=config.weight_decay),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=["accuracy"],
        )
        keep_best = KeepBest(config.patience)
        train_data = to_dataset(
            train_set,
            config.batch_size,
            training=True,
            seed=config.seed,
            crop=config.crop,
            cutout=config.cutout,
            cutmix=config.cutmix,
        ).repeat()
        started = time.time()
        history = model.fit(
            train_data,
            validation_data=to_dataset(val_set, 256, training=False),
            epochs=config.epochs,
            steps_per_epoch=steps,
            callbacks=[keep_best],
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=1 if sys.stdout.isatty() else 2,
        )
        seconds = time.time() - started
        model.set_weights(keep_best.best_weights)
        model = float32_copy(model, config, len(full.classes))
    finally:  # a failed run must not leave the process computing in reduced precision
        keras.mixed_precision.set_global_policy("float32")

    name = name or config.architecture
    epochs_run = len(history.history["loss"])
    metrics = {"validation": classification_report(model, val_set)}
    if (Path(config.data) / "test").is_dir():
        metrics["test"] = classification_report(model, load_split(config.data, "test", config.input_size, full.classes))
    card = {
        "name": name,
        "architecture": config.architecture,
        "classes": full.classes,
        "input_size": config.input_size,
        "preprocessing": "none outside the model: it takes RGB 0..255 and rescales inside (first layer)",
        "gradcam_layer": default_gradcam_layer(model),
        "parameters": int(model.count_params()),
        "receptive_field": receptive_field(model) if config.architecture == "nopool_gap" else None,
        "training": {
            **describe_init(config),
            "data": str(config.data),
            "split": f"{len(train_idx)} train / {len(val_idx)} validation from train/, seed {config.seed}",
            "config": {k: v for k, v in vars(config).items() if k != "data"},
            "epochs_run": epochs_run,
            "best_epoch": keep_best.best_epoch,
            "seconds_total": round(seconds, 1),
            "seconds_per_epoch": round(seconds / epochs_run, 1),
            "device": describe_device(),
            "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "history": {k: [round(float(v), 4) for v in vals] for k, vals in history.history.items()},
        },
        "metrics": metrics,
    }
    save_checkpoint(model, card, out_dir)
    for split, report in metrics.items():
        log(f"{split}: " + format_report(report, full.classes))
    return model, card
