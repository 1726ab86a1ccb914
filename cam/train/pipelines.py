"""tf.data pipelines for training: batches of a loaded split with the CIFAR augmentation (shifts, flips,
cut-out, CutMix), and the photo pipeline that draws each view with ``cam.train.augment.photo_augment``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from cam.data.folders import ImageSet
from cam.train.augment import photo_augment


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
    ``cam.train.augment.photo_augment``, each seeded by (seed, its place in the stream)), targets).

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
