"""cam.data on tiny datasets built here: counts, labels, split, bad files, tf.data, augmentation, CIFAR-10 archive."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import CLASS_COLOURS, NOISE, TINY_COUNTS, TINY_SIZE
from PIL import Image

from cam.data.downloads import CIFAR10_NAMES, download_cifar4, md5sum, write_cifar4
from cam.data.folders import (
    STUDY_HOLD_OUT,
    DataError,
    held_out,
    list_classes,
    load_split,
    parse_hold_out,
    split_train_validation,
)
from cam.train.pipelines import augment, cut_mix, cut_out, to_dataset

CLASSES = sorted(CLASS_COLOURS)


# --- image folders -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_counts_per_split_and_class(shared_tiny_dataset: Path, split: str) -> None:
    data = load_split(shared_tiny_dataset, split, TINY_SIZE)
    assert data.images.shape == (len(CLASSES) * TINY_COUNTS[split], TINY_SIZE, TINY_SIZE, 3)
    assert data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [TINY_COUNTS[split]] * len(CLASSES)
    assert data.bad_files == []


def test_labels_are_class_folders_in_sorted_order(shared_tiny_dataset: Path) -> None:
    data = load_split(shared_tiny_dataset, "train", TINY_SIZE)
    assert list_classes(shared_tiny_dataset, "train") == data.classes == CLASSES
    for image, label, path in zip(data.images, data.labels, data.paths, strict=True):
        assert path.parent.name == CLASSES[label]
        # The pixels are that class's colour, so the label belongs to the image and not just to its path.
        assert np.abs(image.mean(axis=(0, 1)) - CLASS_COLOURS[CLASSES[label]]).max() < NOISE


def test_images_are_resized_to_the_requested_size(shared_tiny_dataset: Path) -> None:
    assert load_split(shared_tiny_dataset, "test", 48).images.shape[1:] == (48, 48, 3)


def test_corrupt_and_fake_images_are_reported_and_the_rest_loads(tiny_dataset: Path) -> None:
    cat = tiny_dataset / "train" / "cat"
    corrupt, fake = cat / "corrupt.png", cat / "notes.jpg"
    corrupt.write_bytes((cat / "000.png").read_bytes()[:60])  # a PNG cut inside its pixel data
    fake.write_text("this is text, not a photo\n")
    data = load_split(tiny_dataset, "train", TINY_SIZE)
    assert {path for path, _ in data.bad_files} == {corrupt, fake}
    assert all(reason for _, reason in data.bad_files)
    assert len(data.labels) == len(data.images) == len(data.paths) == len(CLASSES) * TINY_COUNTS["train"]
    assert corrupt not in data.paths and fake not in data.paths


def test_a_missing_split_is_a_data_error(tiny_dataset: Path) -> None:
    with pytest.raises(DataError, match="validation"):
        load_split(tiny_dataset, "validation", TINY_SIZE)


# --- train / validation split ----------------------------------------------------------------------------------------


def test_split_is_reproducible_disjoint_and_complete() -> None:
    train, validation = split_train_validation(50, 0.2, seed=3)
    again_train, again_validation = split_train_validation(50, 0.2, seed=3)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(validation, again_validation)
    assert len(validation) == 10
    assert not set(train) & set(validation)
    assert sorted([*train, *validation]) == list(range(50))


def test_split_changes_with_the_seed() -> None:
    _, validation = split_train_validation(50, 0.2, seed=3)
    _, other = split_train_validation(50, 0.2, seed=4)
    assert set(validation) != set(other)


# --- held-out sources ------------------------------------------------------------------------------------------------


def test_a_hold_out_is_class_equals_source_and_anything_else_is_refused() -> None:
    assert parse_hold_out("cat=Chuck-man/laba5") == ("cat", "Chuck-man/laba5")
    assert [parse_hold_out(pair)[0] for pair in STUDY_HOLD_OUT] == ["bird", "cat", "dog", "horse"]
    for bad in ("cat", "=Chuck-man/laba5", "cat="):
        with pytest.raises(ValueError, match="CLASS=SOURCE"):
            parse_hold_out(bad)


def test_held_out_marks_that_class_of_that_source_only() -> None:
    """A source holding cats and dogs: holding out its cats leaves its dogs (the study's hard case)."""
    classes = ["cat", "dog"]
    labels = np.array([0, 0, 1, 1, 0])
    sources = ["a", "b", "a", "b", "a"]
    np.testing.assert_array_equal(held_out(sources, labels, classes, [("cat", "a")]), [1, 0, 0, 0, 1])
    np.testing.assert_array_equal(held_out(sources, labels, classes, [("cat", "a"), ("dog", "b")]), [1, 0, 0, 1, 1])
    np.testing.assert_array_equal(held_out(None, labels, classes, []), [0, 0, 0, 0, 0])


@pytest.mark.parametrize(("pairs", "sources", "message"), [
    ([("horse", "a")], ["a", "a"], "no class 'horse'"),
    ([("dog", "a")], ["a", "b"], "no dog photo of that source"),  # a misspelt source would hold out nothing
    ([("cat", "a")], None, "MANIFEST.csv"),
])
def test_a_hold_out_that_holds_out_nothing_is_an_error(pairs, sources, message: str) -> None:
    with pytest.raises((ValueError, DataError), match=message):
        held_out(sources, np.array([0, 1]), ["cat", "dog"], pairs)


# --- tf.data ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [False, True])
def test_to_dataset_yields_float_images_and_one_hot_labels(shared_tiny_dataset: Path, training: bool) -> None:
    data = load_split(shared_tiny_dataset, "test", TINY_SIZE)
    batches = list(to_dataset(data, batch_size=5, training=training))
    assert [len(x) for x, _ in batches] == [5, 5, 2]
    images, labels = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    assert images.dtype == labels.dtype == np.float32
    assert images.shape == (12, TINY_SIZE, TINY_SIZE, 3) and labels.shape == (12, len(CLASSES))
    assert set(np.unique(labels)) == {0.0, 1.0}
    np.testing.assert_array_equal(labels.sum(axis=1), 1.0)
    if not training:  # in order and untouched, so they can be compared with the source
        np.testing.assert_array_equal(labels.argmax(axis=1), data.labels)
        np.testing.assert_array_equal(images, data.images.astype(np.float32))


def test_augment_keeps_a_constant_image_constant() -> None:
    images = tf.fill((3, 16, 16, 3), 77.0)
    out = augment(images, pad=4).numpy()
    assert out.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(out, 77.0)


@pytest.mark.parametrize("crop", [None, 5])
def test_augment_is_a_shifted_and_maybe_flipped_window_of_the_image(crop: int | None) -> None:
    tf.random.set_seed(0)
    pad, size = 2, 8
    side = crop or size
    images = np.random.default_rng(0).uniform(0, 255, (6, size, size, 3)).astype(np.float32)
    out = augment(tf.constant(images), pad=pad, crop=crop).numpy()
    assert out.shape == (6, side, side, 3)
    for image, shifted in zip(images, out, strict=True):
        windows = [
            np.pad(candidate, [(pad, pad), (pad, pad), (0, 0)], mode="reflect")[dy : dy + side, dx : dx + side]
            for candidate in (image, image[:, ::-1])
            for dy in range(size + 2 * pad - side + 1)
            for dx in range(size + 2 * pad - side + 1)
        ]
        assert any(np.array_equal(shifted, window) for window in windows)


@pytest.mark.parametrize("side", [1, 4, 7])
def test_cut_out_greys_one_clipped_square_and_keeps_the_rest(side: int) -> None:
    tf.random.set_seed(1)
    images = np.random.default_rng(1).uniform(0, 100, (64, 12, 12, 3)).astype(np.float32)  # never 127.5
    out = cut_out(tf.constant(images), side).numpy()
    for image, cut in zip(images, out, strict=True):
        grey = (cut == 127.5).all(axis=-1)
        rows, columns = np.nonzero(grey)
        height, width = np.ptp(rows) + 1, np.ptp(columns) + 1
        assert grey.sum() == height * width  # one filled rectangle ...
        assert height <= side and width <= side  # ... a square, clipped where it crosses the border
        assert height == side or rows.min() == 0 or rows.max() == 11
        assert width == side or columns.min() == 0 or columns.max() == 11
        np.testing.assert_array_equal(cut[~grey], image[~grey])
    # centres are uniform over the image, so over 64 images some squares are clipped and some are whole
    clipped = [(out[i] == 127.5).all(axis=-1).sum() < side * side for i in range(len(out))]
    assert side == 1 or 0 < sum(clipped) < len(out)


def test_augment_with_cutout_greys_a_square_in_each_image() -> None:
    out = augment(tf.fill((8, 16, 16, 3), 10.0), pad=2, cutout=6).numpy()
    grey = (out == 127.5).all(axis=-1)
    assert (grey.sum(axis=(1, 2)) > 0).all() and (grey.sum(axis=(1, 2)) <= 36).all()
    np.testing.assert_array_equal(out[~grey], 10.0)


def test_cut_mix_pastes_one_box_from_the_reversed_batch_and_mixes_labels_by_its_area() -> None:
    tf.random.set_seed(3)
    images = tf.constant(np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 10, 10, 3), np.float32))
    labels = tf.constant(np.eye(4, dtype=np.float32))
    shares = []
    for _ in range(40):
        mixed, mixed_labels = (t.numpy() for t in cut_mix(images, labels, probability=1.0))
        pasted = mixed[..., 0] != np.arange(4)[:, None, None]  # image i holds value i outside the box
        assert (pasted == pasted[0]).all()  # the same box in every image ...
        rows, columns = np.nonzero(pasted[0])
        if len(rows):  # ... one rectangle, filled from the partner in reverse order
            assert pasted[0].sum() == (np.ptp(rows) + 1) * (np.ptp(columns) + 1)
            np.testing.assert_array_equal(
                mixed[:, pasted[0], 0], np.broadcast_to(3 - np.arange(4)[:, None], (4, len(rows)))
            )
        share = pasted[0].mean()
        np.testing.assert_allclose(mixed_labels, (1 - share) * np.eye(4) + share * np.eye(4)[::-1], atol=1e-6)
        shares.append(share)
    assert min(shares) < 0.25 and max(shares) > 0.5  # box areas spread over [0, 1]


def test_cut_mix_with_probability_zero_changes_nothing() -> None:
    images, labels = tf.random.uniform((6, 8, 8, 3)), tf.constant(np.eye(6, dtype=np.float32))
    mixed, mixed_labels = cut_mix(images, labels, probability=0.0)
    np.testing.assert_array_equal(mixed, images)
    np.testing.assert_array_equal(mixed_labels, labels)


# --- CIFAR-10 archive ------------------------------------------------------------------------------------------------

PER_BATCH = len(CIFAR10_NAMES)  # one image of every class in every batch
CIFAR4 = ("bird", "cat", "dog", "horse")


def _cifar_batch(rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """A pickled batch in CIFAR-10's layout (rows of 1024 R, 1024 G, 1024 B values) and its HWC images."""
    images = rng.integers(0, 256, (PER_BATCH, 32, 32, 3), dtype=np.uint8)
    rows = images.transpose(0, 3, 1, 2).reshape(PER_BATCH, 3072)
    return pickle.dumps({b"data": rows, b"labels": list(range(PER_BATCH))}), images


@pytest.fixture
def cifar_archive(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny CIFAR-10 python archive, and the HWC images of each of its batches."""
    rng = np.random.default_rng(0)
    path, images = tmp_path / "cifar-10-python.tar.gz", {}
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            payload, images[name] = _cifar_batch(rng)
            member = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    return path, images


def test_write_cifar4_writes_the_four_classes_per_split(cifar_archive, tmp_path: Path) -> None:
    archive, images = cifar_archive
    out = tmp_path / "cifar4"
    assert write_cifar4(archive, out) == 6 * len(CIFAR4)
    for split, count in (("train", 5), ("test", 1)):
        assert sorted(p.name for p in (out / split).iterdir()) == list(CIFAR4)
        for name in CIFAR4:
            assert len(list((out / split / name).glob("*.png"))) == count
    # Pixels survive the CHW -> HWC conversion: the first train cat is data_batch_1's cat.
    cat = np.asarray(Image.open(out / "train" / "cat" / "0000.png"))
    np.testing.assert_array_equal(cat, images["data_batch_1"][CIFAR10_NAMES.index("cat")])


def test_write_cifar4_rejects_an_archive_without_batches(tmp_path: Path) -> None:
    archive = tmp_path / "empty.tar.gz"
    tarfile.open(archive, "w:gz").close()
    with pytest.raises(DataError, match="data_batch_1"):
        write_cifar4(archive, tmp_path / "out")


def test_download_from_a_file_url_with_the_right_checksum(cifar_archive, tmp_path: Path) -> None:
    archive, _ = cifar_archive
    out = tmp_path / "downloaded"
    assert download_cifar4(out, archive.as_uri(), md5sum(archive)) == 6 * len(CIFAR4)
    assert len(list((out / "test").rglob("*.png"))) == len(CIFAR4)


def test_download_with_the_wrong_checksum_is_refused(cifar_archive, tmp_path: Path) -> None:
    archive, _ = cifar_archive
    out = tmp_path / "downloaded"
    with pytest.raises(DataError, match="checksum"):
        download_cifar4(out, archive.as_uri(), "0" * 32)
    assert not (out / "train").exists()


def test_unreachable_url_says_where_to_put_the_archive(tmp_path: Path) -> None:
    out = tmp_path / "offline"
    with pytest.raises(DataError) as raised:
        download_cifar4(out, "http://127.0.0.1:9/cifar-10-python.tar.gz")
    assert str(out / "cifar-10-python.tar.gz") in str(raised.value)
    assert not (out / "cifar-10-python.tar.gz").exists()  # no half-written archive left to fail the checksum later
