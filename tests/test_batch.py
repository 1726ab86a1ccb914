"""``python -m cam batch`` on a local Ray (one session for the module, two workers) against the in-process path:
the same rows and maps, broken files as rows with their sentence, resuming, and refusals."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_image_folder
from PIL import Image
from streamlit.testing.v1 import AppTest

from cam import cli
from cam.core.catalog import MODEL_SETS, STUDY, Role
from cam.core.images import ImageError, load_image
from cam.core.workers import ray_session
from cam.evaluate import scoring as evaluation
from cam.evaluate.parallel import RayParts
from cam.explain.methods import Explainer
from cam.explain.pipeline import explain_image
from cam.explain.registry import selected
from cam.models.checkpoints import load_model
from cam.serve import batch

SLOW = pytest.mark.slow  # Ray starts worker processes that each import TensorFlow; the page loads the dashboard
CIFAR = MODEL_SETS["cifar"]
SETTINGS = batch.BatchSettings(CIFAR.gradcam, CIFAR.gap, STUDY)
BROKEN = ("test/cat/001.png", "test/dog/002.png")
DASHBOARD = str(Path(__file__).resolve().parent.parent / "dashboard.py")
PAGE = "pages/Batches.py"


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray with two CPUs for the whole module; shut down after it."""
    with ray_session(None, 2):
        yield


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 files: 10 pictures (one of them 48x40, the others 32x32) and two broken ones (text, a cut-short PNG)."""
    root = write_image_folder(tmp_path_factory.mktemp("batch") / "photos", {"test": 3})
    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(root / "test/horse/000.png")
    (root / BROKEN[0]).write_text("not a picture")
    whole = (root / BROKEN[1]).read_bytes()
    (root / BROKEN[1]).write_bytes(whole[: len(whole) // 2])
    return root


@pytest.fixture(scope="module")
def in_process() -> tuple:
    """The models and Explainer of the page's path, in this process."""
    gradcam, cam_model = load_model(CIFAR.gradcam), load_model(CIFAR.gap)
    return gradcam, cam_model, Explainer(gradcam.model, gradcam.card["gradcam_layer"], cam_model.model)


def same(a: object, b: object) -> bool:
    """Equal, NaN equal to NaN, and a list (all of a network's probabilities) equal to the array Parquet gives."""
    if isinstance(b, list):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@SLOW
def test_batch_on_two_ray_workers_equals_the_in_process_path(ray_local, folder: Path, in_process, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code = cli.main(["batch", str(folder), "--out", str(out), "--set", "cifar", "--workers", "2", "--png"])
    assert code == 1  # two files could not be read
    assert "12 images explained now, 0 done before, 2 could not be read" in capsys.readouterr().out
    table = batch.read_table(out)
    items = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.png"))
    assert len(items) == 12 and table["item"].tolist() == items
    gradcam, cam_model, explainer = in_process
    methods = selected(STUDY)
    for record in table.to_dict("records"):
        item = record["item"]
        if item in BROKEN:
            with pytest.raises(ImageError) as error:
                load_image(folder / item, name=item)
            assert record["error"] == str(error.value) and item in record["error"]
            assert not any(batch.map_path(out, item, key).exists() for key in STUDY)
            continue
        image = load_image(folder / item)
        result = explain_image(image, explainer, gradcam, cam_model, None, methods)
        expected = batch.image_row(item, result)
        assert all(same(record[key], value) for key, value in expected.items()), item
        for key in STUDY:
            assert np.array_equal(np.load(batch.map_path(out, item, key)), result.explanation.maps[key][0])
            with Image.open(batch.map_path(out, item, key, ".png")) as png:
                assert png.size == (image.shape[1], image.shape[0])


@SLOW
def test_an_interrupted_batch_resumes_and_every_row_appears_once(ray_local, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = batch.run(folder, out, SETTINGS, workers=2, limit=5, progress=False)
    assert (first.done, first.skipped, first.complete) == (5, 0, False)
    assert not (out / batch.TABLE).exists()  # nothing looks complete
    rows = sorted((out / batch.ITEMS).rglob(batch.ROW))
    assert len(rows) == 5
    written = {path: path.stat().st_mtime_ns for path in rows}
    second = batch.run(folder, out, SETTINGS, workers=2, progress=False)
    # The first five in order (test/bird/000..002, test/cat/000, 001) hold one broken file, the rest the other.
    assert (second.found, second.skipped, second.done, second.failed, second.complete) == (12, 5, 7, 1, True)
    assert all(path.stat().st_mtime_ns == time for path, time in written.items())  # skipped, not redone
    table = batch.read_table(out)
    assert len(table) == 12 and table["item"].is_unique
    assert (table["error"] != "").sum() == 2
    third = batch.run(folder, out, SETTINGS, workers=2, progress=False)
    assert (third.skipped, third.done, third.complete) == (12, 0, True)
    pd.testing.assert_frame_equal(batch.read_table(out), table)


def test_an_unreachable_cluster_is_a_sentence_and_leaves_nothing(folder: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code = cli.main(["batch", str(folder), "--out", str(out), "--set", "cifar", "--address", "127.0.0.1:9"])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no Ray cluster answers at 127.0.0.1:9") and "Traceback" not in error
    assert not out.exists()


def test_refusals(folder: Path, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(batch.BatchError, match="cannot write to the output folder"):
        batch.run(folder, not_a_folder / "out", SETTINGS, workers=0)
    with pytest.raises(batch.BatchError, match="holds no pictures"):
        batch.run(tmp_path, tmp_path / "out", SETTINGS, workers=0)
    out = tmp_path / "other"
    batch.prepare_out(out, batch.BatchSettings("vgg16_photos", "nopool_gap_photos", STUDY), folder)
    with pytest.raises(batch.BatchError, match="other models or methods"):
        batch.run(folder, out, SETTINGS, workers=0)


def test_a_batch_inside_its_folder_is_not_read_as_pictures(tmp_path: Path) -> None:
    source = write_image_folder(tmp_path / "items", {"test": 1})  # "items" like a batch's own sub-folder
    (source / "out" / batch.ITEMS / "test/cat/000.png").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(source / "out" / batch.ITEMS / "test/cat/000.png/grad_cam.png")
    root, files = batch.list_images(source, skip=source / "out")
    assert [batch.item_of(path, root) for path in files] == [f"test/{name}/000.png" for name in
                                                             ("bird", "cat", "dog", "horse")]


def test_a_file_list_names_files_relative_to_itself(folder: Path, tmp_path: Path) -> None:
    listing = folder / "list.txt"
    listing.write_text("# two pictures\ntest/bird/000.png\n\n" + str(folder / "test/cat/002.png") + "\nmissing.jpg\n")
    root, files = batch.list_images(listing)
    assert root == folder.resolve()
    assert [batch.item_of(path, root) for path in files] == ["test/bird/000.png", "test/cat/002.png", "missing.jpg"]


@SLOW
def test_the_page_lists_configured_batches_sorts_and_shows_a_photos_panels(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAM_BATCHES", str(tmp_path / "nothing-here"))
    empty = AppTest.from_file(DASHBOARD, default_timeout=120).switch_page(PAGE).run()
    assert not empty.exception
    assert "No folder of explained photos here yet" in empty.info[0].value

    out = tmp_path / "batches" / "cifar-run"
    batch.run(folder, out, SETTINGS, workers=0, progress=False)  # in this process: no Ray needed for the page
    monkeypatch.setenv("CAM_BATCHES", str(tmp_path / "batches"))
    at = AppTest.from_file(DASHBOARD, default_timeout=120).switch_page(PAGE).run()
    assert not at.exception
    assert at.selectbox[0].options == ["cifar-run"]
    shown = at.dataframe[0].value
    assert len(shown) == 12 and list(shown.columns[:3]) == ["Photo", "vgg16: class", "vgg16: confidence"]
    assert shown.set_index("Photo").loc[BROKEN[0], "Problem"].endswith("is not a picture this tool can read; it "
                                                                      "reads JPEG, PNG, WebP, BMP, GIF (the first "
                                                                      "frame) and TIFF pictures")
    photo = at.selectbox(key="photo")
    assert photo.value == "test/bird/000.png" and len(at.get("image")) == 3
    at = photo.set_value("test/horse/000.png").run()  # the 48x40 one
    assert not at.exception
    captions = [caption.value for caption in at.caption]
    assert any(text.startswith("Grad-CAM on VGG16: ") and text.endswith("shown at 48x40") for text in captions)
    row = batch.read_table(out).set_index("item").loc["test/horse/000.png"]
    assert any(f"{row['gradcam_explained']}, {row['gradcam_p_1']:.0%}" in text for text in captions)
    at = at.selectbox(key="photo").set_value(BROKEN[1]).run()
    assert "damaged or cut short" in at.warning[0].value and not at.get("image")
    said = "\n".join(str(element.value) for kind in ("markdown", "caption", "info", "warning")
                     for element in getattr(at, kind))
    assert str(tmp_path) not in said and str(folder) not in said


@SLOW
def test_the_report_scored_on_two_ray_workers_equals_the_single_process_run(ray_local, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", {"test": 3})
    (data / "masks/test/horse").mkdir(parents=True)
    for index, columns in ((0, slice(0, 16)), (2, slice(8, 32))):
        mask = np.zeros((32, 32), np.uint8)
        mask[:, columns] = 255
        Image.fromarray(mask).save(data / f"masks/test/horse/{index:03d}.png")
    config = evaluation.EvaluationConfig(data, n=10, mosaics=6, sanity_n=3, steps=4, batch_size=4, seed=3)
    models = load_model(CIFAR.gradcam), load_model(CIFAR.gap)
    here = evaluation.evaluate(config, *models, "here", log=lambda line: None)
    parts = RayParts(dict(zip((Role.GRADCAM, Role.GAP), models, strict=True)), STUDY, workers=2)
    on_ray = evaluation.evaluate(config, *models, "on ray", log=lambda line: None, map_parts=parts)
    faithful = here["frame"][here["frame"]["set"] == "test"]
    assert len(faithful) == 10 * 3 * 6  # 10 images (3 parts: 4, 4, 2), 3 methods, 6 scores each
    mosaics = here["frame"][here["frame"]["set"] == "mosaics"]
    assert mosaics["item"].nunique() == 6 * 4 and len(mosaics) == 6 * 4 * 3 * 4  # 2 parts; 4 scores per map
    masks = here["frame"][here["frame"]["set"] == "masks"]
    assert set(masks["item"]) == {"test/horse/000.png", "test/horse/002.png"} and len(masks) == 2 * 3 * 3
    sanity = here["frame"][here["frame"]["set"] == "sanity"]
    assert sanity["item"].nunique() == 3 and sanity["stage"].nunique() > 3 and sanity["value"].notna().any()
    # Equal up to float32 rounding: a Ray worker runs TensorFlow on one thread, this process on two, and sums in
    # another order (2026-12-07, AMD EPYC: one score of 630 differed, 0.39987526 against 0.39987529).
    pd.testing.assert_frame_equal(on_ray["frame"], here["frame"], check_exact=False, rtol=1e-6, atol=1e-9)
    for key in ("summary", "differences", "curves", "resolution"):
        assert_nested_close(on_ray[key], here[key])
    assert_nested_close(on_ray["meta"]["precision_gap"], here["meta"]["precision_gap"])
    # The parts' own seeds make the scores independent of the order: scoring the parts in reverse changes nothing.
    backwards = evaluation.evaluate(config, *models, "reversed", log=lambda line: None,
                                    map_parts=lambda kind, jobs: parts(kind, jobs[::-1])[::-1])
    pd.testing.assert_frame_equal(backwards["frame"], on_ray["frame"], check_exact=True)  # both on the workers


def assert_nested_close(actual, expected, rtol: float = 1e-6) -> None:
    """``actual`` equals ``expected`` (dicts, lists and tuples of them, compared item by item), numbers up to
    ``rtol`` (NaN equal to NaN), everything else exactly."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys()
        for key in expected:
            assert_nested_close(actual[key], expected[key], rtol)
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple) and len(actual) == len(expected)
        for one, other in zip(actual, expected, strict=True):
            assert_nested_close(one, other, rtol)
    elif isinstance(expected, float | np.floating):
        assert actual == pytest.approx(expected, rel=rtol, abs=1e-9, nan_ok=True)
    else:
        assert actual == expected


def ray_worker_pids() -> list[int]:
    """Processes of Ray Data's map actors on this machine (their title names the map worker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::") and "MapWorker" in title:
                pids.append(int(entry.name))
    return pids


@SLOW
def test_a_worker_killed_mid_run_is_replaced_and_every_row_appears_once(ray_local, tmp_path: Path) -> None:
    """SIGKILL one of the two actors once rows are being written: Ray restarts it and retries its batch; the run
    completes with every picture's row exactly once and no error."""
    source = write_image_folder(tmp_path / "photos", {"test": 8})  # 32 pictures
    out = tmp_path / "out"
    finished: list = []
    runner = threading.Thread(target=lambda: finished.append(batch.run(source, out, SETTINGS, workers=2,
                                                                       progress=False)))
    runner.start()
    def rows_written() -> int:
        return len(list((out / batch.ITEMS).rglob(batch.ROW))) if (out / batch.ITEMS).exists() else 0

    deadline = time.monotonic() + 300
    while not rows_written():
        assert time.monotonic() < deadline and runner.is_alive(), "no row was written"
        time.sleep(0.05)
    workers = ray_worker_pids()
    assert workers, "no Ray map worker found"
    os.kill(workers[0], signal.SIGKILL)
    killed_with = rows_written()
    runner.join(600)
    assert not runner.is_alive() and finished and finished[0].complete
    assert killed_with < 32  # the kill came mid-run
    table = batch.read_table(out)
    assert len(table) == 32 and table["item"].is_unique and (table["error"] == "").all()
