"""The CPU route to a new head: keep a trained network's convolutions, cache their pooled features on many views
of every training photo (several short sides, own aspect, clean and augmented), and fit the head on the cache.

The head is CAM's: the checkpoint's Grad-CAM layer (VGG16 ``block5_conv3``, NoPool-GAP ``cam_features``) -> GAP ->
Dense without bias, with class-centred weights, so Grad-CAM equals CAM up to a constant and is never blank for the
top class (VGG16 is rebuilt as ``cam.models.architectures.vgg16(head="linear")``). A forward pass costs 0.1 s per
photo on 2 cores (both networks at short side 128), so the cache takes hours; every part of it is saved as it is
made and a run started again continues where it stopped. Fitting the head on the cache takes minutes::

    python -m cam.train.head_training cache --checkpoint checkpoints/vgg16_photos.keras --data ../shared/data/photos4 \\
        --out runs/head/vgg16 --plan 0:128 0:224 1:160 1:192
    python -m cam.train.head_training fit --checkpoint checkpoints/vgg16_photos.keras --data ../shared/data/photos4 \\
        --cache runs/head/vgg16 --teacher runs/head/teacher_train.npz --save runs/head/checkpoint

View 0 is the clean photo at its own aspect (as the page feeds it); views 1.. are ``cam.train.augment.photo_augment``'s,
each seeded by (seed, view, short side, image index).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import keras
import numpy as np
from PIL import Image
from scipy.optimize import minimize

from cam.core.device import cpu_name, describe_device
from cam.core.images import own_aspect
from cam.core.predict import predict_probabilities
from cam.data.folders import list_classes, list_images, split_train_validation
from cam.models.architectures import centre_classes, vgg16
from cam.models.checkpoints import load_checkpoint, save_checkpoint
from cam.train.augment import photo_augment
from cam.train.training import TrainConfig, teacher_targets

CHUNK = 256  # images per saved part of the cache: what a stopped run can lose
FEATURE_LAYER = "block5_conv3"
# The train/validation split of cam.train.training.train, so that the fitted head is judged on the same photos.
VALIDATION_FRACTION, SPLIT_SEED = TrainConfig.validation_fraction, TrainConfig.seed


def feature_model(model: keras.Model, layer: str = FEATURE_LAYER) -> keras.Model:
    """images (B, H, W, 3) RGB 0..255 -> the spatial mean of ``layer``'s maps (B, K); ``predict_probabilities``
    runs it on images of any shapes, batched by shape."""
    return keras.Model(model.inputs, keras.layers.GlobalAveragePooling2D()(model.get_layer(layer).output))


def view(path: Path, short_side: int, view_index: int, image_index: int, seed: int = 0) -> np.ndarray:
    """View ``view_index`` of a photo at ``short_side``: 0 the clean photo at its own aspect, else augmented."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if view_index == 0:
            return own_aspect(np.asarray(image), short_side)
        return photo_augment(image, short_side, np.random.default_rng((seed, view_index, short_side, image_index)))


def cache_views(
    out: Path, plan: list[tuple[int, int]], indices_of: Callable[[int], np.ndarray],
    compute: Callable[[int, int, np.ndarray], dict[str, np.ndarray]], extra: dict[str, np.ndarray | float], log=print,
    on_disk: tuple[str, ...] = (),
) -> None:
    """For every (view V, short side S) of ``plan`` not cached yet, ``out/size{S}_view{V}.npz``: the arrays of
    ``compute(S, V, chunk)`` over the photos ``indices_of(V)``, concatenated, with ``indices``, ``extra`` and
    ``seconds`` (the computing time of each part; ``cache_seconds`` sums them).
    Each CHUNK of photos is saved to ``out/parts`` as it is made (under a temporary name, then renamed, so a
    half-written part is never taken) and reused by a run started again: a stopped cache loses at most one part.
    The arrays named in ``on_disk`` (too large for memory: NoPool-GAP's full-resolution maps) go instead to
    ``out/size{S}_view{V}.{name}.npy``, part by part, for ``np.load(..., mmap_mode="r")``; their parts are then
    deleted, so the disk holds them once."""
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    for view_index, short_side in plan:
        final = out / f"size{short_side}_view{view_index}.npz"
        if final.exists():
            continue
        indices, made, part_paths, started, computed = indices_of(view_index), [], [], time.perf_counter(), 0
        for start in range(0, len(indices), CHUNK):
            part, chunk = parts / f"{final.stem}_{start:06d}.npz", indices[start:start + CHUNK]
            part_paths.append(part)
            if not part.exists():
                part_started = time.perf_counter()
                arrays = compute(short_side, view_index, chunk)
                # Each part keeps the time it took, so that a cache made over several runs still knows its cost.
                arrays["seconds"] = np.array([time.perf_counter() - part_started])
                np.savez(part.with_suffix(".tmp.npz"), **arrays)
                part.with_suffix(".tmp.npz").rename(part)
                computed += len(chunk)  # parts reused from a stopped run do not count towards this run's speed
            with np.load(part) as loaded:  # parts made before parts were timed: time unknown
                made.append({"seconds": np.array([np.nan]),
                             **{key: loaded[key] for key in loaded.files if key not in on_disk}})
            speed = computed / (time.perf_counter() - started)
            log(f"{final.stem}: {start + len(chunk)}/{len(indices)} ({speed:.1f} photos/s computed this run)")
        for name in on_disk:
            concatenate_to_npy(part_paths, name, out / f"{final.stem}.{name}.npy")
        np.savez(final, **{key: np.concatenate([m[key] for m in made]) for key in made[0]}, indices=indices, **extra)
        if on_disk:
            for part in part_paths:
                part.unlink()


def concatenate_to_npy(parts: list[Path], name: str, path: Path) -> None:
    """Concatenate the array ``name`` of the .npz files ``parts`` (along axis 0) into the .npy file ``path``, one
    part in memory at a time (written under a temporary name, then renamed)."""
    shapes, dtypes = [], set()
    for part in parts:  # the shapes from the arrays' headers, without reading the arrays
        with zipfile.ZipFile(part) as archive, archive.open(f"{name}.npy") as header:
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(header)]
            shape, _, dtype = read_header(header)
        shapes.append(shape)
        dtypes.add(dtype)
    if len(dtypes) != 1:
        raise ValueError(f"the parts' '{name}' arrays differ in type: {dtypes}")
    total = (sum(shape[0] for shape in shapes), *shapes[0][1:])
    temporary = path.with_suffix(".tmp.npy")
    whole = np.lib.format.open_memmap(temporary, mode="w+", dtype=dtypes.pop(), shape=total)
    at = 0
    for part, shape in zip(parts, shapes, strict=True):
        with np.load(part) as loaded:
            whole[at:at + shape[0]] = loaded[name]
        at += shape[0]
    whole.flush()
    del whole
    temporary.rename(path)


def pooled_part(
    pooled: keras.Model, paths: list[Path], seed: int, short_side: int, view_index: int, chunk: np.ndarray
) -> dict[str, np.ndarray]:
    """One part of the cache: ``features``, ``pooled`` on view ``view_index`` of the photos ``paths[chunk]``."""
    return {"features": predict_probabilities(pooled, [view(paths[i], short_side, view_index, i, seed) for i in chunk])}


def cache_features(
    model: keras.Model, paths: list[Path], out: Path, plan: list[tuple[int, int]], seed: int = 0, log=print,
    layer: str = FEATURE_LAYER,
) -> None:
    """Write ``out/size{S}_view{V}.npz`` (``features`` (N, K): ``layer``'s pooled maps, ``files``) for every (view V,
    short side S) of ``plan``, in order, through ``cache_views``."""
    every_photo = np.arange(len(paths))
    cache_views(out, plan, lambda _: every_photo, partial(pooled_part, feature_model(model, layer), paths, seed),
                {"files": np.asarray([str(p) for p in paths])}, log)


def cross_entropy(kernel: np.ndarray, features: np.ndarray, targets: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """Mean soft-target cross-entropy of softmax(features @ kernel) plus l2 * |kernel|^2, and its gradient."""
    logits = features @ kernel
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    loss = -np.mean(np.sum(targets * np.log(np.clip(probabilities, 1e-12, 1.0)), axis=1)) + l2 * np.sum(kernel**2)
    gradient = features.T @ (probabilities - targets) / len(features) + 2 * l2 * kernel
    return float(loss), gradient


def fit_linear_head(features: np.ndarray, targets: np.ndarray, l2: float, scale: float) -> np.ndarray:
    """The bias-free kernel (K, C) minimising ``cross_entropy`` on ``features`` / ``scale`` (L-BFGS), returned for
    the unscaled features and centred over classes (the regularised optimum is centred already; this makes it
    exact)."""
    scaled = features / scale
    shape = (features.shape[1], targets.shape[1])

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        loss, gradient = cross_entropy(flat.reshape(shape), scaled, targets, l2)
        return loss, gradient.ravel()

    result = minimize(objective, np.zeros(np.prod(shape)), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    return centre_classes(result.x.reshape(shape) / scale).astype(np.float32)


def grid_edge_note(chosen: float, tried: list[float]) -> str | None:
    """A note when the chosen penalty is the smallest or largest of several tried (the best may lie beyond it),
    else None."""
    if len(set(tried)) < 2 or min(tried) < chosen < max(tried):
        return None
    extreme, beyond = ("smallest", "smaller") if chosen == min(tried) else ("largest", "larger")
    return f"l2 {chosen:g} is the {extreme} tried: the best may lie beyond it; try {beyond} ones"


def linear_head_model(trained: keras.Model, kernel: np.ndarray) -> keras.Model:
    """``trained``'s convolutions with ``kernel`` as CAM's head (GAP -> Dense, no bias). VGG16 is rebuilt as
    ``cam.models.architectures.vgg16(head="linear")``, so that an MLP head goes; any other network (NoPool-GAP,
    whose head is GAP -> Dense already) keeps its layers, its Dense's bias set to 0."""
    if "block5_conv3" not in [layer.name for layer in trained.layers]:
        model = keras.models.clone_model(trained)
        model.set_weights(trained.get_weights())
        logits = model.get_layer("logits")
        logits.set_weights([kernel, np.zeros(kernel.shape[1], np.float32)][:len(logits.get_weights())])
        return model
    model = vgg16(num_classes=kernel.shape[1], batch_norm=False, head="linear")
    for layer in model.layers:
        if layer.weights and layer.name != "logits":
            layer.set_weights(trained.get_layer(layer.name).get_weights())
    model.get_layer("logits").set_weights([kernel])
    return model


def load_cache(directory: Path, paths: list[Path]) -> dict[tuple[int, int], np.ndarray]:
    """Every complete (short side, view) of the cache in ``directory``, checked to be of ``paths``, in order."""
    found = {}
    for path in sorted(directory.glob("size*_view*.npz")):
        size, view_index = (int(part) for part in path.stem.removeprefix("size").split("_view"))
        cached = np.load(path)
        if list(cached["files"]) != [str(p) for p in paths]:
            raise ValueError(f"{path} was made from other photos than {paths[0].parent.parent}")
        found[size, view_index] = cached["features"]
    return found


def cache_seconds(directory: Path) -> dict[str, float | None]:
    """The computing time of each complete (short side, view) of the cache in ``directory``, by file stem; None
    where some part's time is unknown."""
    seconds = {}
    for path in sorted(directory.glob("size*_view*.npz")):
        with np.load(path) as cached:
            total = float(cached["seconds"].sum()) if "seconds" in cached else float("nan")
        seconds[path.stem] = None if np.isnan(total) else round(total, 1)
    return seconds


def head_accuracy(
    cache: dict, photos: np.ndarray, labels: np.ndarray, kernel: np.ndarray, bias: np.ndarray | float = 0.0
) -> dict[str, float]:
    """Accuracy of the head (kernel, bias) on the clean views of ``photos``, by cached short side."""
    return {f"{side}": float(((cache[side, 0][photos] @ kernel + bias).argmax(1) == labels[photos]).mean())
            for side, view_index in cache if view_index == 0}


def checkpoint_and_photos(checkpoint: Path, data: Path) -> tuple:
    """(the trained checkpoint, the class names, the training photos' paths and labels), the device said."""
    trained = load_checkpoint(checkpoint)
    classes = list_classes(data, "train")
    paths, labels = list_images(data, "train", classes)
    print(f"{len(paths)} training photos; {describe_device()}")
    return trained, classes, paths, labels


def plan_entry(text: str) -> tuple[int, int]:
    """"V:S" (view V at short side S) -> (V, S)."""
    view_index, short_side = text.split(":")
    return int(view_index), int(short_side)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cam.train.head_training", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("cache", "fit"))
    parser.add_argument("--checkpoint", type=Path, required=True, help="the trained network whose convolutions stay")
    parser.add_argument("--data", type=Path, required=True, help="image-folder root with train/<class>/")
    parser.add_argument("--plan", type=plan_entry, nargs="+", metavar="V:S",
                        default=[(0, 128), (0, 224), (1, 160), (1, 192), (0, 160), (0, 192), (1, 128), (1, 224)],
                        help="cache: the views (0 clean, 1.. augmented) and short sides to cache, in order")
    parser.add_argument("--cache", "--out", dest="cache", type=Path, required=True, help="the features' folder")
    parser.add_argument("--teacher", type=Path, help="the teacher's .npz (cam.train.teacher) for soft targets")
    parser.add_argument("--teacher-weight", type=float, default=0.5)
    parser.add_argument("--l2", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
                        help="penalties tried; the best on validation is kept")
    parser.add_argument("--save", type=Path, help="fit: write the checkpoint and card into this folder")
    args = parser.parse_args(argv)

    trained, classes, paths, labels = checkpoint_and_photos(args.checkpoint, args.data)
    if args.step == "cache":
        # The layer the head reads, which Grad-CAM reads too: block5_conv3 for VGG16, cam_features for NoPool-GAP.
        cache_features(trained.model, paths, args.cache, args.plan, layer=trained.card["gradcam_layer"])
        return
    started = time.perf_counter()
    train, validation = split_train_validation(len(paths), VALIDATION_FRACTION, SPLIT_SEED)
    targets = teacher_targets(args.teacher, args.data, paths, labels, args.teacher_weight, len(classes))
    cache = load_cache(args.cache, paths)
    print(f"cached: {sorted(cache)}")
    own = trained.model.get_layer("logits").get_weights()
    if own[0].shape[0] == next(iter(cache.values())).shape[1]:  # the checkpoint's head reads these features: compare
        print(f"the checkpoint's own head: validation accuracy (clean views) "
              f"{head_accuracy(cache, validation, labels, *own)}")
    features = np.concatenate([cache[key][train] for key in cache])
    fit_targets = np.concatenate([targets[train]] * len(cache))
    scale = float(features.std())
    results = []
    for l2 in args.l2:
        kernel = fit_linear_head(features, fit_targets, l2, scale)
        accuracy = head_accuracy(cache, validation, labels, kernel)
        results.append((np.mean(list(accuracy.values())), l2, kernel, accuracy))
        print(f"l2 {l2:g}: validation accuracy (clean views) {accuracy}")
    _, l2, kernel, accuracy = max(results, key=lambda row: row[0])
    print(f"chosen l2 {l2:g}")
    if note := grid_edge_note(l2, args.l2):
        print(note)
    if args.save:
        seconds = {"cache": cache_seconds(args.cache), "fit": round(time.perf_counter() - started, 1)}
        save_head(trained, kernel, args, sorted(cache), accuracy, l2, len(train), len(validation), seconds)


def save_head(
    trained, kernel: np.ndarray, args, cached: list, accuracy: dict, l2: float, n_train: int, n_validation: int,
    seconds: dict,
) -> Path:
    """Write the new checkpoint and its card (the trained card's fields kept, the head's recipe added)."""
    model = linear_head_model(trained.model, kernel)
    before = trained.card["training"]
    card = {**trained.card, "parameters": int(model.count_params())}
    layer = trained.card["gradcam_layer"]
    card["training"] = {
        "init": f"{before.get('init')}; trained by {before.get('trainer')} (see 'previous'); these convolutions "
                "kept as they were, the head fitted here",
        "head": f"{layer} -> GAP -> Dense({kernel.shape[1]}) without bias (one the network has is set to 0), weights "
                f"centred over the classes (CAM's head): Grad-CAM at {layer} is CAM / (h w), and the top class's map "
                "is never blank",
        "trainer": "cam.train.head_training: the head fitted by L-BFGS (softmax cross-entropy, L2) on cached pooled "
                   f"features, on {describe_device()}",
        "views": f"(short side, view) {sorted(cached)}, own aspect; view 0 is the clean photo, the others "
                 "cam.train.augment.photo_augment's; photos4's short side is 160, so 192 and 224 are upsampled",
        "targets": (f"{1 - args.teacher_weight:g} one-hot + {args.teacher_weight:g} EfficientNet-Lite0 teacher "
                    "(class biases refitted)") if args.teacher else "one-hot",
        "l2": l2,
        "split": f"{n_train} train / {n_validation} validation from train/, seed {SPLIT_SEED}",
        "validation_accuracy_by_size": accuracy,
        "seconds": seconds,  # {"cache": {file stem: s}, "fit": s}: where the CPU route's hours go
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.platform()}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "previous": trained.card["training"],
    }
    card["metrics"] = {}
    path = save_checkpoint(model, card, args.save)
    print(f"wrote {path} and its card")
    return path


if __name__ == "__main__":
    main()
