"""Where the objects are: box annotations (Pascal VOC XML or JSON), box geometry, and 2x2 mosaics that turn a
classification set into images with one known box per class.

Boxes are ``(xmin, ymin, xmax, ymax)`` in continuous pixel coordinates of the original image: pixel column c
covers [c, c + 1), so a box over columns 0..9 has xmin 0 and xmax 10. The JSON format uses these coordinates;
VOC's are 1-based and inclusive (xmin 1 .. xmax 10 for the same columns) and are converted on reading.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Box = tuple[float, float, float, float]


class BoxError(ValueError):
    """An annotation file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Annotation:
    """The objects of one image: ``objects`` is a tuple of (class name, box)."""

    image: str
    width: int
    height: int
    objects: tuple[tuple[str, Box], ...]
    source: Path | None = None  # the annotation file, to find the image relative to it

    def boxes(self, name: str) -> list[Box]:
        """The boxes of class ``name`` (empty when the image has none)."""
        return [box for label, box in self.objects if label == name]

    @property
    def names(self) -> list[str]:
        """The classes present, sorted, each once."""
        return sorted({label for label, _ in self.objects})


# ------------------------------------------------------------------------------------------------------ reading
def _checked_box(box: list[float], width: int, height: int, where: str) -> Box:
    """Clip a box to the image; a box that is inverted or lies outside the image is an error."""
    xmin, ymin, xmax, ymax = (float(v) for v in box)
    clipped = (max(xmin, 0.0), max(ymin, 0.0), min(xmax, float(width)), min(ymax, float(height)))
    if clipped[0] >= clipped[2] or clipped[1] >= clipped[3]:
        raise BoxError(f"{where}: box {[xmin, ymin, xmax, ymax]} is empty inside the {width}x{height} image")
    return clipped


def _size(width, height, where: str) -> tuple[int, int]:
    try:
        size = int(width), int(height)
    except (TypeError, ValueError):
        raise BoxError(f"{where}: width and height must be integers, got {width!r} and {height!r}") from None
    if min(size) <= 0:
        raise BoxError(f"{where}: width and height must be positive, got {size[0]}x{size[1]}")
    return size


def _text(element: ElementTree.Element, path: str, where: str) -> str:
    found = element.find(path)
    if found is None or not (found.text or "").strip():
        raise BoxError(f"{where}: missing <{path}>")
    return found.text.strip()


def read_voc(path: str | Path) -> Annotation:
    """One Pascal VOC XML file: <filename>, <size><width>/<height>, and per <object> a <name> and a <bndbox>."""
    path = Path(path)
    try:
        # expat (Python >= 3.7.1 ships >= 2.4) refuses entity-expansion bombs, so untrusted files are safe to parse.
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise BoxError(f"{path}: not a readable XML file ({error})") from error
    if root.tag != "annotation":
        raise BoxError(f"{path}: the root element is <{root.tag}>, a VOC file has <annotation>")
    width, height = _size(_text(root, "size/width", str(path)), _text(root, "size/height", str(path)), str(path))
    objects = []
    for index, element in enumerate(root.findall("object"), start=1):
        where = f"{path}, object {index}"
        corners = [_text(element, f"bndbox/{key}", where) for key in ("xmin", "ymin", "xmax", "ymax")]
        try:
            xmin, ymin, xmax, ymax = (float(value) for value in corners)
        except ValueError:
            raise BoxError(f"{where}: box corners must be numbers, got {corners}") from None
        # VOC counts pixels from 1 and includes xmax: columns xmin..xmax are [xmin - 1, xmax) here.
        box = _checked_box([xmin - 1, ymin - 1, xmax, ymax], width, height, where)
        objects.append((_text(element, "name", where), box))
    return Annotation(_text(root, "filename", str(path)), width, height, tuple(objects), path)


def read_json(path: str | Path) -> list[Annotation]:
    """A JSON list of ``{image, width, height, objects: [{name, bbox: [xmin, ymin, xmax, ymax]}]}``."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BoxError(f"{path}: not a readable JSON file ({error})") from error
    if not isinstance(entries, list):
        raise BoxError(f"{path}: expected a JSON list of images, got {type(entries).__name__}")
    annotations = []
    for index, entry in enumerate(entries):
        where = f"{path}, entry {index}"
        if not isinstance(entry, dict) or not {"image", "width", "height", "objects"} <= entry.keys():
            raise BoxError(f"{where}: needs the keys image, width, height and objects")
        width, height = _size(entry["width"], entry["height"], where)
        if not isinstance(entry["objects"], list):
            raise BoxError(f"{where}: 'objects' must be a list")
        objects = []
        for number, item in enumerate(entry["objects"]):
            bbox = item.get("bbox") if isinstance(item, dict) else None
            valid = isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)
            if not valid or not isinstance(item.get("name"), str):
                raise BoxError(f"{where}, object {number}: needs a 'name' and a 'bbox' of four numbers")
            objects.append((item["name"], _checked_box(bbox, width, height, f"{where}, object {number}")))
        annotations.append(Annotation(str(entry["image"]), width, height, tuple(objects), path))
    return annotations


def read_boxes(path: str | Path) -> list[Annotation]:
    """Annotations from a .json file, a VOC .xml file, or a folder of VOC .xml files (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.xml"))
        if not files:
            raise BoxError(f"{path}: a folder of annotations must hold VOC .xml files; it has none")
        return [read_voc(file) for file in files]
    if path.suffix.lower() == ".json":
        return read_json(path)
    if path.suffix.lower() == ".xml":
        return [read_voc(path)]
    raise BoxError(f"{path}: expected a .json file, a VOC .xml file or a folder of .xml files")


def image_path(annotation: Annotation, data_root: str | Path | None = None) -> Path | None:
    """The image file of an annotation: its name as given if absolute, else looked up next to the annotation file,
    in ``../JPEGImages`` from it (VOC's layout), then under ``data_root``; None when it is nowhere."""
    name = Path(annotation.image)
    if name.is_absolute():
        return name if name.is_file() else None
    folders = [annotation.source.parent, annotation.source.parent.parent / "JPEGImages"] if annotation.source else []
    folders += [Path(data_root)] if data_root else []
    return next((folder / name for folder in folders if (folder / name).is_file()), None)


# ----------------------------------------------------------------------------------------------------- geometry
def box_mask(boxes: list[Box], shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centres lie inside any of ``boxes`` (edges included)."""
    rows, cols = np.arange(shape[0])[:, None] + 0.5, np.arange(shape[1])[None, :] + 0.5
    mask = np.zeros(shape, dtype=bool)
    for xmin, ymin, xmax, ymax in boxes:
        mask |= (cols >= xmin) & (cols <= xmax) & (rows >= ymin) & (rows <= ymax)
    return mask


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes: |a ∩ b| / |a ∪ b|."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ------------------------------------------------------------------------------------------------------ mosaics
def tile_boxes(tile_height: int, tile_width: int) -> list[Box]:
    """The four tiles of a 2x2 mosaic as boxes, row-major: top-left, top-right, bottom-left, bottom-right."""
    h, w = tile_height, tile_width
    return [(c * w, r * h, (c + 1) * w, (r + 1) * h) for r in (0, 1) for c in (0, 1)]


def mosaics(images: np.ndarray, labels: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 2x2 mosaics (n, 2H, 2W, 3) of images (N, H, W, 3), each of four different classes drawn at random
    (seeded), and the indices of the images in each tile (n, 4), row-major as in ``tile_boxes``."""
    rng = np.random.default_rng(seed)
    by_class = {label: np.flatnonzero(labels == label) for label in np.unique(labels)}
    if len(by_class) < 4:
        raise ValueError(f"mosaics need images of at least 4 classes; these have {len(by_class)}")
    names = np.array(sorted(by_class))
    picks = [[rng.choice(by_class[c]) for c in rng.choice(names, 4, replace=False)] for _ in range(n)]
    sources = np.array(picks, dtype=np.int64).reshape(n, 4)
    tiles = images[sources.reshape(-1)].reshape(n, 2, 2, *images.shape[1:])  # (n, tile row, tile col, H, W, 3)
    built = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * images.shape[1], 2 * images.shape[2], images.shape[3])
    return built, sources
