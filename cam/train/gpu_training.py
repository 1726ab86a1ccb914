"""Training the photo pair on a borrowed GPU machine that has PyTorch but no TensorFlow: Keras 3 on its torch
backend runs the builders of ``cam.models`` themselves (one definition of each network), in a plain PyTorch loop.

    python -m cam.train.gpu_training pack --data ../shared/data/photos4 --teacher runs/teacher/train.npz --out runs/gpu
    python -m cam.train.gpu_training fit --pack runs/gpu --model vgg16_photos --seconds 400 --out OUT   # there
    python -m cam.train.gpu_training import --run OUT --model vgg16_photos                              # here again

``pack`` writes what the GPU machine needs and nothing else (its transfer holds 64 MiB): the training split as WebP
bytes (quality WEBP_QUALITY, photos4's own 160 px), the train/validation split of ``cam.train.training.train`` (seed 0),
each training image's target (one-hot mixed with the calibrated teacher, ``cam.train.training.teacher_targets``), and
the starting weights of each network by layer name (large kernels as int8 with a scale per output channel).
``fit`` draws, per batch, a short side from TRAINING_SIDES and photos of similar aspect, makes each view with
``cam.train.augment.photo_augment`` (the one augmentation of every route) at the photo's own aspect, keeps the weights
of the best validation accuracy (mean over VALIDATION_SIDES) and writes them after every epoch, so that a stopped run
continues with ``--init OUT``. ``import`` builds the same network here (TensorFlow), copies the weights by layer
name, and saves the checkpoint with the run's record; its card's figures come from ``python -m cam evaluate``.

A held-out-source run: ``pack --start fresh --hold-out CLASS=SOURCE ...`` (nothing learnt from photos4 at the start;
those photos marked in the pack), then ``fit`` leaves them out and ``fit --with-held-out``, its control, does not.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cam.core.images import MAX_ASPECT, input_shape, resize, view_box
from cam.data.folders import STUDY_HOLD_OUT, parse_hold_out
from cam.train.augment import photo_augment

TRAINING_SIDES = (128, 160, 192, 224)  # short sides drawn per batch; photos4's is 160, so 192 and 224 upsample
VALIDATION_SIDES = (128, 224)
WEBP_QUALITY = 75
INT8_MIN_SIZE = 100_000  # kernels with at least this many weights travel as int8 (VGG16's, 14.7 M weights in all)
CHUNK_BYTES = 15 * 2**20  # the GPU machine returns at most 8 files of at most 16 MiB each
RECIPES = {  # per network: batch, optimizer, learning rates of the body and of the ``logits`` layer
    "vgg16_photos": {"batch": 64, "optimizer": "adamw", "lr": 5e-5, "head_lr": 5e-4, "weight_decay": 1e-2,
                     "label_smoothing": 0.1},
    "nopool_gap_photos": {"batch": 64, "optimizer": "sgd", "lr": 0.02, "head_lr": 0.02, "weight_decay": 5e-4,
                          "label_smoothing": 0.1},
}


def build(name: str):
    """The Keras network of registry entry ``name`` (any input size), as ``cam.models`` defines it."""
    from cam.models.architectures import nopool_gap_dilated, vgg16

    if name == "vgg16_photos":
        return vgg16(batch_norm=False, head="linear")
    if name == "nopool_gap_photos":
        return nopool_gap_dilated()
    raise ValueError(f"no photo network {name!r}; there are {', '.join(RECIPES)}")


# --- weights by layer name ----------------------------------------------------------------------------------------


def layer_weights(model) -> dict[str, np.ndarray]:
    """``{"<layer>/<i>": array}`` for every weight of every layer (float32)."""
    return {
        f"{layer.name}/{i}": np.asarray(weight, np.float32)
        for layer in model.layers
        for i, weight in enumerate(layer.get_weights())
    }


def set_layer_weights(model, weights: dict[str, np.ndarray], skip: tuple[str, ...] = ("caffe_preprocess",)) -> None:
    """Set every layer of ``model`` from ``layer_weights``'s dict, checking that none is missing or misshapen."""
    for layer in model.layers:
        if not layer.weights or layer.name in skip:
            continue
        values = [weights.get(f"{layer.name}/{i}") for i in range(len(layer.weights))]
        shapes = [tuple(w.shape) for w in layer.weights]
        if any(v is None for v in values) or [v.shape for v in values] != shapes:
            raise ValueError(f"no weights of shapes {shapes} for layer {layer.name}")
        layer.set_weights(values)


def same_layers(a, b) -> bool:
    """Whether two models hold weights of the same names and shapes."""
    shapes = [{key: value.shape for key, value in layer_weights(model).items()} for model in (a, b)]
    return shapes[0] == shapes[1]


def quantized(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Large kernels as int8 ``<key>.q`` and a float32 scale per output channel (last axis) ``<key>.scale``: half
    the bytes of float16 for the transfer; the rest as they are."""
    packed = {}
    for key, array in weights.items():
        if array.size >= INT8_MIN_SIZE:
            scale = np.abs(array).reshape(-1, array.shape[-1]).max(axis=0) / 127.0
            scale[scale == 0] = 1.0
            packed[f"{key}.q"] = np.round(array / scale).astype(np.int8)
            packed[f"{key}.scale"] = scale.astype(np.float32)
        else:
            packed[key] = array
    return packed


def dequantized(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of ``quantized`` (to int8 rounding)."""
    weights = {key: value for key, value in packed.items() if not key.endswith((".q", ".scale"))}
    for key in packed:
        if key.endswith(".q"):
            stem = key[: -len(".q")]
            weights[stem] = packed[key].astype(np.float32) * packed[f"{stem}.scale"]
    return weights


def save_pieces(weights: dict[str, np.ndarray], stem: Path) -> list[list]:
    """All arrays as one float32 stream cut into ``<stem>.<k>.bin`` pieces of CHUNK_BYTES; returns the index
    [[key, shape, offset in floats], ...] that ``load_pieces`` needs."""
    index, offset = [], 0
    for key, array in weights.items():
        index.append([key, list(array.shape), offset])
        offset += array.size
    stream = np.concatenate([array.ravel().astype(np.float32) for array in weights.values()]).tobytes()
    for old in stem.parent.glob(f"{stem.name}.*.bin"):
        old.unlink()
    for k, start in enumerate(range(0, len(stream), CHUNK_BYTES)):
        Path(f"{stem}.{k}.bin").write_bytes(stream[start : start + CHUNK_BYTES])
    return index


def load_pieces(stem: Path, index: list[list]) -> dict[str, np.ndarray]:
    pieces = sorted(stem.parent.glob(f"{stem.name}.*.bin"), key=lambda p: int(p.suffixes[-2][1:]))
    stream = np.frombuffer(b"".join(piece.read_bytes() for piece in pieces), np.float32)
    return {key: stream[offset : offset + math.prod(shape)].reshape(shape) for key, shape, offset in index}


def run_weights(run: Path, name: str) -> tuple[dict[str, np.ndarray], dict]:
    """The best weights of a ``fit`` run and its record."""
    record = json.loads((run / f"{name}.json").read_text())
    return load_pieces(run / name, record["arrays"]), record


# --- data ---------------------------------------------------------------------------------------------------------


def decode(pack: dict, index: int) -> Image.Image:
    data = pack["images"][pack["offsets"][index] : pack["offsets"][index + 1]].tobytes()
    return Image.open(io.BytesIO(data)).convert("RGB")


def view_aspect(width: int, height: int) -> float:
    """Width / height of the part of a photo the networks see (``cam.core.images.view_box``)."""
    _, _, box_height, box_width = view_box(height, width, MAX_ASPECT)
    return box_width / box_height


class Views:
    """A map-style dataset over keys (image index, short side, epoch): the augmented view of that photo at that
    short side, own aspect, seeded by (seed, epoch, index) so that a run can be repeated."""

    def __init__(self, pack: dict, seed: int = 0) -> None:
        self.pack, self.seed = pack, seed

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        index, side, epoch = key
        rng = np.random.default_rng([self.seed, epoch, index])
        return photo_augment(decode(self.pack, index), side, rng), self.pack["targets"][index]


def batches_by_aspect(
    indices: np.ndarray, aspects: np.ndarray, batch: int, epoch: int, seed: int = 0
) -> list[list[tuple[int, int, int]]]:
    """One epoch of batches of keys for ``Views``: indices drawn so that classes come equally often (given as
    ``indices``, already drawn), grouped 16 batches at a time and sorted by aspect there, so that a batch holds
    photos of similar shape; one short side per batch from TRAINING_SIDES."""
    rng = np.random.default_rng([seed, epoch, 1])
    order = rng.permutation(indices)
    batches = []
    group = 16 * batch
    for start in range(0, len(order) - batch + 1, group):
        chunk = order[start : start + group]
        chunk = chunk[np.argsort(aspects[chunk], kind="stable")]
        batches += [chunk[i : i + batch] for i in range(0, len(chunk) - batch + 1, batch)]
    sides = rng.choice(TRAINING_SIDES, len(batches))
    keys = [[(int(i), int(side), epoch) for i in chunk] for chunk, side in zip(batches, sides, strict=True)]
    return [keys[i] for i in rng.permutation(len(keys))]


def collate(items: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Views of one batch cropped to their common (smallest) height and width about their centres, stacked."""
    height = min(view.shape[0] for view, _ in items)
    width = min(view.shape[1] for view, _ in items)
    views = []
    for view, _ in items:
        top, left = (view.shape[0] - height) // 2, (view.shape[1] - width) // 2
        views.append(view[top : top + height, left : left + width])
    return np.stack(views), np.stack([target for _, target in items])


def validation_batches(pack: dict, side: int, batch: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
    """The validation photos whole (view box) at short side ``side``, as ``cam.explain.pipeline`` feeds them, in batches
    of one shape."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    views = {}
    for index in pack["val_index"]:
        image = np.asarray(decode(pack, int(index)))
        top, left, height, width = view_box(*image.shape[:2], MAX_ASPECT)
        shape = input_shape(height, width, side)
        views[int(index)] = resize(image[top : top + height, left : left + width], shape)
        by_shape.setdefault(shape, []).append(int(index))
    out = []
    for members in by_shape.values():
        for start in range(0, len(members), batch):
            chosen = members[start : start + batch]
            out.append((np.stack([views[i] for i in chosen]), pack["labels"][chosen]))
    return out


def write_pack(
    out: Path, blobs: list[np.ndarray], labels: np.ndarray, train_index: np.ndarray, val_index: np.ndarray,
    targets: np.ndarray, files: list[str], held_out: np.ndarray | None = None,
) -> None:
    """``out/photos.npz``: the images' encoded bytes end to end with their offsets, labels, split, targets and which
    photos are held out (none by default)."""
    out.mkdir(parents=True, exist_ok=True)
    held_out = np.zeros(len(labels), bool) if held_out is None else held_out
    np.savez(out / "photos.npz", images=np.concatenate(blobs), offsets=np.cumsum([0] + [len(blob) for blob in blobs]),
             labels=labels, train_index=train_index, val_index=val_index, targets=targets, files=np.asarray(files),
             held_out=held_out)


def load_pack(directory: Path, with_held_out: bool = False) -> dict:
    """The pack's arrays; its held-out photos taken out of ``train_index`` and ``val_index`` unless
    ``with_held_out``."""
    with np.load(directory / "photos.npz") as pack:
        arrays = {key: pack[key] for key in pack.files}
    if not with_held_out and "held_out" in arrays:
        for key in ("train_index", "val_index"):
            arrays[key] = arrays[key][~arrays["held_out"][arrays[key]]]
    return arrays


# --- training (on the GPU machine) --------------------------------------------------------------------------------


def _engine(model, engine: str, where: str):
    """How a batch goes through ``model``: (forward(images, training) -> float32 logits, body parameters, head
    parameters, trained_weights() -> ``layer_weights`` dict). "twin": a ``cam.train.torch_twin.TorchTwin`` derived from
    the model, bfloat16 autocast on a GPU; "keras": the Keras model itself on the torch backend."""
    import keras
    import torch

    if engine == "twin":
        from cam.train.torch_twin import TorchTwin

        twin = TorchTwin(model).to(where)

        def forward(images, training: bool):
            twin.train(training)
            with torch.autocast("cuda", torch.bfloat16, enabled=where == "cuda"):
                return twin(images).float()

        def trained_weights() -> dict[str, np.ndarray]:
            twin.copy_to(model)
            return layer_weights(model)

        head = list(twin.layers["logits"].parameters())
        head_ids = {id(p) for p in head}
        body = [p for p in twin.parameters() if p.requires_grad and id(p) not in head_ids]
        return forward, body, head, trained_weights
    logits_model = keras.Model(model.inputs, model.get_layer("logits").output)
    head_ids = {id(v) for v in model.get_layer("logits").trainable_weights}
    body = [v.value for v in model.trainable_weights if id(v) not in head_ids]
    head = [v.value for v in model.get_layer("logits").trainable_weights]
    return (lambda images, training: logits_model(images, training=training).float()), body, head, \
        (lambda: layer_weights(model))


ENGINES = ("twin", "keras")


def fit(
    pack_dir: Path, name: str, seconds: float, out: Path, workers: int, init: Path | None = None,
    batch: int | None = None, engine: str = "twin", with_held_out: bool = False,
) -> dict:
    """Train ``name`` for about ``seconds``: the first epoch's time fixes the number of epochs (warm-up over it,
    cosine decay over the rest); after each epoch, the best weights so far and the record are written to ``out``.
    The pack's held-out photos stay out unless ``with_held_out`` (the control of a held-out run)."""
    import keras
    import torch

    cuda = torch.cuda.is_available()
    where = "cuda" if cuda else "cpu"  # Keras's torch backend keeps its variables there too
    if cuda and engine == "keras":
        keras.config.set_dtype_policy("mixed_bfloat16")
    torch.manual_seed(0)
    recipe = {**RECIPES[name], **({"batch": batch} if batch else {})}
    pack = load_pack(pack_dir, with_held_out)
    made = json.loads((pack_dir / "pack.json").read_text()) if (pack_dir / "pack.json").is_file() else {}
    made.update(held_out_used=with_held_out and bool(made.get("held_out")), train=len(pack["train_index"]),
                validation=len(pack["val_index"]))
    model = build(name)
    if init:
        weights, _ = run_weights(init, name)
    else:
        with np.load(pack_dir / f"init_{name}.npz") as packed:
            weights = dequantized({key: packed[key] for key in packed.files})
    set_layer_weights(model, weights)
    forward, body, head, trained_weights = _engine(model, engine, where)
    groups = [{"params": body, "lr": recipe["lr"]}, {"params": head, "lr": recipe["head_lr"]}]
    if recipe["optimizer"] == "adamw":
        optimizer = torch.optim.AdamW(groups, weight_decay=recipe["weight_decay"])
    else:
        optimizer = torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=recipe["weight_decay"])
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    train_index = pack["train_index"]
    labels = pack["labels"][train_index]
    balance = 1.0 / np.bincount(labels, minlength=4)[labels]
    aspects = np.asarray([view_aspect(*decode(pack, int(i)).size) for i in range(len(pack["labels"]))])
    dataset = Views(pack)
    validation = {side: validation_batches(pack, side) for side in VALIDATION_SIDES}

    def evaluate() -> dict[int, float]:
        scores = {}
        with torch.no_grad():
            for side, batches in validation.items():
                correct = 0
                for images, truth in batches:
                    logits = forward(torch.from_numpy(images).to(where).float(), training=False)
                    correct += int((logits.float().argmax(1).cpu().numpy() == truth).sum())
                scores[side] = correct / sum(len(truth) for _, truth in batches)
        return scores

    started, history, epochs, epoch, step = time.time(), [], None, 0, 0
    best, best_epoch, record = -1.0, 0, {}
    steps_per_epoch = len(train_index) // recipe["batch"]
    device = torch.cuda.get_device_name(0) if cuda else platform.processor() or "CPU"
    while epochs is None or epoch < epochs:
        epoch_start = time.time()
        rng = np.random.default_rng([0, epoch, 2])
        drawn = rng.choice(train_index, len(train_index), p=balance / balance.sum())
        keys = batches_by_aspect(drawn, aspects, recipe["batch"], epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=keys, collate_fn=collate, num_workers=workers,
            prefetch_factor=4 if workers else None,
        )
        total = 0.0
        for images, targets in loader:
            total_steps = (epochs or 10**9) * steps_per_epoch
            warm = min(1.0, (step + 1) / steps_per_epoch)
            decay = 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps))) if epochs else 1.0
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * warm * decay
            images = torch.from_numpy(images).to(where).float()  # uint8 across: a quarter of the bytes
            logits = forward(images, training=True)
            targets = torch.from_numpy(targets).to(where)
            smooth = recipe["label_smoothing"]
            soft = targets * (1 - smooth) + smooth / targets.shape[1]
            loss = -(soft * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            step += 1
        scores = evaluate()
        seconds_epoch = time.time() - epoch_start
        if epochs is None:  # the first epoch's time decides how many fit in the budget
            epochs = int(max(2, seconds // seconds_epoch))
        score = float(np.mean(list(scores.values())))
        history.append({"epoch": epoch + 1, "loss": round(total / max(len(keys), 1), 4), "s": round(seconds_epoch, 1),
                        **{f"val_{side}": round(value, 4) for side, value in scores.items()}})
        print(f"{name} epoch {epoch + 1}/{epochs} loss {history[-1]['loss']} val {scores} {seconds_epoch:.1f}s",
              flush=True)
        epoch += 1
        out.mkdir(parents=True, exist_ok=True)
        if score > best:
            best, best_epoch = score, epoch
            record["arrays"] = save_pieces(trained_weights(), out / name)
        record.update({
            "name": name, "recipe": {**recipe, "training_sides": list(TRAINING_SIDES), "budget_seconds": seconds},
            "init": str(init) if init else f"init_{name}.npz of the pack",
            "pack": made,
            "epochs_planned": epochs, "epochs_run": epoch, "best_epoch": best_epoch,
            "best_validation": {side: value for side, value in history[best_epoch - 1].items() if "val" in side},
            "seconds_total": round(time.time() - started, 1),
            "images_per_second": round(step * recipe["batch"] / (time.time() - started), 1),
            "device": device, "torch": torch.__version__, "keras": keras.__version__,
            "keras_backend": keras.backend.backend(), "engine": engine, "history": history,
        })
        (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    return record


# --- here: the pack and the checkpoint ----------------------------------------------------------------------------


def nopool_warm_start(old, new, images: np.ndarray) -> dict[str, np.ndarray]:
    """Weights for ``new`` (the 14-layer dilated NoPool-GAP) that compute what ``old`` (the 12-layer one) computes:
    layers conv1-10 copied, old conv11-12 become conv13-14, and the inserted conv11-12 (dilation 32) start as the
    identity: a centre-tap kernel and a BatchNorm whose moving statistics are those of conv10_relu's output on
    ``images`` with gamma = its std and beta = its mean, so that inference gives exactly the old logits."""
    import keras

    weights = layer_weights(old)
    renamed = {}
    for key, value in weights.items():
        layer, i = key.rsplit("/", 1)
        base = layer.split("_")[0]
        if base in ("conv11", "conv12"):
            layer = layer.replace(base, {"conv11": "conv13", "conv12": "conv14"}[base], 1)
        renamed[f"{layer}/{i}"] = value
    inputs = keras.Model(old.inputs, old.get_layer("conv10_relu").output).predict(images, verbose=0)
    mean = inputs.mean(axis=(0, 1, 2))
    variance = inputs.var(axis=(0, 1, 2))
    epsilon = new.get_layer("conv11_bn").epsilon
    channels = len(mean)
    for layer in ("conv11", "conv12"):
        kernel = np.zeros((3, 3, channels, channels), np.float32)
        kernel[1, 1] = np.eye(channels)
        renamed[f"{layer}/0"] = kernel
        renamed[f"{layer}_bn/0"] = np.sqrt(variance + epsilon).astype(np.float32)  # gamma
        renamed[f"{layer}_bn/1"] = mean.astype(np.float32)  # beta
        renamed[f"{layer}_bn/2"] = mean.astype(np.float32)  # moving mean
        renamed[f"{layer}_bn/3"] = variance.astype(np.float32)  # moving variance
    return renamed


STARTS = ("shipped", "fresh")  # where a pack's networks start: see start_weights


def start_weights(start: str, paths: list[Path], train_idx: np.ndarray, seed: int) -> dict[str, dict]:
    """The starting weights of both networks by layer name. "shipped": the shipped photo checkpoints (NoPool-GAP
    widened by ``nopool_warm_start`` if it has the older design). "fresh": nothing learnt from photos4, for a
    held-out run: VGG16's convolutions from HED with a seeded head, NoPool-GAP seeded from scratch."""
    import keras

    from cam.core.catalog import checkpoint_path
    from cam.models.architectures import load_hed_weights
    from cam.models.checkpoints import load_checkpoint

    if start == "fresh":
        keras.utils.set_random_seed(seed)
        vgg = build("vgg16_photos")
        load_hed_weights(vgg)
        return {"vgg16_photos": layer_weights(vgg), "nopool_gap_photos": layer_weights(build("nopool_gap_photos"))}
    vgg = load_checkpoint(checkpoint_path("vgg16_photos")).model
    old, new = load_checkpoint(checkpoint_path("nopool_gap_photos")).model, build("nopool_gap_photos")
    if same_layers(old, new):  # the shipped checkpoint has today's design: continue from it
        nopool = layer_weights(old)
    else:  # the 12-layer design: widened to today's
        rng = np.random.default_rng(seed)
        sample = np.stack([
            photo_augment(Image.open(paths[i]), 160, rng, square=True)
            for i in rng.choice(train_idx, 256, replace=False)
        ]).astype(np.float32)
        nopool = nopool_warm_start(old, new, sample)
    return {"vgg16_photos": layer_weights(vgg), "nopool_gap_photos": nopool}


def pack(
    data: Path, teacher: Path, out: Path, teacher_weight: float = 0.5, seed: int = 0,
    hold_out: list[tuple[str, str]] = (), start: str = "shipped",
) -> None:
    """Write ``out/photos.npz`` (training split as WebP, split indices, targets), ``out/init_<name>.npz``
    (``start_weights``) and ``out/pack.json`` (how the pack was made). ``hold_out``: (class, source) pairs whose
    photos ``load_pack`` leaves out of training and validation unless asked for them (the held-out run's control
    trains on the same pack with them)."""
    from cam.data.folders import held_out, list_classes, list_images, sources_of, split_train_validation
    from cam.train.training import teacher_targets

    if hold_out and start == "shipped":
        raise ValueError("the shipped checkpoints were trained on the photos to hold out: a held-out run starts "
                         "from nothing learnt on photos4 (--start fresh)")
    classes = list_classes(data, "train")
    paths, labels = list_images(data, "train", classes)
    held = held_out(sources_of(data, paths), labels, classes, list(hold_out))
    train_idx, val_idx = split_train_validation(len(labels), 0.1, seed)
    blobs = []
    for path in paths:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, "WEBP", quality=WEBP_QUALITY)
        blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    targets = np.eye(4, dtype=np.float32)[labels]
    targets[train_idx] = teacher_targets(teacher, data, [paths[i] for i in train_idx], labels[train_idx],
                                         teacher_weight, 4)
    write_pack(out, blobs, labels, train_idx, val_idx, targets, [path.relative_to(data).as_posix() for path in paths],
               held)
    for name, weights in start_weights(start, paths, train_idx, seed).items():
        np.savez(out / f"init_{name}.npz", **quantized(weights))
    made = {"start": start, "held_out": [f"{name}={source}" for name, source in hold_out],
            "held_out_photos": int(held.sum())}
    (out / "pack.json").write_text(json.dumps(made, indent=1))
    size = sum(len(blob) for blob in blobs) / 1e6
    print(f"packed {len(paths)} images ({size:.1f} MB WebP) and the starting weights of both networks in {out}: "
          f"{made}")


TRAINERS = {  # the card's words for each engine of ``fit``
    "keras": "cam.train.gpu_training: the cam.models builder itself under Keras {keras} on its {keras_backend} backend "
    "(PyTorch {torch}, Keras's mixed_bfloat16 policy) in a PyTorch loop, on {device}",
    "twin": "cam.train.gpu_training: a PyTorch module derived layer by layer from the cam.models builder "
    "(cam.train.torch_twin.TorchTwin; PyTorch {torch}, bfloat16 autocast), weights copied back into the Keras model, "
    "on {device}",
}
INITS = {  # per start of the pack (``STARTS``), per network
    ("fresh", "vgg16_photos"): "VGG16's convolutions from the HED edge detector (ImageNet VGG16 retrained on BSDS500 "
    "edges; nothing learnt from photos4), CAM's head seeded at random; large kernels rounded to int8 for the transfer",
    ("fresh", "nopool_gap_photos"): "seeded at random (Keras's initialisers): nothing learnt from photos4",
    ("shipped", "vgg16_photos"): "the previous vgg16_photos (VGG16's convolutions from the HED edge detector, i.e. "
    "ImageNet VGG16 retrained on BSDS500 edges, fine-tuned on photos4 at 128 px with an MLP head; then CAM's linear "
    "head), its large kernels rounded to int8 per output channel for the transfer",
    ("shipped", "nopool_gap_photos"): "the previous 12-layer nopool_gap_photos (trained from scratch on photos4 at "
    "128 px), widened to 14 layers by two dilation-32 layers that start as the identity "
    "(cam.train.gpu_training.nopool_warm_start)",
}


def import_run(run: Path, name: str, out: Path) -> Path:
    """Build ``name`` here (TensorFlow), copy the run's best weights by layer name (VGG16's linear head centred over
    the classes, which changes no probability), and save the checkpoint with a card holding the recipe and history;
    accuracy figures are added by ``python -m cam evaluate --update-card``."""
    import datetime

    from cam.core.device import describe_device
    from cam.models.architectures import centre_classes, default_gradcam_layer, receptive_field
    from cam.models.checkpoints import save_checkpoint

    weights, record = run_weights(run, name)
    made = record.get("pack", {})
    if name == "vgg16_photos":
        weights["logits/0"] = centre_classes(weights["logits/0"])
    model = build(name)
    set_layer_weights(model, weights)
    card = {
        "name": name,
        "architecture": "vgg16" if name == "vgg16_photos" else "nopool_gap_dilated",
        "classes": ["bird", "cat", "dog", "horse"],
        "input_size": 128,
        "preprocessing": "none outside the model: it takes RGB 0..255 (the photo at its own aspect, short side 128 "
        "by default, any size) and rescales inside (first layer)",
        "gradcam_layer": default_gradcam_layer(model),
        "parameters": int(model.count_params()),
        "receptive_field": receptive_field(model) if name != "vgg16_photos" else None,
        "training": {
            "init": INITS[made.get("start", "shipped"), name],
            "trainer": TRAINERS[record.get("engine", "keras")].format(**record),
            "data": "photos4/train, re-encoded as WebP (quality 75) for the transfer" + held_out_words(made),
            "split": f"{made.get('train', 6354)} train / {made.get('validation', 706)} validation from train/, seed 0 "
            "(the split of cam.train.training.train)",
            "views": "per batch a short side from 128, 160, 192, 224 (photos4's is 160: 192 and 224 are upsampled) "
            "and photos of similar aspect, each at its own aspect (cam.train.augment.photo_augment: JPEG "
            "re-compression, random crop, flip, rotation, colour jitter, frame), cropped to the batch's common shape; "
            "classes drawn equally often",
            "targets": "0.5 one-hot + 0.5 EfficientNet-Lite0 teacher (ImageNet groups summed to our classes, class "
            "log-biases refitted on the training labels), label smoothing 0.1",
            "selection": "the epoch with the best mean validation accuracy at short sides 128 and 224 (whole "
            "photos, own aspect)",
            "config": record["recipe"],
            "epochs_planned": record["epochs_planned"],
            "epochs_run": record["epochs_run"],
            "best_epoch": record["best_epoch"],
            "best_validation": record["best_validation"],
            "seconds_total": record["seconds_total"],
            "images_per_second": record["images_per_second"],
            "machine": f"trained on {record['device']} (the borrowed GPU machine); converted on {describe_device()}",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "history": record["history"],
        },
        "metrics": {},
    }
    earlier = Path(record["init"]) / f"{name}.json"  # a run continued with --init: keep its first part's record
    if earlier.is_file():
        first = json.loads(earlier.read_text())
        card["training"]["continued_from"] = {key: first[key] for key in RECORD_SUMMARY}
    return save_checkpoint(model, card, out)


def held_out_words(made: dict) -> str:
    """What the card's "data" adds for a pack with held-out photos (``made``: pack.json and the fit's use of it)."""
    if not made.get("held_out"):
        return ""
    pairs = f"{', '.join(made['held_out'])} ({made['held_out_photos']} photos)"
    if made.get("held_out_used"):
        return f"; every photo used: the control of the run that holds out {pairs}"
    return f"; held out of training and validation: {pairs}"


RECORD_SUMMARY = ("init", "recipe", "epochs_run", "best_epoch", "best_validation", "seconds_total",
                  "images_per_second", "device", "history")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cam.train.gpu_training", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="write what the GPU machine needs (here, with TensorFlow)")
    packing.add_argument("--data", type=Path, required=True)
    packing.add_argument("--teacher", type=Path, required=True, help="the teacher's .npz (python -m cam.train.teacher)")
    packing.add_argument("--out", type=Path, required=True)
    packing.add_argument("--hold-out", type=parse_hold_out, nargs="+", default=[], metavar="CLASS=SOURCE",
                         help="leave these photos out of training and validation (a source as MANIFEST.csv names it); "
                         f"the study's run: {' '.join(STUDY_HOLD_OUT)}")
    packing.add_argument("--start", choices=STARTS, default="shipped",
                         help="shipped: continue from the shipped photo checkpoints; fresh: from nothing learnt on "
                         "photos4 (HED's VGG16 convolutions, NoPool-GAP from scratch), as a held-out run needs")
    fitting = commands.add_parser("fit", help="train one network (on the GPU machine; Keras on torch)")
    fitting.add_argument("--pack", type=Path, required=True)
    fitting.add_argument("--model", choices=tuple(RECIPES), required=True)
    fitting.add_argument("--seconds", type=float, required=True, help="time budget; decides the number of epochs")
    fitting.add_argument("--out", type=Path, required=True)
    fitting.add_argument("--workers", type=int, default=6)
    fitting.add_argument("--init", type=Path, help="continue from the best weights of this earlier run's --out")
    fitting.add_argument("--batch", type=int, help="images per step (default: the network's recipe)")
    fitting.add_argument("--with-held-out", action="store_true",
                         help="train and validate on the photos the pack holds out too (a held-out run's control)")
    fitting.add_argument("--engine", choices=ENGINES, default="twin",
                         help="twin: a PyTorch module derived from the Keras network (faster); keras: the Keras "
                         "network itself on the torch backend (what the shipped checkpoints were trained with)")
    importing = commands.add_parser("import", help="a fit run to a checkpoint with its card (here)")
    importing.add_argument("--run", type=Path, required=True, help="the fit's --out folder")
    importing.add_argument("--model", choices=tuple(RECIPES), required=True)
    importing.add_argument("--out", type=Path, default=None, help="default: the checkpoints folder")
    args = parser.parse_args(argv)
    if args.command == "fit":
        os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is first imported
        fit(args.pack, args.model, args.seconds, args.out, args.workers, args.init, args.batch, args.engine,
            args.with_held_out)
    elif args.command == "pack":
        pack(args.data, args.teacher, args.out, hold_out=args.hold_out, start=args.start)
    else:
        from cam.core.catalog import CHECKPOINTS

        print(f"saved {import_run(args.run, args.model, args.out or CHECKPOINTS)}")


if __name__ == "__main__":
    main()
