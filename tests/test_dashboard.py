"""The dashboard run in-process by Streamlit's AppTest: without checkpoints, dataset or ImageNet weights, with a
dataset gallery, and with a trained and a broken checkpoint.

AppTest runs the script in this process, so the tests patch ``cam.models.CHECKPOINTS`` and the registry directly;
the upload goes through the app's own ``st.file_uploader`` and its ``on_change`` callback (AppTest's
``FileUploader.set_value``). Every test starts from cleared Streamlit caches and builds VGG16 once, so there are
few of them and each covers several steps.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

import cam.examples
import cam.models
import cam.pipeline
from cam.models import REGISTRY, WeightsUnavailable

pytestmark = pytest.mark.slow
DASHBOARD = str(Path(__file__).resolve().parent.parent / "dashboard.py")
TIMEOUT = 300  # seconds per run: the first one builds and compiles VGG16 on a busy CPU
PANEL_CAPTIONS = ("Grad-CAM · vgg16 · ", "Guided Grad-CAM · vgg16 · ", "NoPool-GAP CAM · nopool_gap · ")


def _offline() -> cam.models.LoadedModel:
    raise WeightsUnavailable("no network in tests")


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty checkpoints folder, no dataset, ImageNet weights unavailable, fresh caches; yields tmp_path."""
    monkeypatch.setattr(cam.models, "CHECKPOINTS", tmp_path / "checkpoints")
    monkeypatch.setitem(REGISTRY, "vgg16_imagenet", dataclasses.replace(REGISTRY["vgg16_imagenet"], load=_offline))
    monkeypatch.setenv("CAM_DATA", str(tmp_path / "no_dataset"))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield tmp_path
    # Models loaded under this test's settings must not leak into later tests.
    st.cache_resource.clear()
    st.cache_data.clear()


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def texts(elements) -> str:
    return "\n".join(str(element.value) for element in elements)


def assert_panels(at: AppTest, resolution: str) -> None:
    """The three panels' captions, each at the image's full resolution, and the downloads are there."""
    shown = texts(at.markdown)
    for caption in PANEL_CAPTIONS:
        assert caption in shown
    assert shown.count(f"-> {resolution}") == 3
    assert len(at.get("plotly_chart")) == 1
    assert len(at.download_button) == 4  # three panels and the side-by-side PNG
    assert len(at.dataframe) == 2  # both models' top predictions
    assert sum("Heat map colours" in " ".join(image.captions) for image in at.get("image")) == 1  # colour legend


def test_no_checkpoint_no_dataset_upload_bad_files_and_example(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    explain = cam.pipeline.explain_image

    def counted(*args, **kwargs) -> cam.pipeline.ImageResult:
        calls.append(args)
        return explain(*args, **kwargs)

    monkeypatch.setattr(cam.pipeline, "explain_image", counted)

    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "No trained checkpoint — showing UNTRAINED models" in texts(at.warning)
    assert "python -m cam train vgg16" in texts(at.warning)
    assert "CAM_DATA" in texts(at.info)  # the gallery says how to get a dataset
    assert "is not offered here" in texts(at.sidebar.caption)  # ImageNet VGG16, with the reason below
    assert "no network in tests" in texts(at.sidebar.caption)
    assert not at.error

    at.file_uploader(key="upload").set_value(("cat photo.jpg", jpeg(120, 90), "image/jpeg")).run()
    assert not at.exception and not at.error
    assert at.subheader[0].value == "Uploaded photo “cat photo.jpg”"
    assert_panels(at, "120x90")
    assert len(calls) == 1

    at.slider(key="opacity").set_value(0.8).run()
    at.selectbox(key="colormap").set_value("viridis").run()
    at.toggle(key="raw").set_value(True).run()
    assert not at.exception
    assert_panels(at, "120x90")
    assert len(calls) == 1, "changing the look must re-render the cached maps, not recompute them"

    at.selectbox(key="class").set_value("horse").run()
    assert "Grad-CAM · vgg16 · horse" in texts(at.markdown)

    at.multiselect(key="extra_methods").set_value(["layer_cam", "hires_cam", "layer_cam_fused"]).run()
    assert not at.exception and not at.error
    shown = texts(at.markdown)
    for caption in ("Layer-CAM · vgg16 · horse", "HiResCAM · vgg16 · horse", "Layer-CAM, 3 layers fused · vgg16"):
        assert caption in shown
    assert shown.count("-> 120x90") == 6 and len(at.download_button) == 7  # six panels and the side by side
    assert "block3_conv3_bn" in shown  # the technical details name the layers the fused Layer-CAM reads
    at.multiselect(key="extra_methods").set_value([]).run()

    at.file_uploader(key="upload").set_value(("broken.jpg", b"\xff\xd8\xff not really a jpeg", "image/jpeg")).run()
    assert not at.exception
    assert "not an image" in texts(at.error)
    assert not at.get("plotly_chart")

    huge = io.BytesIO()
    Image.new("1", (8000, 7000)).save(huge, format="PNG")  # 56 megapixels in a few kilobytes
    at.file_uploader(key="upload").set_value(("huge.png", huge.getvalue(), "image/png")).run()
    assert not at.exception
    assert "megapixels" in texts(at.error)

    example = next(button for button in at.button if button.label == "Explain the example photo")
    example.click().run()
    assert not at.exception and not at.error
    assert at.subheader[0].value == "Example photo"
    height, width = np.asarray(Image.open(cam.examples.example_photo())).shape[:2]
    assert_panels(at, f"{width}x{height}")


def test_gallery_pick_random_pick_and_corrupt_file(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = setup / "dataset"
    for index, name in enumerate(("cat", "dog")):
        folder = root / "test" / name
        folder.mkdir(parents=True)
        for number in range(3):
            Image.fromarray(np.full((32, 32, 3), 60 * index + 20 * number, np.uint8)).save(folder / f"{number:04d}.png")
    (root / "test" / "dog" / "0003.png").write_bytes(b"truncated")
    monkeypatch.setenv("CAM_DATA", str(root))

    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception
    at.selectbox(key="gallery_class").set_value("dog").run()
    picks = [button for button in at.button if button.key and button.key.startswith("pick:")]
    assert [button.label for button in picks] == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert "unreadable" in texts(at.caption)

    picks[1].click().run()
    assert not at.exception and not at.error
    assert at.subheader[0].value == "Dataset image test/dog/0001.png (true class: dog)"
    assert_panels(at, "32x32")

    next(button for button in at.button if button.label == "Random test image").click().run()
    assert not at.exception
    assert at.subheader[0].value.startswith("Dataset image test/")

    next(button for button in at.button if button.label == "0003.png").click().run()
    assert not at.exception
    assert "0003.png is not an image" in texts(at.error)


def test_trained_and_broken_checkpoints_are_reported(setup: Path) -> None:
    checkpoints = setup / "checkpoints"
    nopool = cam.models.untrained_stand_in("nopool_gap")
    cam.models.save_checkpoint(nopool.model, {**nopool.card, "metrics": {"test": {"accuracy": 0.625}}}, checkpoints)
    (checkpoints / "vgg16.keras").write_bytes(b"PK\x03\x04 cut short")
    (checkpoints / "vgg16.json").write_text("{}")

    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "VGG16 (ours, CIFAR, 32 px) could not be loaded: Model card" in texts(at.error)
    assert "NoPool-GAP (ours, CIFAR, 32 px)**: trained checkpoint, test accuracy 62.5%" in texts(at.sidebar.caption)
    assert "Needs a working Grad-CAM model and NoPool-GAP model." in texts(at.sidebar.caption)
    assert not at.warning  # the only model loaded is trained
