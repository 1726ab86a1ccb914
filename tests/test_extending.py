"""Adding a method is one function and one registry entry: a dummy method registered here appears in the command
line's output files, the report's tables and the dashboard without any change to those modules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_dashboard import DASHBOARD, TIMEOUT, captions, encoded, texts
from test_report import tiny

import cam.models.checkpoints
from cam import cli
from cam.core.catalog import Role
from cam.evaluate import report
from cam.explain import registry

pytestmark = pytest.mark.slow


def brightness(model, images: np.ndarray, classes: np.ndarray, layer: str | None) -> np.ndarray:
    """A stand-in method: the image's brightness, plus the class index so that the class shows."""
    return np.asarray(images, np.float32).mean(axis=-1) + np.asarray(classes, np.float32)[:, None, None]


@pytest.fixture
def dummy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> registry.Method:
    method = registry.Method("brightness", "Brightness (dummy)", Role.GRADCAM, brightness,
                             lambda model, layer: ["input"], "How bright each pixel is.")
    monkeypatch.setitem(registry.METHODS, method.key, method)
    monkeypatch.setattr(cam.core.catalog, "CHECKPOINTS", tmp_path / "no_checkpoints")  # untrained stand-ins
    return method


def test_a_new_method_reaches_the_command_line(dummy, tmp_path) -> None:
    photo, out = tmp_path / "photo.png", tmp_path / "out"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(photo)
    assert cli.main(["explain", str(photo), "--out", str(out), "--raw", "--methods", "grad_cam,brightness"]) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "photo_brightness.npy", "photo_brightness.png", "photo_grad_cam.npy", "photo_grad_cam.png",
        "photo_side_by_side.png"]
    assert np.load(out / "photo_brightness.npy").shape == (32, 32)


def test_a_new_method_reaches_the_report(dummy, tmp_path) -> None:
    for name in cam.core.catalog.CIFAR4_CLASSES:
        (tmp_path / "data" / "test" / name).mkdir(parents=True)
        for index in range(2):
            pixels = np.random.default_rng(index).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / "test" / name / f"{index}.png")
    args = cli.build_parser().parse_args(["report", "--data", str(tmp_path / "data"), "--n", "4", "--mosaics", "2",
                                          "--sanity-n", "2", "--steps", "2", "--methods", "nopool_cam,brightness"])
    models = (tiny("tiny_vgg", "conv2"), tiny("tiny_gap", "cam_features"))
    assert report.run(cli.report_config(args), tmp_path / "out", models=models, log=lambda message: None,
                      workers=0) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| Brightness (dummy) | tiny_vgg |" in text  # the answer table
    assert "| Metric | Better | NoPool-GAP CAM | Brightness (dummy) |" in text  # the score tables
    assert "CAM − Brightness (dummy)" in text
    assert json.loads((tmp_path / "out" / "report.json").read_text())["meta"]["methods"]["brightness"]


def test_a_new_method_reaches_the_dashboard(dummy, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CAM_DATA", str(tmp_path / "no_dataset"))
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    at.file_uploader(key="upload").set_value(("cat.jpg", encoded(60, 40, "JPEG"), "image/jpeg")).run()
    at.multiselect(key="extra_methods").set_value(["brightness"]).run()
    assert not at.exception and not at.error
    shown = captions(at)
    assert len(shown) == 4 and all(caption.endswith(", shown at 60x40") for caption in shown)
    # The 60x40 photo at the CIFAR pair's 32 px, own aspect: 48 px rounds to a 64x32 input.
    assert shown[3].startswith("Brightness (dummy) on VGG16: ") and "map of 64x32 cells" in shown[3]
    assert "How bright" in texts(at.markdown)
    st.cache_resource.clear()
    st.cache_data.clear()
