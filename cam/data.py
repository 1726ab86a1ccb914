"""Image-folder datasets (``root/<split>/<class>/*.jpg|png``), train/validation split, tf.data pipelines,
and the CIFAR-10 download that writes the four-class ``cifar4`` folder."""

from __future__ import annotations

import csv
import gzip
import hashlib
import pickle
import shutil
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from cam.augment import photo_augment
from cam.gallery import configured_roots
from cam.images import IMAGE_SUFFIXES, ImageError, load_image, own_aspect, resize
from cam.models import CIFAR4_CLASSES

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
GITHUB_RAW = "https://raw.githubusercontent.com"
PHOTOS4_MANIFEST = Path(__file__).resolve().parent / "manifests" / "photos4.csv.gz"
PHOTO_SHORT_SIDE, PHOTO_LONG_SIDE = 160, 320
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DataError(RuntimeError):
    """A dataset folder or archive that cannot be used; the message says what to do."""


def data_root(explicit: str | Path | None = None) -> Path:
    """The dataset root: ``explicit`` if given, else $CAM_DATA (its first folder, when it lists several separated
    by ``os.pathsep`` for the dashboard), else ``data/`` in the project."""
    if explicit:
        return Path(explicit)
    configured = configured_roots()
    if configured:
        return configured[0]
    return Path(__file__).resolve().parent.parent / "data"


def list_classes(root: str | Path, split: str) -> list[str]:
    """Class names of a split: its sub-folders, sorted."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"No '{split}' folder in {root}: expected {root}/{split}/<class>/*.jpg")
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if not classes:
        raise DataError(f"{folder} has no class folders")
    return classes


def list_images(root: str | Path, split: str, classes: list[str] | None = None) -> tuple[list[Path], np.ndarray]:
    """Paths of the images of a split and their class indices, in a stable order."""
    classes = classes or list_classes(root, split)
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (Path(root) / split / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [index] * len(files)
    return paths, np.asarray(labels, dtype=np.int32)


@dataclass
class ImageSet:
    """Images of one split in memory, resized to the model's input, with the files that could not be read."""

    images: np.ndarray | list[np.ndarray]  # (N, size, size, 3) uint8, or a list of own-aspect (h, w, 3) images
    labels: np.ndarray  # (N,) int32
    classes: list[str]
    paths: list[Path]
    bad_files: list[tuple[Path, str]] = field(default_factory=list)

    def subset(self, indices: np.ndarray) -> ImageSet:
        paths = [self.paths[i] for i in indices]
        images = [self.images[i] for i in indices] if isinstance(self.images, list) else self.images[indices]
        return ImageSet(images, self.labels[indices], self.classes, paths, self.bad_files)


def load_split(
    root: str | Path, split: str, size: int, classes: list[str] | None = None, squash: bool = True
) -> ImageSet:
    """Decode every image of ``root/split`` at ``size`` x ``size`` (``squash``: the whole photo squeezed into the
    square, as training does), or with ``squash=False`` at its own aspect ratio with short side ``size``
    (``own_aspect``; ``images`` is then a list); unreadable files are listed in ``bad_files``."""
    classes = classes or list_classes(root, split)
    paths, labels = list_images(root, split, classes)
    if not paths:
        raise DataError(f"No images in {Path(root) / split}")
    images, kept, bad = [], [], []
    for i, path in enumerate(paths):
        try:
            image = load_image(path)
            images.append(resize(image, size) if squash else own_aspect(image, size))
            kept.append(i)
        except ImageError as error:
            bad.append((path, str(error)))
    if not images:
        raise DataError(f"No readable image in {Path(root) / split}; first problem: {bad[0][1]}")
    return ImageSet(np.stack(images) if squash else images, labels[kept], classes, [paths[i] for i in kept], bad)


def balanced_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` indices, as many of each class (as far as there are), in a seeded random order."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: n // len(classes)] for c in classes])
    return rng.permutation(chosen)


def split_train_validation(n: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, reproducible, disjoint split of ``range(n)`` into (train, validation) index arrays."""
    order = np.random.default_rng(seed).permutation(n)
    n_validation = int(round(n * validation_fraction))
    return np.sort(order[n_validation:]), np.sort(order[:n_validation])


def augment(images: tf.Tensor, pad: int = 4, crop: int | None = None, cutout: int = 0) -> tf.Tensor:
    """Random horizontal flip and a random shift of up to ``pad`` pixels (reflect-pad, then crop), per image;
    ``crop`` makes the crops ``crop`` x ``crop`` pixels instead of the images' size; ``cutout`` > 0 then greys out
    one random square of that side per image (see ``cut_out``)."""
    size = tf.shape(images)[1:3] if crop is None else tf.constant([crop, crop])
    images = tf.image.random_flip_left_right(images)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    images = tf.map_fn(
        lambda image: tf.image.random_crop(image, tf.concat([size, [3]], 0)), padded, fn_output_signature=images.dtype
    )
    return cut_out(images, cutout) if cutout else images


def random_box(
    height: tf.Tensor, width: tf.Tensor, side_y: tf.Tensor | int, side_x: tf.Tensor | int, shape: tuple | list = ()
) -> tf.Tensor:
    """Boolean mask, True inside a ``side_y`` x ``side_x`` box whose centre is uniform over the image; ``shape`` ()
    gives one box, mask [1, height, width]; [n, 1, 1] one box per image, mask [n, height, width]. Parts of a box
    outside the image are clipped, so boxes at the edges are smaller."""
    top = tf.random.uniform(shape, 0, height, dtype=tf.int32) - side_y // 2
    left = tf.random.uniform(shape, 0, width, dtype=tf.int32) - side_x // 2
    rows, columns = tf.range(height)[None, :, None], tf.range(width)[None, None, :]
    return (rows >= top) & (rows < top + side_y) & (columns >= left) & (columns < left + side_x)


def cut_out(images: tf.Tensor, side: int, fill: float = 127.5) -> tf.Tensor:
    """Cutout (DeVries & Taylor 2017): per image, set a ``side`` x ``side`` square to ``fill`` (mid-grey, which the
    models' preprocessing maps near zero). Its centre is uniform over the image, so squares at the edges are clipped:
    the net also sees whole objects."""
    shape = tf.shape(images)
    inside = random_box(shape[1], shape[2], side, side, shape=[shape[0], 1, 1])
    return tf.where(inside[..., None], tf.cast(fill, images.dtype), images)


def cut_mix(images: tf.Tensor, labels: tf.Tensor, probability: float) -> tuple[tf.Tensor, tf.Tensor]:
    """CutMix (Yun et al. 2019), for one batch: with ``probability``, paste one box from the batch in reverse order
    into every image, and mix the labels by pixel share: y = (1 - a) y + a y_reversed, where a is the box's area
    fraction after clipping. The box's unclipped area fraction is uniform in [0, 1] (Beta(1, 1)), its centre
    uniform over the image. The batch comes shuffled, so the reversed batch is a random partner."""
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    ratio = tf.sqrt(tf.random.uniform([]))
    side_y = tf.cast(tf.round(ratio * tf.cast(height, tf.float32)), tf.int32)
    side_x = tf.cast(tf.round(ratio * tf.cast(width, tf.float32)), tf.int32)
    inside = random_box(height, width, side_y, side_x) & (tf.random.uniform([]) < probability)
    share = tf.reduce_mean(tf.cast(inside, labels.dtype))
    mixed = tf.where(inside[..., None], images[::-1], images)
    return mixed, (1.0 - share) * labels + share * labels[::-1]


def to_dataset(
    data: ImageSet,
    batch_size: int,
    training: bool,
    seed: int = 0,
    crop: int | None = None,
    cutout: int = 0,
    cutmix: float = 0.0,
) -> tf.data.Dataset:
    """A batched, prefetched tf.data pipeline of (float32 RGB 0..255 images, one-hot labels); for training,
    augmented (see ``augment``; ``crop`` and ``cutout`` pass on), then CutMix with probability ``cutmix`` per batch."""
    one_hot = np.eye(len(data.classes), dtype=np.float32)[data.labels]
    dataset = tf.data.Dataset.from_tensor_slices((data.images, one_hot))
    if training:
        dataset = dataset.shuffle(len(data.labels), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)

    def augmented(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = augment(tf.cast(x, tf.float32), crop=crop, cutout=cutout)
        return cut_mix(x, y, cutmix) if cutmix else (x, y)

    to_float = augmented if training else (lambda x, y: (tf.cast(x, tf.float32), y))
    return dataset.map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def photo_dataset(
    paths: list[Path], targets: np.ndarray, size: int, batch_size: int, seed: int = 0, balance: bool = True
) -> tf.data.Dataset:
    """An endless training pipeline over image files: (float32 RGB 0..255 square views from
    ``cam.augment.photo_augment``, each seeded by (seed, its place in the stream)), targets).

    ``targets`` are one row per file (one-hot or soft labels). ``balance`` draws every class equally often (each
    class's files shuffled and repeated; classes mixed with equal weights), so the rarer horses count as much as the
    birds; otherwise files are drawn uniformly."""
    paths = np.asarray([str(path) for path in paths])
    targets = np.asarray(targets, np.float32)
    groups = [np.flatnonzero(targets.argmax(1) == c) for c in range(targets.shape[1])] if balance else [None]
    streams = []
    for group in groups:
        if group is not None and not len(group):
            continue
        chosen = slice(None) if group is None else group
        files = tf.data.Dataset.from_tensor_slices((paths[chosen], targets[chosen]))
        streams.append(files.shuffle(len(paths[chosen]), seed=seed, reshuffle_each_iteration=True).repeat())
    dataset = streams[0] if len(streams) == 1 else tf.data.Dataset.sample_from_datasets(streams, seed=seed)

    def augmented(path: bytes, index: np.int64) -> np.ndarray:
        with Image.open(path.decode()) as image:
            rng = np.random.default_rng((seed, int(index)))
            return photo_augment(image, size, rng, square=True).astype(np.float32)

    def view(index: tf.Tensor, file: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        path, target = file
        image = tf.numpy_function(augmented, [path, index], tf.float32, stateful=False)
        return tf.ensure_shape(image, (size, size, 3)), target

    dataset = dataset.enumerate().map(view, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def read_manifest(root: str | Path) -> list[dict[str, str]]:
    """Rows of ``root/MANIFEST.csv`` (or a manifest file itself, .csv or .csv.gz): split, class, file, source_repo,
    commit, source_path, sha256, ...; [] when the dataset has none."""
    path = Path(root) if Path(root).is_file() else Path(root) / "MANIFEST.csv"
    if not path.is_file():
        return []
    with (gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")) as file:
        return list(csv.DictReader(file))


def sources_of(root: str | Path, paths: list[Path]) -> list[str] | None:
    """The source repository of each image, from the manifest ("unknown" for files it does not list); None when
    the dataset has no manifest."""
    by_file = {row["file"]: row["source_repo"] for row in read_manifest(root)}
    return [by_file.get(Path(path).relative_to(root).as_posix(), "unknown") for path in paths] if by_file else None


def load_masks(root: str | Path, data: ImageSet, size: int | None = None) -> dict[int, np.ndarray]:
    """Figure/ground masks of the images of ``data`` that have one (``root/masks/<split>/<class>/<name>.png``, 255 =
    object), as boolean arrays at the photo's size, or at ``size`` x ``size`` like the model input; keyed by index."""
    masks = {}
    for index, path in enumerate(data.paths):
        relative = Path(path).relative_to(root)
        mask_path = Path(root) / "masks" / relative.with_suffix(".png")
        if mask_path.is_file():
            mask = Image.open(mask_path).convert("L")
            if size:
                mask = mask.resize((size, size), Image.Resampling.NEAREST)
            masks[index] = np.asarray(mask) >= 128
    return masks


def write_cifar4(archive: str | Path, out: str | Path, classes: tuple[str, ...] = CIFAR4_CLASSES) -> int:
    """Write ``out/{train,test}/<class>/NNNN.png`` from a CIFAR-10 python archive; returns the image count."""
    wanted = {CIFAR10_NAMES.index(name): name for name in classes}
    batches = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    written = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for split, names in batches.items():
                counters = dict.fromkeys(classes, 0)
                for batch_name in names:
                    if batch_name not in members:
                        raise DataError(f"{archive} lacks {batch_name}: not a CIFAR-10 python archive")
                    batch = pickle.load(tar.extractfile(members[batch_name]), encoding="bytes")
                    pixels = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                    for image, label in zip(pixels, batch[b"labels"], strict=True):
                        if label not in wanted:
                            continue
                        name = wanted[label]
                        folder = Path(out) / split / name
                        folder.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(image).save(folder / f"{counters[name]:04d}.png")
                        counters[name] += 1
                        written += 1
    except (tarfile.TarError, EOFError, pickle.UnpicklingError, KeyError) as error:
        raise DataError(f"{archive} is not a readable CIFAR-10 python archive: {error}") from error
    return written


def md5sum(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_cifar4(out: str | Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> int:
    """Download the official CIFAR-10 python archive, check its MD5, write the four-class folder."""
    archive = Path(out) / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    if not archive.exists():
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as file:
                shutil.copyfileobj(response, file)
        except (OSError, ValueError) as error:  # ValueError: a malformed URL
            archive.unlink(missing_ok=True)
            raise DataError(
                f"Could not download {url} ({error}). If you are offline, copy the archive to {archive} "
                "and run the command again."
            ) from error
    if md5sum(archive) != md5:
        raise DataError(f"{archive} has the wrong checksum (expected MD5 {md5}); delete it and download again")
    return write_cifar4(archive, out)


def photo_as_in_photos4(image: Image.Image, resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """photos4's resizing: the short side down to PHOTO_SHORT_SIDE (never up), then a long side over PHOTO_LONG_SIDE
    centre-cropped to it."""
    width, height = image.size
    scale = min(1.0, PHOTO_SHORT_SIDE / min(width, height))
    if scale < 1.0:
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        image = image.resize((width, height), resample)
    left, top = max(0, (width - PHOTO_LONG_SIDE) // 2), max(0, (height - PHOTO_LONG_SIDE) // 2)
    return image.crop((left, top, left + min(width, PHOTO_LONG_SIDE), top + min(height, PHOTO_LONG_SIDE)))


def fetch_checked(url: str, sha256: str) -> bytes:
    """The bytes at ``url``, checked against their sha256; DataError when unreachable or different."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except (OSError, ValueError) as error:
        raise DataError(
            f"Could not download {url} ({error}). Rebuilding photos4 needs internet access to the source "
            "repositories; offline, copy an existing photos4 folder instead and pass it with --data or $CAM_DATA."
        ) from error
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"{url} has changed: its sha256 is not the manifest's {sha256}")
    return data


def rebuild_photos4(
    out: str | Path, manifest: str | Path = PHOTOS4_MANIFEST, url_base: str = GITHUB_RAW, log=print
) -> int:
    """Rebuild photos4 from its manifest: fetch every source file (and horse mask) from its repository at the pinned
    commit, check its sha256, decode it like every photo here (EXIF, RGB on white), resize like photos4, write JPEG
    quality 90 (masks: PNG, 255 = horse, nearest-neighbour resizing) and a copy of the manifest; returns the count.
    Files already written are kept, so an interrupted rebuild continues."""
    rows = read_manifest(manifest)
    if not rows:
        raise DataError(f"No manifest at {manifest}")
    out = Path(out)
    for count, row in enumerate(rows, start=1):
        base = f"{url_base}/{row['source_repo']}/{row['commit']}/"
        target = out / row["file"]
        if not target.is_file():
            data = fetch_checked(base + urllib.parse.quote(row["source_path"]), row["sha256"])
            target.parent.mkdir(parents=True, exist_ok=True)
            photo = photo_as_in_photos4(Image.fromarray(load_image(data)))
            photo.save(target, quality=90)
        if row.get("mask_file") and not (out / row["mask_file"]).is_file():
            data = fetch_checked(base + urllib.parse.quote(row["mask_source_path"]), row["mask_sha256"])
            mask = Image.fromarray(((load_image(data)[..., 0] >= 128) * 255).astype(np.uint8))
            (out / row["mask_file"]).parent.mkdir(parents=True, exist_ok=True)
            photo_as_in_photos4(mask, Image.Resampling.NEAREST).save(out / row["mask_file"])
        if count % 500 == 0:
            log(f"{count} of {len(rows)} images")
    with open(out / "MANIFEST.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
