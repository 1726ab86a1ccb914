"""The pictures a visitor of the dashboard may choose: the built-in gallery that ships in ``cam/serve/examples``, plus
the dataset folders that whoever starts the server names in ``$CAM_DATA`` (one folder, or several separated by
``os.pathsep``). Visitors choose by name; a name is resolved only among these collections, never as a path, so a
name with ``..``, a backslash or an absolute path is refused. Nothing here knows about Streamlit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cam.core.images import IMAGE_SUFFIXES
from cam.core.names import shorten
from cam.data.folders import configured_roots
from cam.serve.examples import EXAMPLES, EXAMPLES_DIR

BUILT_IN = "examples"
SPLITS = ("test", "train")


class GalleryError(ValueError):
    """A picture name that is not in any allowed collection; the message is for a visitor (no server path)."""


@dataclass(frozen=True)
class Collection:
    """A named set of pictures: the built-in gallery or one dataset folder (``root/<split>/<class>/<file>``)."""

    name: str  # what visitors see and links carry
    root: Path  # never shown on the page
    built_in: bool = False

    def folders(self) -> list[str]:
        """The dataset's ``split/class`` folders that hold pictures ("" for the built-in gallery's one folder)."""
        if self.built_in:
            return [""]
        return [f"{split}/{name}" for split in SPLITS for name in self._entries(split, directories=True)]

    def pictures(self, folder: str) -> list[str]:
        """File names of the pictures of ``folder`` (one of ``folders()``), sorted."""
        if self.built_in:
            return [name for name in EXAMPLES if (self.root / name).is_file()]
        if folder not in self.folders():
            return []
        return [name for name in self._entries(folder, directories=False) if name.lower().endswith(IMAGE_SUFFIXES)]

    def _entries(self, folder: str, directories: bool) -> list[str]:
        """Sorted names of the real folders (or files) in ``root/folder`` that lie inside the root once every
        symbolic link is followed: a link leading out of the collection is not listed. A folder that cannot be
        read (removed meanwhile, no permission) has no entries."""
        root = self.root.resolve()
        try:
            entries = list(os.scandir(root / folder))
        except OSError:
            return []
        found = []
        for entry in entries:
            try:
                if not (entry.is_dir() if directories else entry.is_file()):
                    continue
                inside = Path(entry.path).resolve(strict=True).is_relative_to(root)
            except (OSError, RuntimeError):  # vanished, unreadable, or a loop of links
                continue
            if inside:
                found.append(entry.name)
        return sorted(found)


def collections(value: str | None = None) -> dict[str, Collection]:
    """The built-in gallery, then every configured dataset folder that exists and has a ``test/`` or ``train/``
    folder, by name (the folder's own name, numbered when two are alike)."""
    found = {BUILT_IN: Collection(BUILT_IN, EXAMPLES_DIR, built_in=True)}
    for root in configured_roots(value):
        if not any((root / split).is_dir() for split in SPLITS):
            continue
        name, number = root.resolve().name or "data", 2
        while name in found:
            name, number = f"{root.resolve().name} ({number})", number + 1
        found[name] = Collection(name, root)
    return found


def reference(collection: str, folder: str, picture: str) -> str:
    """The name of a picture that links carry: ``examples/chelsea.jpg`` or ``cifar4/test/cat/0001.png``."""
    return "/".join(part for part in (collection, folder, picture) if part)


def split_reference(name: str) -> tuple[str, str, str]:
    """(collection, folder, picture) of a picture name, checked for shape only; raises GalleryError."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/"):
        raise GalleryError("That picture name is not one of this page's pictures.")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise GalleryError("That picture name is not one of this page's pictures.")
    if parts[0] == BUILT_IN:
        if len(parts) != 2:
            raise GalleryError("That picture name is not one of this page's pictures.")
        return BUILT_IN, "", parts[1]
    if len(parts) != 4 or parts[1] not in SPLITS:
        raise GalleryError("That picture name is not one of this page's pictures.")
    return parts[0], f"{parts[1]}/{parts[2]}", parts[3]


def resolve(name: str, value: str | None = None) -> Path:
    """The file of picture ``name`` (see ``reference``), found only inside the allowed collections (``value``:
    as in ``collections``); raises GalleryError for anything else, including links that leave the folder."""
    collection_name, folder, picture = split_reference(name)
    collection = collections(value).get(collection_name)
    if collection is None or picture not in collection.pictures(folder):
        raise GalleryError("That picture is not in this page's gallery.")
    path = (collection.root / folder / picture).resolve()
    if not path.is_relative_to(collection.root.resolve()):  # a symbolic link pointing outside
        raise GalleryError("That picture is not in this page's gallery.")
    return path


def describe(name: str) -> str:
    """A picture's name in words, e.g. 'Chelsea the cat (built-in example)' or 'cifar4: test/cat/0001.png (true
    class: cat)'."""
    collection, folder, picture = split_reference(name)
    if collection == BUILT_IN:
        return f"{EXAMPLES.get(picture, picture)} (built-in example)"
    return f"{shorten(collection)}: {shorten(folder)}/{shorten(picture)} (true class: {shorten(folder.split('/')[1])})"
