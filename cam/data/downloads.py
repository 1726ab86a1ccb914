"""Getting the datasets: the CIFAR-10 download that writes the four-class ``cifar4`` folder, and rebuilding
``photos4`` from its sources by the manifest (each file checked by its hash)."""

from __future__ import annotations

import csv
import hashlib
import pickle
import shutil
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from cam.core.catalog import CIFAR4_CLASSES
from cam.core.images import load_image
from cam.data.folders import PHOTO_LONG_SIDE, PHOTO_SHORT_SIDE, PHOTOS4_MANIFEST, DataError, read_manifest

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"


GITHUB_RAW = "https://raw.githubusercontent.com"


CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


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
