"""The CPU route to a new top of a photo network: cache the maps of a layer near the top (``CACHED_LAYERS``) on views
of every training photo, then fine-tune the layers above it on the cache.

VGG16: ``block4_pool`` is cached and ``block5`` and the head are trained; the forward pass up to ``block4_pool`` is most
of VGG16's cost, so a training step of the top is about 6 times cheaper than a forward pass of the whole network (2
cores: 0.08 s per photo to cache at short side 128, 0.013 s per photo to train the top on it). NoPool-GAP:
``conv12_relu`` is cached and the last two 3x3 convolutions, ``cam_features`` and the head are trained; its maps are
at the photo's full resolution (2.8 MB per photo at short side 128 in float16), so the cache stays on disk and is
memory-mapped. BatchNorm layers in the top stay frozen (inference mode): the cache holds fewer sizes than the network
was trained on, and their statistics are the multi-scale training's. The frozen layers are the checkpoint's; a cache
remembers which weights made it, and a run started from a checkpoint with other frozen layers is refused::

    python -m cam.train.top_training cache --checkpoint checkpoints/vgg16_photos.keras --data ../shared/data/photos4 \\
        --cache runs/top/vgg16 --plan 0:128 0:224 1:128 1:224
    python -m cam.train.top_training fit --checkpoint checkpoints/vgg16_photos.keras --data ../shared/data/photos4 \\
        --cache runs/top/vgg16 --teacher runs/teacher/train.npz --epochs 6 --out runs/top/run

View 0 (the clean photo at its own aspect) is cached for every training photo, the augmented views only for the
training split: validation is judged on clean photos, as the page feeds them. ``fit`` writes the best epoch's
checkpoint and card after every epoch; ``--checkpoint`` that checkpoint continues a stopped run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from functools import partial
from pathlib import Path

import keras
import numpy as np

from cam.core.device import cpu_name, describe_device
from cam.core.predict import by_shape, images_per_batch
from cam.data.folders import split_train_validation
from cam.models.architectures import centre_classes
from cam.models.checkpoints import save_checkpoint
from cam.train.head_training import (
    SPLIT_SEED,
    VALIDATION_FRACTION,
    cache_views,
    checkpoint_and_photos,
    plan_entry,
    view,
)
from cam.train.training import teacher_targets

# For each architecture (the builder's model name), the layer whose maps are cached: it and all below stay frozen.
CACHED_LAYERS = {"vgg16": "block4_pool", "nopool_gap": "conv12_relu"}


def cached_layer(model: keras.Model) -> str:
    """The layer of ``model`` whose maps are cached (``CACHED_LAYERS``)."""
    if model.name not in CACHED_LAYERS:
        raise ValueError(f"no top to train for a '{model.name}' network: known are {sorted(CACHED_LAYERS)}")
    return CACHED_LAYERS[model.name]


def layer_position(model: keras.Model, name: str) -> int:
    """Where the layer ``name`` is in ``model.layers``."""
    return [layer.name for layer in model.layers].index(name)


def top_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers above the cached one, up to ``logits`` (``fit`` trains those with weights, BatchNorm excepted)."""
    return model.layers[layer_position(model, cached_layer(model)) + 1:layer_position(model, "logits") + 1]


def frozen_fingerprint(model: keras.Model) -> float:
    """A number that changes when the frozen layers change: the sum of the kernel of the last convolution below the
    cached layer."""
    below = model.layers[:layer_position(model, cached_layer(model)) + 1]
    last_convolution = [layer for layer in below if isinstance(layer, keras.layers.Conv2D)][-1]
    return float(np.sum(last_convolution.get_weights()[0], dtype=np.float64))


def cached_indices(num_photos: int, view_index: int) -> np.ndarray:
    """The photos a view is cached for: all for the clean view 0, the training split for augmented views."""
    if view_index == 0:
        return np.arange(num_photos)
    return np.sort(split_train_validation(num_photos, VALIDATION_FRACTION, SPLIT_SEED)[0])


def pack_maps(maps: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Maps of several shapes as one flat float16 array with their shapes (what ``unpack_maps`` reverses)."""
    return {"flat": np.concatenate([m.astype(np.float16).ravel() for m in maps]),
            "shapes": np.asarray([m.shape for m in maps], np.int32)}


def unpack_maps(flat: np.ndarray, shapes: np.ndarray) -> list[np.ndarray]:
    ends = np.cumsum(np.prod(shapes, axis=1))
    return [flat[end - np.prod(shape):end].reshape(shape) for end, shape in zip(ends, shapes, strict=True)]


def predict_maps(model: keras.Model, images: list[np.ndarray]) -> list[np.ndarray]:
    """``model``'s output for each image (RGB 0..255, any shapes), batched by shape."""
    maps: list[np.ndarray] = [np.empty(0)] * len(images)
    for indices in by_shape(images).values():
        batch = np.stack([images[i] for i in indices]).astype("float32")
        step = images_per_batch(*batch.shape[1:3])
        outputs = np.concatenate([model.predict_on_batch(batch[i:i + step]) for i in range(0, len(batch), step)])
        for index, output in zip(indices, outputs, strict=True):
            maps[index] = output
    return maps


def maps_part(
    lower: keras.Model, paths: list[Path], seed: int, short_side: int, view_index: int, chunk: np.ndarray
) -> dict[str, np.ndarray]:
    """One part of the cache: ``lower``'s maps on view ``view_index`` of the photos ``paths[chunk]``, packed."""
    return pack_maps(predict_maps(lower, [view(paths[i], short_side, view_index, i, seed) for i in chunk]))


def cache_maps(
    model: keras.Model, paths: list[Path], out: Path, plan: list[tuple[int, int]], seed: int = 0, log=print
) -> None:
    """Write ``out/size{S}_view{V}.npz`` (``shapes`` of the cached layer's maps; ``indices`` into ``paths``;
    ``files``; ``fingerprint``) and the maps themselves, flat, to ``out/size{S}_view{V}.flat.npy`` for every (view V,
    short side S) of ``plan``, through ``cache_views``."""
    lower = keras.Model(model.inputs, model.get_layer(cached_layer(model)).output)
    cache_views(out, plan, partial(cached_indices, len(paths)), partial(maps_part, lower, paths, seed),
                {"files": np.asarray([str(p) for p in paths]), "fingerprint": frozen_fingerprint(model)}, log,
                on_disk=("flat",))


def load_maps(directory: Path, paths: list[Path], fingerprint: float) -> dict[tuple[int, int], tuple[np.ndarray, list]]:
    """Every complete (short side, view) of the cache: (indices into ``paths``, maps, memory-mapped), checked to be
    of ``paths`` and of the frozen layers with ``fingerprint``."""
    found = {}
    for path in sorted(directory.glob("size*_view*.npz")):
        size, view_index = (int(part) for part in path.stem.removeprefix("size").split("_view"))
        with np.load(path) as cached:
            if list(cached["files"]) != [str(p) for p in paths]:
                raise ValueError(f"{path} was made from other photos than {paths[0].parent.parent}")
            if not np.isclose(float(cached["fingerprint"]), fingerprint, rtol=1e-6):
                raise ValueError(f"{path} was made by other frozen layers than this checkpoint's")
            flat = np.load(path.with_suffix(".flat.npy"), mmap_mode="r")
            found[size, view_index] = (cached["indices"], unpack_maps(flat, cached["shapes"]))
    if not found:
        raise ValueError(f"no cached maps in {directory}: run the cache step first")
    return found


def top_model(model: keras.Model) -> keras.Model:
    """(B, h, w, C) maps of the cached layer -> logits, through ``model``'s own top layers (shared: training this
    trains ``model``), without dropout: a head fitted by ``head_training`` (NoPool-GAP's) has large weights of both
    signs whose sum cancels, and dropping features broke that (an epoch's training loss 9.6, 0.58 without; 2026-12-07).
    Frozen in it: BatchNorm layers (``trainable`` False: inference mode, statistics, scale and
    offset kept; ``save_top`` saves them trainable, as they were) and a bias the head has (NoPool-GAP's, kept at 0:
    with it, Grad-CAM would no longer be CAM up to a constant)."""
    logits = model.get_layer("logits")
    if logits.use_bias:
        logits.bias.trainable = False
    for layer in normalisations(model):
        layer.trainable = False
    maps = keras.Input((None, None, model.get_layer(cached_layer(model)).output.shape[-1]))
    outputs = maps
    for layer in top_layers(model):
        if not isinstance(layer, keras.layers.Dropout):
            outputs = layer(outputs)
    return keras.Model(maps, outputs)


def normalisations(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The BatchNorm layers of ``model``'s top."""
    return [layer for layer in top_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def balanced_draw(train: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One epoch's photos: ``len(train)`` drawn from ``train`` with replacement, every class equally often (photos4's
    training classes range from 813 horses to 2,500 birds)."""
    classes = np.unique(labels[train])
    per_class = np.full(len(classes), len(train) // len(classes))
    per_class[: len(train) % len(classes)] += 1
    return np.concatenate([rng.choice(train[labels[train] == c], n) for c, n in zip(classes, per_class, strict=True)])


def epoch_batches(
    cache: dict, photos: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[tuple[tuple[int, int], list[int]]]:
    """Batches that show each of ``photos`` (repeats allowed) once, in one of its cached views drawn at random, each
    batch of one view and one map shape: (view key, positions in that view's cache), shuffled."""
    keys = [key for key in cache if np.isin(photos, cache[key][0]).all()]
    position = {key: {photo: i for i, photo in enumerate(cache[key][0].tolist())} for key in keys}
    groups: dict[tuple, list[int]] = {}
    for photo, key_index in zip(photos.tolist(), rng.integers(len(keys), size=len(photos)).tolist(), strict=True):
        key = keys[key_index]
        at = position[key][photo]
        groups.setdefault((key, cache[key][1][at].shape), []).append(at)
    batches = []
    for (key, _), positions in groups.items():
        positions = rng.permutation(positions).tolist()
        batches += [(key, positions[i:i + batch_size]) for i in range(0, len(positions), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def clean_accuracy(top: keras.Model, cache: dict, photos: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy of ``top`` on the clean view (0) of ``photos``, per cached short side."""
    accuracy = {}
    for (size, view_index), (indices, maps) in sorted(cache.items()):
        if view_index == 0:
            logits = np.concatenate([o.reshape(1, -1) for o in predict_maps(top, [maps[i] for i in photos])])
            accuracy[str(size)] = float((logits.argmax(1) == labels[indices[photos]]).mean())
    return accuracy


def fit_top(
    trained, cache: dict, targets: np.ndarray, labels: np.ndarray, train: np.ndarray, validation: np.ndarray,
    args, log=print,
) -> None:
    """Fine-tune the top on the cache (AdamW, cosine schedule, label smoothing); after every epoch the best one so
    far by mean clean validation accuracy over the cached sizes is written to ``args.out``."""
    top = top_model(trained.model)
    rng = np.random.default_rng(args.seed)
    plan = [epoch_batches(cache, balanced_draw(train, labels, rng), args.batch_size, rng) for _ in range(args.epochs)]
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, sum(len(batches) for batches in plan))
    top.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=args.label_smoothing))
    best = clean_accuracy(top, cache, validation, labels)
    log(f"before: validation {best}")
    history, best_weights, best_epoch, started = [], top.get_weights(), 0, time.perf_counter()
    for epoch, batches in enumerate(plan, 1):
        begun, losses = time.perf_counter(), []
        for key, positions in batches:
            indices, maps = cache[key]
            x = np.stack([maps[p] for p in positions]).astype("float32")
            losses.append(float(top.train_on_batch(x, targets[indices[positions]])))
        accuracy = clean_accuracy(top, cache, validation, labels)
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4),
                        "s": round(time.perf_counter() - begun, 1), **{f"val_{k}": v for k, v in accuracy.items()}})
        log(history[-1])
        if np.mean(list(accuracy.values())) > np.mean(list(best.values())):
            best, best_weights, best_epoch = accuracy, top.get_weights(), epoch
        current = top.get_weights()
        top.set_weights(best_weights)
        save_top(trained, args, best, best_epoch, history, time.perf_counter() - started, len(train), len(validation),
                 sorted(cache))
        top.set_weights(current)
    top.set_weights(best_weights)


def save_top(trained, args, accuracy: dict, best_epoch: int, history: list, seconds: float, n_train: int,
             n_validation: int, cached: list) -> Path:
    """Write the network (its head centred over the classes) and its card, the trained card's fields kept."""
    logits = trained.model.get_layer("logits")
    kernel = logits.get_weights()
    logits.set_weights([centre_classes(kernel[0]), *kernel[1:]])
    card = {**trained.card, "metrics": {}}
    trained_layers = ", ".join(layer.name for layer in top_layers(trained.model) if layer.trainable_weights)
    card["training"] = {
        "init": f"the checkpoint in 'previous', its layers up to {cached_layer(trained.model)} kept frozen",
        "trainer": f"cam.train.top_training: {trained_layers} fine-tuned on cached {cached_layer(trained.model)} "
                   f"maps (BatchNorm layers frozen, no dropout), on {describe_device()}",
        "views": f"(short side, view) {cached}, own aspect; view 0 is the clean photo, the others "
                 "cam.train.augment.photo_augment's; an epoch draws as many photos as the training split "
                 "holds, classes equally often, each in one of its cached views at random; photos4's short side "
                 "is 160, so 224 is upsampled",
        "targets": (f"{1 - args.teacher_weight:g} one-hot + {args.teacher_weight:g} EfficientNet-Lite0 teacher "
                    f"(class biases refitted), label smoothing {args.label_smoothing:g}") if args.teacher else
                   f"one-hot, label smoothing {args.label_smoothing:g}",
        "config": {"optimizer": "adamw", "lr": args.lr, "schedule": "cosine to 0", "weight_decay": args.weight_decay,
                   "batch": args.batch_size, "epochs": args.epochs, "seed": args.seed},
        "split": f"{n_train} train / {n_validation} validation from train/, seed {SPLIT_SEED}",
        "selection": "the epoch with the best mean clean validation accuracy over the cached short sides",
        "best_epoch": best_epoch,
        "validation_accuracy_by_size": accuracy,
        "history": history,
        "seconds_total": round(seconds, 1),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.platform()}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "previous": trained.card["training"],
    }
    frozen = normalisations(trained.model)
    for layer in frozen:  # frozen for this fit only: a later fit from the checkpoint may train them
        layer.trainable = True
    path = save_checkpoint(trained.model, card, args.out)
    for layer in frozen:
        layer.trainable = False
    logits.set_weights(kernel)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cam.train.top_training", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("cache", "fit"))
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="the network whose lower layers stay (fit: and whose top is trained further)")
    parser.add_argument("--data", type=Path, required=True, help="image-folder root with train/<class>/")
    parser.add_argument("--plan", type=plan_entry, nargs="+", metavar="V:S", default=[(0, 128), (0, 224), (1, 128)],
                        help="cache: the views (0 clean, 1.. augmented) and short sides to cache, in order")
    parser.add_argument("--cache", type=Path, required=True, help="the maps' folder")
    parser.add_argument("--teacher", type=Path, help="the teacher's .npz (cam.train.teacher) for soft targets")
    parser.add_argument("--teacher-weight", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="fit: the folder for the checkpoint and its card")
    args = parser.parse_args(argv)
    trained, classes, paths, labels = checkpoint_and_photos(args.checkpoint, args.data)
    if args.step == "cache":
        cache_maps(trained.model, paths, args.cache, args.plan)
        return
    if args.out is None:
        parser.error("fit needs --out")
    train, validation = split_train_validation(len(paths), VALIDATION_FRACTION, SPLIT_SEED)
    targets = teacher_targets(args.teacher, args.data, paths, labels, args.teacher_weight, len(classes))
    cache = load_maps(args.cache, paths, frozen_fingerprint(trained.model))
    print(f"cached: {sorted(cache)}")
    fit_top(trained, cache, targets, labels, np.sort(train), np.sort(validation), args)


if __name__ == "__main__":
    main()
