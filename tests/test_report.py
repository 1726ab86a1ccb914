"""`python -m cam report` end to end on a tiny image folder with tiny untrained models, and the Evaluation page."""

import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from keras import layers
from PIL import Image
from streamlit.testing.v1 import AppTest

import cam.models.architectures
import cam.models.checkpoints
from cam import cli
from cam.core.catalog import CIFAR4_CLASSES, MODEL_SETS
from cam.core.device import fast_bfloat16
from cam.evaluate import report, report_content
from cam.evaluate import scoring as evaluation
from cam.explain import registry
from cam.explain.methods import Explainer
from cam.models.architectures import with_precision
from cam.models.checkpoints import LoadedModel

DASHBOARD = str(Path(__file__).resolve().parent.parent / "dashboard.py")


def evaluation_page() -> AppTest:
    """The Evaluation page as visitors reach it: a page of the dashboard (its links need the other page)."""
    return AppTest.from_file(DASHBOARD, default_timeout=60).switch_page("pages/Evaluation.py")


def tiny(name: str, gap_source: str) -> LoadedModel:
    """A 32x32 conv net whose layer ``gap_source`` feeds GAP -> logits -> softmax (VGG-like with a pooling)."""
    inputs = keras.Input((32, 32, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(layers.Rescaling(1 / 255)(inputs))
    if name == "tiny_vgg":
        x = layers.MaxPooling2D(8)(x)  # a 4x4 Grad-CAM map, coarse like VGG16's
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name=gap_source)(x)
    logits = layers.Dense(4, name="logits")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, layers.Activation("softmax", name="probabilities")(logits), name=name)
    card = {"name": name, "classes": list(CIFAR4_CLASSES), "input_size": 32, "gradcam_layer": gap_source,
            "metrics": {"test": {"accuracy": 0.25, "n": 12}}}
    return LoadedModel(model, card, trained=False, note=f"{name} is untrained")


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    """Run the report once on 3 images per class and a boxes file with a class the models do not know; also
    record, for every call of the Explainer, whether it ran the GAP model (``with_cam``)."""
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    for name in CIFAR4_CLASSES:
        (root / "data" / "test" / name).mkdir(parents=True)
        for index in range(3):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "data" / "test" / name / f"{index}.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255  # horse 0 is on the left
    (root / "data" / "masks" / "test" / "horse").mkdir(parents=True)
    Image.fromarray(mask).save(root / "data" / "masks" / "test" / "horse" / "0.png")
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "data" / "photo.png")
    boxes = [{"image": "photo.png", "width": 48, "height": 40,
              "objects": [{"name": "dog", "bbox": [4, 4, 30, 36]}, {"name": "zebra", "bbox": [30, 0, 48, 20]}]},
             {"image": "gone.png", "width": 8, "height": 8, "objects": []}]
    (root / "boxes.json").write_text(json.dumps(boxes))
    args = cli.build_parser().parse_args([
        "report", "--data", str(root / "data"), "--boxes", str(root / "boxes.json"), "--n", "6", "--mosaics", "3",
        "--out", str(root / "out"), "--sanity-n", "3", "--steps", "4", "--batch-size", "4", "--methods", "all",
        "--slow-n", "2",
    ])
    config = cli.report_config(args)
    messages, cam_passes = [], []
    explain = Explainer.__call__

    def recording(self, *arguments, **options):
        cam_passes.append(options.get("with_cam", True))
        return explain(self, *arguments, **options)

    models = (tiny("tiny_vgg", "conv2"), tiny("tiny_gap", "cam_features"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Explainer, "__call__", recording)
        assert report.run(config, root / "out", models=models, log=messages.append, workers=0) == 0
    return root / "out", config, messages, cam_passes


def test_report_writes_every_file(produced):
    out, _, messages, _ = produced
    names = {path.name for path in out.iterdir()}
    assert {"report.md", "scores.csv", "report.json", "plotly.min.js"} <= names
    figures = report_content.FIGURES
    assert {f"{figure}.png" for figure in figures} | {f"{figure}.html" for figure in figures} <= names
    html = (out / "curves.html").read_text()
    assert 'src="plotly.min.js"' in html and len(html) < 200_000  # offline, and the script is not copied into it
    assert any("WARNING" in m for m in messages) and any("sanity" in m for m in messages)


def test_scores_cover_every_set_method_and_metric(produced):
    out, _, _, _ = produced
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores["set"]) == {"test", "mosaics", "boxes", "masks", "sanity"}
    assert set(scores["method"]) == set(registry.METHODS)
    test = scores[scores["set"] == "test"]
    assert set(test["metric"]) == {
        "deletion_auc", "insertion_auc", "average_drop", "increase", "effective_grid", "min_max_ratio"
    }
    masks = scores[scores["set"] == "masks"]
    assert set(masks["item"]) == {"test/horse/0.png"} and set(masks["class"]) == {"horse"}
    assert set(masks["method"]) == set(registry.METHODS)  # one masked photo: within --slow-n too
    assert set(masks["metric"]) == {"pointing", "energy", "mask_iou"}
    energy = masks.loc[masks["metric"] == "energy", "value"].dropna()
    assert ((0 <= energy) & (energy <= 1)).all()
    counts = test.groupby(["method", "metric"]).size()
    assert (counts.drop("score_cam") == 6).all() and (counts["score_cam"] == 2).all()  # --slow-n 2
    mosaics = scores[scores["set"] == "mosaics"].groupby(["method", "metric"]).size()
    assert (mosaics.drop("score_cam") == 3 * 4).all() and (mosaics["score_cam"] == 2 * 4).all()
    assert set(scores.loc[scores["set"] == "boxes", "class"]) == {"dog"}  # the zebra is skipped
    sanity = scores[scores["set"] == "sanity"]
    assert set(sanity.loc[sanity["method"] == "nopool_cam", "stage"]) == {"logits", "cam_features", "conv1"}
    assert set(sanity["method"]) == set(registry.METHODS)
    grids = test[test["metric"] == "effective_grid"]
    assert set(grids["value"]) <= {1, 2, 4, 8, 16, 32}


def test_report_json_and_markdown(produced):
    out, config, _, _ = produced
    data = json.loads((out / "report.json").read_text())
    meta = data["meta"]
    assert meta["command"] == report.command_line(config, out) and meta["n_images"] == 6 and meta["n_mosaics"] == 3
    assert [m["trained"] for m in meta["models"]] == [False, False]
    native = meta["models"][0]["native"]
    assert native["grad_cam"] == native["score_cam"] == "4x4" and native["guided_grad_cam"] == "32x32"
    assert native["layer_cam_fused"] == "32x32" and meta["models"][0]["layers"]["layer_cam_fused"] == ["conv1", "conv2"]
    assert meta["models"][1] | {"methods": ["nopool_cam"]} == meta["models"][1]
    assert any("zebra" in why for why in meta["skipped"]) and any("missing" in why for why in meta["skipped"])
    precision = "bfloat16" if fast_bfloat16() else "float32"  # --precision auto
    assert meta["precision"] == precision and set(meta["precision_gap"]) == {"tiny_vgg", "tiny_gap"}
    assert len(data["curves"]["x"]) == 5 and set(data["curves"]["methods"]) == set(registry.METHODS)
    key = ("test", "deletion_auc", "nopool_cam")
    row = next(r for r in data["summary"] if (r["set"], r["metric"], r["method"]) == key)
    assert row["n"] == 6 and row["low"] <= row["mean"] <= row["high"]
    assert {r["versus"] for r in data["differences"]} == set(registry.METHODS) - {"nopool_cam"}
    text = (out / "report.md").read_text()
    for expected in ("untrained stand-in", "| Deletion AUC | lower |", "Pointing game", "randomised down to",
                     "Effective resolution", "![", "0.250 (n=12)", "bootstrap", f"scored in {precision}", "## Answer",
                     report_content.QUESTION, "| Score-CAM | tiny_vgg |", "at most the first 2 images"):
        assert expected in text


def test_the_gap_model_runs_once_per_image_set(produced):
    # 6 test images in 2 batches, then 3 mosaics (1 batch) per tile: the first tile's pass gives the CAMs of every
    # class, so tiles 2-4 skip the GAP model; then the masked photos (1 batch), then the boxed images (1 batch).
    assert produced[3] == [True, True, True, False, False, False, True, True]


def test_command_line_reproduces_the_arguments(produced):
    out, config, _, _ = produced
    again = cli.build_parser().parse_args(report.command_line(config, out).split()[3:])  # after "python -m cam"
    assert cli.report_config(again) == config and again.out == str(out)


def test_missing_data_is_an_error_not_a_traceback(tmp_path, capsys):
    config = evaluation.EvaluationConfig(tmp_path, n=2, mosaics=0, sanity_n=0, steps=4, batch_size=4)
    models = (tiny("tiny_vgg", "conv2"), tiny("tiny_gap", "cam_features"))
    assert report.run(config, tmp_path / "out", models=models, log=lambda message: None) == 2  # before Ray starts
    assert "No 'test' folder" in capsys.readouterr().err


def test_bfloat16_copy_computes_convolutions_in_bfloat16_and_keeps_the_weights():
    model = tiny("tiny_gap", "cam_features").model
    copy = with_precision(model, "bfloat16")
    assert with_precision(model, "float32") is model
    assert copy.get_layer("conv1").dtype_policy.name == "mixed_bfloat16"
    assert copy.get_layer("logits").dtype_policy.name == "float32" and copy.output.dtype == "float32"
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(copy.predict_on_batch(images), model.predict_on_batch(images), atol=0.02)


def test_interval_is_a_bootstrap_around_the_mean():
    rng = np.random.default_rng(0)
    row = evaluation.interval(np.r_[np.zeros(50), np.ones(50), np.nan], rng)
    assert row["mean"] == 0.5 and row["n"] == 100 and 0.38 < row["low"] < 0.45 and 0.55 < row["high"] < 0.62
    assert evaluation.interval(np.array([np.nan]), rng)["n"] == 0


def test_the_shown_command_names_no_folder_outside_the_project():
    shown = report_content.public_command("cam report --data ../shared/data/photos4 --out /srv/cam/reports/x --n 2")
    assert shown == "cam report --data photos4 --out x --n 2"
    inside = "--data data/cifar4 --out reports/latest"
    assert report_content.public_command(inside) == inside


def test_page_shows_the_report(produced, monkeypatch):
    monkeypatch.setenv("CAM_REPORT_DIR", str(produced[0]))
    page = evaluation_page().run()
    assert not page.exception
    assert any("Deletion AUC" in block.value for block in page.markdown)
    opening = page.markdown[0].value.splitlines()  # three plain sentences before the tables, no server path
    assert len(opening) == 3 and opening[0].startswith("- To see **where** the object is, trust **")
    assert opening[1].startswith("- To see **fine detail** without retraining the network, use **")
    assert opening[2].startswith("- To **check that the network learned something**")
    assert str(produced[0]) not in "\n".join(block.value for block in [*page.markdown, *page.caption])
    assert len(page.get("plotly_chart")) == len(report_content.FIGURES)


def test_page_shows_each_report_in_its_own_tab(produced, tmp_path, monkeypatch):
    other = tmp_path / "other"
    shutil.copytree(produced[0], other)
    monkeypatch.setenv("CAM_REPORT_DIR", os.pathsep.join([str(produced[0]), str(other)]))
    page = evaluation_page().run()
    assert not page.exception
    assert len(page.tabs) == 2
    assert len(page.get("plotly_chart")) == 2 * len(report_content.FIGURES)


def test_a_damaged_report_says_so_in_its_tab_and_the_others_still_work(tmp_path, monkeypatch):
    good, cut, odd = tmp_path / "good", tmp_path / "cut", tmp_path / "odd"
    shutil.copytree(report_content.DEFAULT_OUT, good)
    text = (good / "report.json").read_text()
    cut.mkdir()
    (cut / "report.json").write_text(text[: len(text) // 2])  # truncated mid-way
    odd.mkdir()
    (odd / "report.json").write_text(json.dumps({**json.loads(text), "summary": [{"set": "x"}]}))  # valid JSON
    monkeypatch.setenv("CAM_REPORT_DIR", os.pathsep.join(str(folder) for folder in (cut, good, odd)))
    page = evaluation_page().run()
    assert not page.exception
    assert [tab.label for tab in page.tabs] == ["Report “cut”", "CIFAR thumbnails (32 px)", "CIFAR thumbnails (32 px)"]
    assert [error.value for error in page.tabs[0].error] == [report_content.UNREADABLE_REPORT]
    assert [error.value for error in page.tabs[2].error] == [report_content.UNSHOWABLE_REPORT]
    assert not page.tabs[1].error and len(page.tabs[1].get("plotly_chart")) == len(report_content.FIGURES)
    said = "\n".join(str(element.value) for kind in ("markdown", "error", "caption") for element in page.get(kind))
    assert str(tmp_path) not in said and "Traceback" not in said and "JSONDecodeError" not in said


def test_page_without_a_report_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv("CAM_REPORT_DIR", str(tmp_path))
    page = evaluation_page().run()
    assert not page.exception
    assert "No evaluation report here yet" in page.info[0].value and "python -m cam report" in page.code[0].value


STUDY_GRIDS = {"grad_cam": (7.6, "8x8"), "guided_grad_cam": (128.0, "128x128"), "nopool_cam": (19.7, "128x128")}


def made_report(pair: str, pointing: dict[str, dict[str, float]], sanity: dict[str, float],
                grids: dict[str, tuple[float, str]] = STUDY_GRIDS) -> dict:
    """A report's content with hand-set numbers, for the study's three methods on ``pair``'s networks: per set
    ("mosaics", "masks") each method's pointing score, each method's rank correlation with the scrambled network's map
    (``sanity``), its effective grid and native map (``grids``); deletion and insertion alike for every method."""
    def row(set_: str, metric: str, key: str, mean: float, stage: str = "") -> dict:
        return {"set": set_, "metric": metric, "method": key, "stage": stage, "mean": mean, "low": mean - 0.05,
                "high": mean + 0.05, "n": 10}

    summary = [row("test", "effective_grid", key, grid) for key, (grid, _) in grids.items()]
    summary += [row("test", metric, key, 0.3) for key in grids for metric in ("deletion_auc", "insertion_auc")]
    summary += [row(set_, "pointing", key, score) for set_, scores in pointing.items() for key, score in scores.items()]
    summary += [row("sanity", "spearman", key, value, "logits") for key, value in sanity.items()]
    roles = {"gradcam": [key for key in grids if key != "nopool_cam"], "cam": ["nopool_cam"]}
    names = {"gradcam": MODEL_SETS[pair].gradcam, "cam": MODEL_SETS[pair].gap}
    models = [{"role": role, "name": names[role], "methods": keys, "native": {key: grids[key][1] for key in keys}}
              for role, keys in roles.items()]
    return {"meta": {"models": models, "methods": {key: registry.METHODS[key].label for key in grids}},
            "summary": summary}


PASSING = {"grad_cam": -0.04, "guided_grad_cam": -0.09, "nopool_cam": -0.3}


@pytest.mark.parametrize(("mosaics", "masks", "sentence"), [
    pytest.param(  # one method best at both: named once, with both figures
        {"grad_cam": 0.68, "guided_grad_cam": 0.6, "nopool_cam": 0.5},
        {"grad_cam": 1.0, "guided_grad_cam": 0.9, "nopool_cam": 0.8},
        "To see **where** the object is, trust **Grad-CAM** most: on pictures made of four photos, its strongest spot "
        "fell on the right one 68% of the time; on photos of horses with their outline drawn, its strongest spot fell "
        "on the horse 100% of the time.", id="one winner"),
    pytest.param(  # two winners: both named, Grad-CAM's figure beside the other's
        {"grad_cam": 0.72, "guided_grad_cam": 0.74, "nopool_cam": 0.51},
        {"grad_cam": 1.0, "guided_grad_cam": 0.99, "nopool_cam": 0.99},
        "To see **where** the object is, trust **Guided Grad-CAM** on pictures made of four photos (its strongest spot "
        "fell on the right one 74% of the time; Grad-CAM: 72%) and **Grad-CAM** on photos of horses with their outline "
        "drawn (its strongest spot fell on the horse 100% of the time).", id="two winners"),
])
def test_the_where_sentence_names_the_pointing_games_winners(mosaics, masks, sentence):
    pointing = {"mosaics": mosaics, "masks": masks}
    assert report_content.plain_summary(made_report("photos", pointing, PASSING))[0] == sentence


def test_fine_detail_names_the_finest_map_that_passes_the_scrambling_test():
    pointing = {"mosaics": {"grad_cam": 0.7}}
    summary = report_content.plain_summary(made_report("photos", pointing, PASSING))
    assert summary[1] == ("To see **fine detail** without retraining the network, use **Guided Grad-CAM**: its "
                          "map holds detail of about 128 x 128 of its 128 x 128 cells, where Grad-CAM's holds about "
                          "8 x 8 of its 8 x 8 cells.")
    assert summary[2] == ("To **check that the network learned something**, any of these maps will do: each "
                          "changed when the network's learned weights were scrambled (rank correlation with the "
                          "scrambled network's map at most -0.04; 1 = unchanged).")
    careless = report_content.plain_summary(made_report("photos", pointing, {**PASSING, "guided_grad_cam": 0.72}))
    assert "use **Grad-CAM**: its map holds detail of about 8 x 8 of its 8 x 8 cells" in careless[1]
    assert careless[2] == (
        "To **check that the network learned something**, do not use **Guided Grad-CAM**: its map hardly changes when "
        "the network's learned weights are scrambled (rank correlation with the scrambled network's map 0.72; "
        "1 = unchanged), so its detail shows the photo's edges more than the network's reasoning; the others stay at "
        "or under -0.04."
    )


def test_the_tabs_say_why_two_pairs_differ_and_are_named_by_their_pair():
    photos = made_report("photos", {"mosaics": {"grad_cam": 0.68, "nopool_cam": 0.5}},
                         {**PASSING, "guided_grad_cam": 0.42})
    cifar = made_report("cifar", {"mosaics": {"grad_cam": 0.13, "nopool_cam": 0.63}},
                        {**PASSING, "guided_grad_cam": 0.55}, {**STUDY_GRIDS, "grad_cam": (2.0, "2x2")})
    assert report_content.report_title(photos) == "Photos (128 px)"
    assert report_content.report_title(cifar) == "CIFAR thumbnails (32 px)"
    differ = report_content.why_reports_differ([photos, cifar])
    assert differ[0].startswith("The pairs differ on **Guided Grad-CAM**: with the Photos (128 px) networks its map "
                                "changed when the weights were scrambled (0.42), with the CIFAR thumbnails (32 px) "
                                "networks it hardly did (0.55).")
    assert "68% of the time with the Photos (128 px) networks and 13%" in differ[1]
    assert "8 x 8 cells and 2 x 2 cells" in differ[1] and len(differ) == 2
    assert report_content.why_reports_differ([photos]) == []


def test_every_shipped_report_reads_and_opens_with_where_detail_and_check():
    """The shipped reports (their numbers change when they are regenerated: the sentences' logic is tested above)."""
    folders = report_content.report_dirs()
    assert {folder.name for folder in folders} >= {"photos", "latest"}
    for folder in folders:
        summary = report_content.plain_summary(report_content.load_report(folder))
        assert [sentence.split("**")[1] for sentence in summary] == ["where", "fine detail",
                                                                     "check that the network learned something"]


def test_accuracy_by_size_reads_the_cards_squashed_first(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(cam.core.catalog, "CHECKPOINTS", tmp_path)
    accuracy_by_size = report_content.accuracy_by_size
    by_size = {"256": {"accuracy": 0.9}, "128 squashed": {"accuracy": 0.8}, "128": {"accuracy": 0.933}}
    (tmp_path / "vgg16_photos.json").write_text(json.dumps({"metrics": {"test_by_size": by_size}}))
    (tmp_path / "nopool_gap_photos.json").write_text("{not json")  # unreadable: left out, never an error
    (tmp_path / "vgg16.json").write_text(json.dumps({"metrics": {"test": {"accuracy": 0.9}}}))  # no sizes yet
    assert accuracy_by_size() == {"Photos (128 px)": [
        {"network": "VGG16 (ours, photos, 128 px)", "128 px, squashed": "80.0%", "128 px": "93.3%", "256 px": "90.0%"}
    ]}
    assert list(accuracy_by_size()["Photos (128 px)"][0]) == ["network", "128 px, squashed", "128 px", "256 px"]


def test_the_evaluation_page_is_drawn_without_tensorflow_or_keras() -> None:
    """The page only reads reports: drawing it in a fresh process (the shipped reports) loads neither library."""
    from benchmarks.bench_evaluation_page import ROOT, draw_once

    drawn = draw_once(ROOT)
    assert drawn["tabs"] >= 1 and drawn["errors"] == 0
    assert not drawn["tensorflow"] and not drawn["keras"]
