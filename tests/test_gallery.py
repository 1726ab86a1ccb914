"""cam.serve.gallery: visitors reach only the built-in pictures and the dataset folders that $CAM_DATA names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cam.serve import gallery
from cam.serve.examples import EXAMPLES, EXAMPLES_DIR, LICENCES


def picture(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path


@pytest.fixture
def roots(tmp_path: Path) -> str:
    """$CAM_DATA's value: two datasets of the same name, one missing folder and one folder without splits."""
    for root in (tmp_path / "a" / "pets", tmp_path / "b" / "pets"):
        picture(root / "test" / "cat" / "0001.png")
        picture(root / "train" / "dog" / "0002.jpg")
    (tmp_path / "b" / "pets" / "test" / "cat" / "notes.txt").write_text("not a picture")
    picture(tmp_path / "loose" / "x.png")
    picture(tmp_path / "secret" / "test" / "cat" / "0001.png")
    parts = [tmp_path / "a" / "pets", tmp_path / "missing", tmp_path / "b" / "pets", tmp_path / "loose", ""]
    return os.pathsep.join(str(part) for part in parts)


def test_the_built_in_gallery_ships_small_licensed_pictures() -> None:
    files = [EXAMPLES_DIR / name for name in EXAMPLES]
    assert all(path.is_file() for path in files) and set(LICENCES) == set(EXAMPLES)
    assert sum(path.stat().st_size for path in files) < 300_000
    assert gallery.collections("")["examples"].pictures("") == list(EXAMPLES)


def test_collections_come_from_the_configured_list_only(roots: str, tmp_path: Path) -> None:
    found = gallery.collections(roots)
    assert list(found) == ["examples", "pets", "pets (2)"]
    assert found["pets"].folders() == ["test/cat", "train/dog"]
    assert found["pets (2)"].pictures("test/cat") == ["0001.png"]
    assert found["pets"].pictures("test/../../secret/test/cat") == []
    expected = tmp_path / "b" / "pets" / "train" / "dog" / "0002.jpg"
    assert gallery.resolve("pets (2)/train/dog/0002.jpg", roots) == expected
    assert gallery.describe("pets/test/cat/0001.png") == "pets: test/cat/0001.png (true class: cat)"
    assert gallery.describe("examples/chelsea_cat.jpg") == "Chelsea the cat (built-in example)"


@pytest.mark.parametrize("name", [
    "../secret/test/cat/0001.png", "pets/test/../../secret/test/cat/0001.png", "pets/test/cat/../../../x.png",
    "/etc/passwd", "secret/test/cat/0001.png", "pets/test/cat/notes.txt", "pets/valid/cat/0001.png",
    "pets\\test\\cat\\0001.png", "examples/../cam/models.py", "examples/", "", "pets//test/cat/0001.png",
    "pets/test/cat/0009.png", "examples/chelsea_cat.jpg/x",
])
def test_names_outside_the_allowed_pictures_are_refused(roots: str, tmp_path: Path, name: str) -> None:
    with pytest.raises(gallery.GalleryError) as refused:
        gallery.resolve(name, roots)
    assert str(tmp_path) not in str(refused.value) and "/" not in str(refused.value)


def test_a_symbolic_link_out_of_a_dataset_is_neither_listed_nor_opened(roots: str, tmp_path: Path) -> None:
    pets = tmp_path / "a" / "pets"
    (pets / "test" / "cat" / "0003.png").symlink_to(tmp_path / "secret" / "test" / "cat" / "0001.png")
    (pets / "test" / "cat" / "0004.png").symlink_to(pets / "test" / "cat" / "0001.png")  # inside: a real picture
    (pets / "test" / "cat" / "0005.png").symlink_to(pets / "test" / "cat" / "0005.png")  # a loop
    (pets / "test" / "cat" / "0006.png").symlink_to(tmp_path / "nowhere.png")  # dangling
    (pets / "test" / "secret").symlink_to(tmp_path / "secret" / "test" / "cat", target_is_directory=True)
    collection = gallery.collections(roots)["pets"]
    assert collection.pictures("test/cat") == ["0001.png", "0004.png"]
    assert collection.folders() == ["test/cat", "train/dog"]
    assert collection.pictures("test/secret") == []
    for name in ("pets/test/cat/0003.png", "pets/test/secret/0001.png", "pets/test/cat/0006.png"):
        with pytest.raises(gallery.GalleryError):
            gallery.resolve(name, roots)
    assert gallery.resolve("pets/test/cat/0004.png", roots) == pets.resolve() / "test" / "cat" / "0001.png"


def test_a_collection_whose_folder_vanished_has_nothing(roots: str, tmp_path: Path) -> None:
    collection = gallery.collections(roots)["pets"]
    (tmp_path / "a" / "pets" / "test" / "cat" / "0001.png").unlink()
    (tmp_path / "a" / "pets" / "test" / "cat").rmdir()
    assert collection.pictures("test/cat") == [] and collection.folders() == ["train/dog"]
    with pytest.raises(gallery.GalleryError):
        gallery.resolve("pets/test/cat/0001.png", roots)
