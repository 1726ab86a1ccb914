"""The dashboard run in-process by Streamlit's AppTest: a first visit, uploads of every readable format and of bad
files, an empty map and two networks that disagree, links that carry the view (and cannot reach outside the
gallery), and networks that fail one at a time.

AppTest runs the script in this process, so the tests patch ``cam.core.catalog.CHECKPOINTS`` and the registry directly;
the upload goes through the app's own ``st.file_uploader`` and its ``on_change`` callback (AppTest's
``FileUploader.set_value``). Every test starts from cleared Streamlit caches and builds its networks once, so there
are few tests and each covers several steps.
"""

from __future__ import annotations

import gc
import io
import json
import os
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

import cam.core.catalog
import cam.explain.pipeline
import cam.models.architectures
import cam.models.checkpoints
import cam.serve.model_service
from cam.core.catalog import STUDY
from cam.explain.registry import METHODS
from cam.explain.verdict import FeatureStats, stats_path
from cam.models import imagenet_net
from cam.models.errors import WeightsUnavailable

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = str(ROOT / "dashboard.py")
TIMEOUT = 300  # seconds per run: the first one builds and compiles VGG16 on a busy CPU
# An absolute path: a slash that starts a word and is followed by at least one folder (URLs match too).
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[\w.-]+/)+[\w.-]*")
MARKDOWN_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")  # a backslash-escaped ASCII punctuation character
FIRST = "400x328"  # the size of the first visit's example, the drawing of a horse
EXTRA = [key for key in METHODS if key not in STUDY]


def _offline() -> cam.models.checkpoints.LoadedModel:
    raise WeightsUnavailable("no network in tests: https://example.org/weights.h5 /root/.keras/models")


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty checkpoints folder, no dataset, ImageNet weights unavailable, fresh caches; yields tmp_path."""
    monkeypatch.setattr(cam.core.catalog, "CHECKPOINTS", tmp_path / "checkpoints")
    monkeypatch.setattr(cam.models.checkpoints, "vgg16_imagenet", _offline)
    monkeypatch.setenv("CAM_DATA", str(tmp_path / "no_dataset"))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield tmp_path
    # Models loaded under this test's settings must not leak into later tests.
    st.cache_resource.clear()
    st.cache_data.clear()
    gc.unfreeze()  # the dashboard froze them out of the garbage collector's sight


def encoded(width: int, height: int, format: str, seed: int = 0, **options) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format, **options)
    return buffer.getvalue()


def texts(elements) -> str:
    """What the visitor reads of ``elements``: their Markdown with its backslash escapes resolved."""
    return "\n".join(MARKDOWN_ESCAPE.sub(r"\1", str(element.value)) for element in elements)


def everything_said(at: AppTest) -> str:
    """Every message, caption, label and text on the page and in the sidebar."""
    kinds = ("markdown", "caption", "error", "info", "warning", "success", "title", "header", "subheader", "text")
    said = [texts(at.get(kind)) for kind in kinds]
    said += [str(widget.label) for kind in ("button", "selectbox", "radio", "download_button", "file_uploader")
             for widget in at.get(kind)]
    said += [str(option) for box in at.selectbox for option in box.options]
    return "\n".join(said)


def assert_no_paths(at: AppTest, *folders: Path) -> None:
    said = everything_said(at)
    assert not ABSOLUTE_PATH.search(said), ABSOLUTE_PATH.search(said).group(0)
    for folder in folders:
        assert str(folder) not in said


def visible_downloads(at: AppTest) -> list:
    """The download buttons a visitor sees, not those the dashboard keeps offering, hidden, from an earlier run."""
    return [button for button in at.get("download_button") if "-kept:" not in button.proto.id]


def captions(at: AppTest) -> list[str]:
    """The panels' captions, e.g. 'Grad-CAM on VGG16: cat, 72% — map of 4x2 cells from a 64x32 input, shown at
    451x300'."""
    return [block.value.strip("*") for block in at.markdown if " — map of " in block.value]


def assert_panels(at: AppTest, size: str, count: int = 3) -> None:
    """``count`` panels captioned in words at the image's full resolution, with their downloads and legends."""
    shown = captions(at)
    assert len(shown) == count, shown
    for caption in shown:
        assert re.fullmatch(rf"[\w+ ,-]+ on [\w-]+: \w+, \d+% — map of \d+x\d+ cells from a \d+x\d+ input, shown at "
                            rf"{size}", caption)
    assert len(at.get("plotly_chart")) == 1
    labels = [button.label for button in visible_downloads(at)]
    assert "Download this comparison as a web page" in labels and len(labels) == count + 2
    legends = [line for line in texts(at.caption).split("\n")
               if "strongest evidence" in line or "Grey: no influence" in line]
    assert len(legends) == count, legends  # one under each panel


def test_first_visit_uploads_of_every_format_and_refusals(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    explain = cam.explain.pipeline.explain_image

    def counted(*args, **kwargs) -> cam.explain.pipeline.ImageResult:
        calls.append(args)
        return explain(*args, **kwargs)

    monkeypatch.setattr(cam.serve.model_service, "explain_image", counted)  # where the page calls it

    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error
    # A first visit shows the worked example at once, and its link.
    assert "**A drawing of a horse (built-in example)**" in texts(at.markdown)
    assert_panels(at, FIRST)
    assert captions(at)[0].startswith("Grad-CAM on VGG16: ") and captions(at)[2].startswith("NoPool-GAP CAM on NoPool")
    assert dict(at.query_params) == {"set": "cifar", "image": "examples/horse_drawing.png"}
    assert "untrained (random weights)" in texts(at.warning) and "python -m cam train vgg16" in texts(at.warning)
    assert "is not offered here: its weights could not be downloaded" in texts(at.sidebar.caption)
    assert "viridis" in at.selectbox(key="colormap").options and "cividis" in at.selectbox(key="colormap").options
    assert_no_paths(at, setup)
    assert len(calls) == 1

    for name, data, size in (("cat.gif", encoded(120, 90, "GIF"), "120x90"),
                             ("cat.tiff", encoded(100, 80, "TIFF"), "100x80"),
                             ("cat.tif", encoded(64, 48, "TIFF", compression="tiff_lzw"), "64x48"),
                             ("cat photo.jpg", encoded(120, 90, "JPEG"), "120x90")):
        at.file_uploader(key="upload").set_value((name, data, "image/octet-stream")).run()
        assert not at.exception and not at.error, name
        assert f"**Uploaded photo “{name}”**" in texts(at.markdown)
        assert_panels(at, size)
        assert "cannot carry an uploaded photo" in texts(at.caption)
        assert "image" not in at.query_params
    assert len(calls) == 5

    shown = captions(at)
    at.slider(key="opacity").set_value(0.8).run()
    at.selectbox(key="colormap").set_value("cividis").run()
    at.toggle(key="raw").set_value(True).run()
    assert not at.exception
    assert_panels(at, "120x90")
    assert captions(at) == shown
    assert len(calls) == 5, "changing the look must re-render the cached maps, not recompute them"
    assert dict(at.query_params) == {"set": "cifar", "colours": "cividis", "opacity": "0.8", "raw": "1", "upload": "1"}

    at.multiselect(key="extra_methods").set_value(EXTRA).run()  # what "Select all" does: every method
    assert not at.exception and not at.error
    assert_panels(at, "120x90", count=9)
    assert "`block3_conv3_bn`" in texts(at.markdown)  # the technical details name the layers the fused one reads
    at.multiselect(key="extra_methods").set_value([]).run()

    at.file_uploader(key="upload").set_value(("broken.jpg", b"\xff\xd8\xff not really a jpeg", "image/jpeg")).run()
    assert not at.exception
    assert "“broken.jpg”" in texts(at.error) and "previous photo is hidden" in texts(at.error)
    assert not at.get("plotly_chart") and not captions(at) and not visible_downloads(at)

    huge = io.BytesIO()
    Image.new("1", (8000, 7000)).save(huge, format="PNG")  # 56 megapixels in a few kilobytes
    at.file_uploader(key="upload").set_value(("huge.png", huge.getvalue(), "image/png")).run()
    assert "“huge.png” is 8000x7000 = 56 megapixels; the limit is 50 megapixels" in texts(at.error)
    at.file_uploader(key="upload").set_value(("notes.pdf", b"%PDF-1.4 not a picture", "application/pdf")).run()
    assert "“notes.pdf” is not a picture this tool can read; it reads JPEG, PNG, WebP, BMP, GIF" in texts(at.error)
    assert not at.exception and not at.get("plotly_chart")
    assert_no_paths(at, setup)

    at.selectbox(key="picture:examples:").set_value("chelsea_cat.jpg").run()
    assert not at.exception and not at.error
    assert "**Chelsea the cat (built-in example)**" in texts(at.markdown)
    assert_panels(at, "451x300")
    assert at.query_params["image"] == "examples/chelsea_cat.jpg"


def trained(name: str, folder: Path, bias: dict[str, float], zero_kernel: bool) -> None:
    """Save a stand-in as a 'trained' checkpoint whose logits favour classes by ``bias``; ``zero_kernel`` makes its
    scores independent of the image, so its Grad-CAM map is empty."""
    loaded = cam.models.checkpoints.untrained_stand_in(name)
    logits = loaded.model.get_layer("logits")
    kernel, offsets = logits.get_weights()
    offsets[:] = [bias.get(c, 0.0) for c in loaded.classes]
    logits.set_weights([np.zeros_like(kernel) if zero_kernel else kernel, offsets])
    card = {**loaded.card, "metrics": {"test": {"accuracy": 0.5}}}
    cam.models.checkpoints.save_checkpoint(loaded.model, card, folder)


def test_reruns_keep_the_shared_models_warm(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamlit would clear the Keras session after every run (a full garbage collection and TensorFlow's kernel
    cache dropped, under every session's models); the dashboard keeps it. It also keeps the models out of the
    garbage collector's sight: Streamlit collects after every run, and each full collection would walk them all."""
    cleared = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *args, **kwargs: cleared.append(args))
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    at.toggle(key="raw").set_value(True).run()
    assert not at.exception and len(captions(at)) == 3
    assert cleared == []
    assert gc.get_freeze_count() > 0
    assert not [obj for obj in gc.get_objects() if isinstance(obj, keras.Model)]  # frozen objects are not listed


def test_empty_map_and_a_disagreement_with_its_button(setup: Path) -> None:
    trained("vgg16", setup / "checkpoints", {"cat": 20.0}, zero_kernel=True)  # always cat, and no map at all
    trained("nopool_gap", setup / "checkpoints", {"horse": 50.0}, zero_kernel=False)  # always horse

    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error and not at.warning
    said = texts(at.markdown)
    # The horse drawing (400x328) at the CIFAR pair's 32 px, own aspect: 39 px rounds to a 32x32 input, maps 2x2.
    assert captions(at)[0].startswith("Grad-CAM on VGG16: cat, 100% — map of 2x2 cells from a 32x32 input")
    for method in ("Grad-CAM", "Guided Grad-CAM"):
        assert said.count(f"This map is empty: {method} found no part of the photo that raises VGG16's score for *cat*."
                          " This happens on some photos; compare the other panels or try another class.") == 1
    assert "NoPool-GAP CAM found no part" not in said
    assert "NoPool-GAP thinks this is horse (100%); this map shows its evidence for *cat*." in said
    assert ":material/compare_arrows: The networks disagree: VGG16 says cat, NoPool-GAP says horse." in said
    assert captions(at)[2].startswith("NoPool-GAP CAM on NoPool-GAP: cat, 0%")
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [note["text"] for note in figure["layout"]["annotations"]].count("Nothing found for this class") == 2

    at.button(key="switch:cam").click().run()
    assert not at.exception
    assert at.selectbox(key="class").value == "horse" and at.query_params["class"] == "horse"
    said = texts(at.markdown)
    assert captions(at)[2].startswith("NoPool-GAP CAM on NoPool-GAP: horse, 100%")
    assert "VGG16 thinks this is cat (100%); this map shows its evidence for *horse*." in said
    assert "NoPool-GAP thinks" not in said
    assert [button.label for button in at.button if button.key.startswith("switch:")] == [
        "Explain cat instead (what VGG16 sees)"]

    at.button(key="add:fallback").click().run()  # offered while Grad-CAM is empty: one more panel, Layer-CAM
    assert not at.exception and at.multiselect(key="extra_methods").value == ["layer_cam"]
    assert captions(at)[3].startswith("Layer-CAM on VGG16: horse") and len(captions(at)) == 4
    assert not [button for button in at.button if button.key == "add:fallback"]  # shown: not offered again


def dataset(root: Path, classes: tuple[str, ...]) -> Path:
    for index, name in enumerate(classes):
        folder = root / "test" / name
        folder.mkdir(parents=True)
        for number in range(3):
            Image.fromarray(np.full((32, 40, 3), 60 * index + 20 * number, np.uint8)).save(folder / f"{number:04d}.png")
    return root


def test_detail_level_changes_the_input_warns_where_less_accurate_and_travels(setup: Path) -> None:
    checkpoints = setup / "checkpoints"
    for name in ("vgg16", "nopool_gap"):
        trained(name, checkpoints, {}, zero_kernel=False)
    card = json.loads((checkpoints / "nopool_gap.json").read_text())
    card["metrics"]["test_by_size"] = {"32": {"accuracy": 0.8}, "64": {"accuracy": 0.6}}
    (checkpoints / "nopool_gap.json").write_text(json.dumps(card))
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert at.select_slider(key="detail").value == "standard" and "detail" not in at.query_params
    assert "map of 32x32 cells from a 32x32 input" in captions(at)[2] and not at.warning
    at.select_slider(key="detail").set_value("finer").run()
    assert not at.exception and at.query_params["detail"] == "finer"
    # The horse drawing at short side 64: 400 / 328 * 64 = 78 -> 64; VGG16's block5 maps are 1/16 of it.
    assert " on VGG16: " in captions(at)[0] and "map of 4x4 cells from a 64x64 input" in captions(at)[0]
    assert "map of 64x64 cells from a 64x64 input" in captions(at)[2]
    assert texts(at.warning) == ("Trained on 32-pixel photos, the networks are right less often at this detail: "
                                 "NoPool-GAP on 60% of its test photos (80% at the standard detail).")
    again = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT)
    again.query_params.update({"detail": "finer"})
    again.run()
    assert again.select_slider(key="detail").value == "finer" and captions(again) == captions(at)


def test_links_carry_the_view_and_reach_only_the_gallery(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pets = dataset(setup / "pets", ("cat", "dog"))
    (pets / "test" / "dog" / "0003.png").write_bytes(b"truncated")
    outside = dataset(setup / "outside", ("cat",))  # on the disk, but not offered
    monkeypatch.setenv("CAM_DATA", os.pathsep.join([str(pets), str(setup / "no_dataset")]))

    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.selectbox(key="collection").options == ["Built-in examples", "Dataset “pets”"]
    at.selectbox(key="collection").set_value("pets").run()
    at.selectbox(key="folder:pets").set_value("test/dog").run()
    at.selectbox(key="picture:pets:test/dog").set_value("0001.png").run()
    assert not at.exception and not at.error
    assert "**pets: test/dog/0001.png (true class: dog)**" in texts(at.markdown)
    assert_panels(at, "40x32")
    at.button[0].click().run()  # the random picture
    assert "**pets: test/" in texts(at.markdown)
    at.selectbox(key="picture:pets:test/dog").set_value("0003.png").run()
    assert "pets: test/dog/0003.png (true class: dog) is not a picture this tool can read" in texts(at.error)
    assert_no_paths(at, setup)

    at.selectbox(key="picture:pets:test/dog").set_value("0002.png").run()
    at.selectbox(key="class").set_value("horse").run()
    at.selectbox(key="colormap").set_value("jet").run()
    at.slider(key="opacity").set_value(0.3).run()
    at.multiselect(key="extra_methods").set_value(["layer_cam"]).run()
    link = dict(at.query_params)
    assert link == {"set": "cifar", "class": "horse", "methods": "layer_cam", "colours": "jet", "opacity": "0.3",
                    "image": "pets/test/dog/0002.png"}
    shown = captions(at)

    again = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT)
    again.query_params.update(link)
    again.run()
    assert not again.exception and not again.error and not again.info
    assert captions(again) == shown and dict(again.query_params) == link
    assert again.slider(key="opacity").value == 0.3 and again.selectbox(key="colormap").value == "jet"
    assert again.selectbox(key="picture:pets:test/dog").value == "0002.png"

    for name in ("../../etc/passwd", "/etc/passwd", "pets/test/../../outside/test/cat/0000.png",
                 "outside/test/cat/0000.png", f"{outside}/test/cat/0000.png", "pets/test/dog/0009.png",
                 "pets\\test\\dog\\0001.png"):
        visit = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT)
        visit.query_params.update({"image": name, "colours": "rainbow-of-doom", "opacity": "7"})
        visit.run()
        assert not visit.exception and not visit.error, name
        said = texts(visit.info)
        assert "The link's picture is not in this page's gallery; the example is shown." in said, name
        assert "colours this page does not have" in said and "opacity is not between 0 and 1" in said
        assert "**A drawing of a horse (built-in example)**" in texts(visit.markdown), name
        assert visit.query_params["image"] == "examples/horse_drawing.png"
        assert_no_paths(visit, setup)


def test_each_network_fails_alone(setup: Path) -> None:
    checkpoints = setup / "checkpoints"
    trained("nopool_gap", checkpoints, {}, zero_kernel=False)
    (checkpoints / "vgg16.keras").write_bytes(b"PK\x03\x04 cut short")
    (checkpoints / "vgg16.json").write_text("{}")

    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert texts(at.error) == ("VGG16 (ours, CIFAR, 32 px) could not be loaded, so its maps are missing: its "
                               "description (model card) gives its name missing or in a form this tool cannot use.")
    assert "NoPool-GAP (ours, CIFAR, 32 px)**: trained, right on 50% of its test images." in texts(at.sidebar.caption)
    assert_panels(at, FIRST, count=1)
    assert captions(at)[0].startswith("NoPool-GAP CAM on NoPool-GAP: ")
    assert not at.warning  # the only network loaded is trained
    assert_no_paths(at, setup)

    for name in ("vgg16.keras", "vgg16.json"):
        (checkpoints / name).unlink()
    (checkpoints / "nopool_gap.keras").write_bytes(b"not a zip at all")
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "NoPool-GAP (ours, CIFAR, 32 px) could not be loaded, so its maps are missing" in texts(at.error)
    assert_panels(at, FIRST, count=2)
    assert [c.split(" on ")[0] for c in captions(at)] == ["Grad-CAM", "Guided Grad-CAM"]
    assert_no_paths(at, setup)


def test_gallery_and_card_problems_become_sentences(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A picture removed after the list was drawn, a link leading out of a dataset, a card with ``"metrics": null``
    and a card naming a layer the network lacks: each becomes one plain sentence, never a traceback, and the rest of
    the page works. The unknown layer is refused, never replaced by another one."""
    checkpoints = setup / "checkpoints"
    trained("nopool_gap", checkpoints, {}, zero_kernel=False)
    card = checkpoints / "nopool_gap.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "metrics": None}))
    pets = dataset(setup / "pets", ("cat", "dog"))
    outside = dataset(setup / "outside", ("cat",))
    (pets / "test" / "dog" / "0009.png").symlink_to(outside / "test" / "cat" / "0000.png")
    monkeypatch.setenv("CAM_DATA", str(pets))

    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert texts(at.error) == ("NoPool-GAP (ours, CIFAR, 32 px) could not be loaded, so its maps are missing: its "
                               "description (model card) gives its test results missing or in a form this tool "
                               "cannot use.")
    assert_panels(at, FIRST, count=2)
    at.selectbox(key="collection").set_value("pets").run()
    at.selectbox(key="folder:pets").set_value("test/dog").run()
    assert at.selectbox(key="picture:pets:test/dog").options == ["0000.png", "0001.png", "0002.png"]  # no link out
    (pets / "test" / "dog" / "0001.png").unlink()
    at.selectbox(key="picture:pets:test/dog").set_value("0001.png").run()
    assert not at.exception
    assert texts(at.warning).startswith("That picture is no longer in the gallery")
    assert "**pets: test/dog/0000.png (true class: dog)**" in texts(at.markdown)  # the previous picture stays
    assert_panels(at, "40x32", count=2)
    assert_no_paths(at, setup)

    stand_in = cam.models.checkpoints.untrained_stand_in("vgg16")
    wrong_layer = {**stand_in.card, "gradcam_layer": "block9_conv9"}
    cam.models.checkpoints.save_checkpoint(stand_in.model, wrong_layer, checkpoints)
    card.write_text(json.dumps({**json.loads(card.read_text()), "metrics": {}}))
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert texts(at.error) == ("VGG16 (ours, CIFAR, 32 px) could not be loaded, so its maps are missing: its "
                               "description (model card) gives the layer Grad-CAM reads missing or in a form this "
                               "tool cannot use.")
    assert [c.split(" on ")[0] for c in captions(at)] == ["NoPool-GAP CAM"]
    assert_no_paths(at, setup)


def test_names_shown_as_typed_long_ones_shortened_and_large_photos_reduced(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that is Markdown (an image that would make the browser fetch an address) shows as typed, in the label
    above the results, in a refusal and in the gallery; a 3,000-character name is shortened, its photo shown."""
    trap = "![p](https:127.0.0.1:8698)"
    pets = dataset(setup / "pets", ("cat",))
    (pets / "test" / "cat" / "0000.png").rename(pets / "test" / "cat" / f"{trap} *x*.png")
    monkeypatch.setenv("CAM_DATA", str(pets))
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()

    at.file_uploader(key="upload").set_value((f"{trap}.jpg", encoded(120, 90, "JPEG"), "image/jpeg")).run()
    assert not at.exception and not at.error
    label = next(block.value for block in at.markdown if "Uploaded photo" in block.value)
    assert label == r"**Uploaded photo “\!\[p\]\(https\:127\.0\.0\.1\:8698\)\.jpg”**"
    assert_panels(at, "120x90")

    large = Image.fromarray(np.linspace(0, 255, 4096 * 3).astype(np.uint8).reshape(1, 4096, 3).repeat(1024, 0))
    buffer = io.BytesIO()
    large.save(buffer, "JPEG")  # 4096x1024: read at 2048x512, the page says so; 4:1, so its middle 2:1 is explained
    at.file_uploader(key="upload").set_value(("wide.jpg", buffer.getvalue(), "image/jpeg")).run()
    assert not at.exception and not at.error
    assert_panels(at, "1024x512")
    assert ("The photo is 4096x1024 pixels; it was read reduced to 2048x512 (at most 2048 on its long side)"
            in texts(at.markdown))
    assert ("This photo is 2048x512 pixels and it is too long and thin to look at whole: the networks saw its middle "
            "1024x512 part, which the panels show.") in texts(at.caption)

    at.multiselect(key="extra_methods").set_value(["score_cam"]).run()  # slow: computed apart, in batches
    assert not at.exception and not at.error
    assert_panels(at, "1024x512", count=4)
    assert captions(at)[3].startswith("Score-CAM on VGG16: ")
    assert not [button for button in at.button if button.key.startswith("cancel:")]  # gone once computed
    at.multiselect(key="extra_methods").set_value([]).run()

    long_name = "a" * 2996 + ".jpg"
    at.file_uploader(key="upload").set_value((long_name, encoded(100, 80, "JPEG", seed=1), "image/jpeg")).run()
    assert not at.exception and not at.error
    shown = next(text for text in texts(at.markdown).split("\n") if "Uploaded photo" in text)
    assert shown == f"**Uploaded photo “{'a' * 39}…{'a' * 16}.jpg”**"
    assert_panels(at, "100x80")
    assert all(len(button.label) < 80 for button in at.get("download_button"))  # the hidden ones too

    at.file_uploader(key="upload").set_value((f"{trap}.png", b"not a picture", "image/png")).run()
    assert not at.exception
    assert at.error[0].value.startswith(r"Uploaded photo “\!\[p\]\(https\:127\.0\.0\.1\:8698\)\.png” is not a")

    at.selectbox(key="collection").set_value("pets").run()
    at.selectbox(key="folder:pets").set_value("test/cat").run()
    at.selectbox(key="picture:pets:test/cat").set_value(f"{trap} *x*.png").run()
    assert not at.exception and not at.error
    label = next(block.value for block in at.markdown if "pets" in block.value)
    assert label == r"**pets\: test\/cat\/\!\[p\]\(https\:127\.0\.0\.1\:8698\) \*x\*\.png \(true class\: cat\)**"


def test_the_verdict_agrees_or_is_not_sure(setup: Path) -> None:
    checkpoints = setup / "checkpoints"
    trained("vgg16", checkpoints, {"cat": 3.0}, zero_kernel=True)  # cat, 87%, whatever the photo
    trained("nopool_gap", checkpoints, {"cat": 2.0}, zero_kernel=True)  # cat, 71%
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error
    said = texts(at.markdown)
    assert ":material/check_circle: Both networks say **cat** (VGG16 87%, NoPool-GAP 71%)." in said
    assert "probability rule" in said  # no statistics here: the technical details say which rule decided

    # Statistics by which every photo is far from the training photos (a threshold of almost 0): "not sure".
    for name, width in (("vgg16", 512), ("nopool_gap", 256)):
        FeatureStats(np.zeros(width), np.eye(width), np.zeros((4, width)), 1e-9,
                     ("bird", "cat", "dog", "horse")).save(stats_path(name))
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error
    said = texts(at.markdown)
    assert (":material/help: **Not sure**: this picture looks unlike the photos the networks learned from; they know "
            "only birds, cats, dogs and horses.") in said
    assert "distance of its features to the training photos' classes" in said and "probability rule" not in said

    # With the shipped 1000-class screen, the cup of coffee is "not sure" because of what the screen sees there.
    for suffix in (".keras", ".json"):
        shutil.copy(ROOT / "checkpoints" / f"{imagenet_net.NAME}{suffix}", checkpoints)
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    at.selectbox(key="picture:examples:").set_value("coffee.jpg").run()
    assert not at.exception and not at.error
    said = texts(at.markdown)
    assert (":material/help: **Not sure**: a network that knows 1,000 kinds of things sees *espresso* here") in said
    assert "1000-class screen (EfficientNet-Lite0, ImageNet)" in said


def test_state_follows_the_visitor(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explain = cam.explain.pipeline.explain_image

    def no_grad_cam(*args, **kwargs) -> cam.explain.pipeline.ImageResult:  # Grad-CAM's map (and so Guided's) all zero
        result = explain(*args, **kwargs)
        for key in ("grad_cam", "guided_grad_cam"):
            result.explanation.maps[key] = np.zeros_like(result.explanation.maps[key])
        return result

    monkeypatch.setattr(cam.serve.model_service, "explain_image", no_grad_cam)
    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error
    # The empty Grad-CAM panel is replaced, in its place, by Layer-CAM on the same layer, labelled as such.
    assert captions(at)[0].startswith("Layer-CAM on VGG16: ") and len(captions(at)) == 3
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [note["text"] for note in figure["layout"]["annotations"]][:2] == [
        "Layer-CAM (Grad-CAM found nothing)", "Guided Grad-CAM"]
    said = texts(at.markdown)
    assert "Grad-CAM's map is empty for this photo" in said and "This map is empty because Grad-CAM's is" in said
    assert not [button for button in at.button if button.key == "add:fallback"]

    # A chosen class does not stick to the next photo; the picture box says an upload is shown.
    at.selectbox(key="class").set_value("horse").run()
    at.file_uploader(key="upload").set_value(("horse.png", encoded(60, 40, "PNG"), "image/png")).run()
    assert not at.exception and at.selectbox(key="class").value == "Top prediction"
    assert "Shown now: uploaded photo “horse.png”" in texts(at.sidebar.caption)
    link = dict(at.query_params)
    assert link["upload"] == "1" and "image" not in link

    # Removing the upload goes back to the picture the gallery shows.
    at.file_uploader(key="upload").set_value(None).run()
    assert not at.exception
    assert "**A drawing of a horse (built-in example)**" in texts(at.markdown) and not texts(at.sidebar.caption).count(
        "Shown now")
    assert_panels(at, FIRST)

    # Whoever opens the upload's link is told, in one sentence, why they see an example and how to get the photo.
    sent = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT)
    sent.query_params.update(link)
    sent.run()
    assert not sent.exception and not sent.error
    assert ("This link was made while its sender looked at a photo of their own, which a link cannot carry, so an "
            "example is shown; ask them for the comparison as a web page") in texts(sent.info)

    # The zoom travels in the link and is restored from it.
    at.session_state["zoom"] = {"examples/horse_drawing.png": {"x": [10.0, 200.0], "y": [150.0, 20.0]}}
    at.run()
    assert at.query_params["zoom"] == "10,200,150,20"
    zoomed = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT)
    zoomed.query_params.update(dict(at.query_params))
    zoomed.run()
    layout = json.loads(zoomed.get("plotly_chart")[0].proto.spec)["layout"]
    assert layout["xaxis"]["range"] == [10, 200] and layout["yaxis"]["range"] == [150, 20]
