"""The command line end to end in temporary folders, in-process through cam.cli.main (one subprocess for --help)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cam.models.architectures
import cam.models.checkpoints
from cam import cli
from cam.evaluate.report import command_line
from cam.models.architectures import ARCHITECTURES

PROJECT = Path(__file__).resolve().parent.parent
COMMANDS = ("explain", "train", "evaluate", "data", "models", "methods", "report", "verdict")
PNGS = ("grad_cam", "guided_grad_cam", "nopool_cam", "side_by_side")


@pytest.fixture
def checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty checkpoints folder for the registry (cam.core.catalog read $CAM_CHECKPOINTS when it was imported)."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    monkeypatch.setenv("CAM_CHECKPOINTS", str(folder))
    monkeypatch.setattr(cam.core.catalog, "CHECKPOINTS", folder)
    return folder


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    """An RGB JPEG 200x150 and an RGBA PNG 64x96 (width x height)."""
    rng = np.random.default_rng(0)
    jpeg, png = tmp_path / "street.jpg", tmp_path / "logo.png"
    Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(jpeg)
    Image.fromarray(rng.integers(0, 256, (96, 64, 4), dtype=np.uint8), "RGBA").save(png)
    return {"street": jpeg, "logo": png}


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


# --- parser ----------------------------------------------------------------------------------------------------------


def test_help_lists_every_command_without_importing_tensorflow(tmp_path: Path) -> None:
    env = {**os.environ, "CAM_CHECKPOINTS": str(tmp_path)}

    def python(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=PROJECT, env=env, capture_output=True, text=True)

    shown = python("-m", "cam", "--help")
    assert shown.returncode == 0, shown.stderr
    assert all(command in shown.stdout for command in COMMANDS)
    probe = "import sys, cam.cli; cam.cli.build_parser(); print({'tensorflow', 'keras'} & set(sys.modules))"
    imported = python("-c", probe)
    assert imported.stdout.strip() == "set()", imported.stderr


def test_train_offers_exactly_the_trainable_architectures() -> None:
    assert set(cli.ARCHITECTURES) == set(ARCHITECTURES)


def test_unknown_option_exits_2() -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["models", "--verbose"])
    assert exited.value.code == 2


# --- explain ---------------------------------------------------------------------------------------------------------


def test_explain_writes_full_resolution_panels_and_native_maps(checkpoints, photos, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert cli.main(["explain", *map(str, photos.values()), "--out", str(out), "--raw"]) == 0
    printed = capsys.readouterr()
    assert "warning: No checkpoint for 'vgg16'" in printed.err and "UNTRAINED" in printed.err
    assert printed.out.count("vgg16 top 3:") == printed.out.count("nopool_gap top 3:") == 2
    verdicts = [line for line in printed.out.splitlines() if line.startswith("  verdict: ")]
    assert len(verdicts) == 2 and all(re.search(r"Both networks say|The networks disagree|Not sure: ", line)
                                      for line in verdicts)
    for stem, photo in photos.items():
        width, height = _size(photo)
        for method in PNGS[:3]:
            assert _size(out / f"{stem}_{method}.png") == (width, height)
        together_width, together_height = _size(out / f"{stem}_side_by_side.png")
        assert together_width >= 3 * width and together_height > height  # three panels abreast under titles
        for name in PNGS:
            assert str(out / f"{stem}_{name}.png") in printed.out
        # Native resolutions at the photo's own aspect, short side 32 (the CIFAR pair's size), long side rounded to a
        # multiple of 32: the 4:3 street is 32x32, the 2:3 logo 64x32 (h x w). VGG16's block5_conv3 is 1/16 of it;
        # the other two are at the input's size.
        input_shape = {"street": (32, 32), "logo": (64, 32)}[stem]
        assert np.load(out / f"{stem}_grad_cam.npy").shape == (input_shape[0] // 16, input_shape[1] // 16)
        assert np.load(out / f"{stem}_guided_grad_cam.npy").shape == (*input_shape, 3)
        assert np.load(out / f"{stem}_nopool_cam.npy").shape == input_shape


def test_explain_reports_a_bad_image_and_still_explains_the_good_one(checkpoints, photos, tmp_path, capsys) -> None:
    bad, out = tmp_path / "broken.png", tmp_path / "out"
    bad.write_text("not an image")
    argv = ["explain", str(bad), str(photos["logo"]), "--model", "nopool_gap", "--out", str(out)]
    assert cli.main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "is not a picture this tool can read" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"logo_{name}.png" for name in PNGS)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--model", "resnet"], "Unknown model 'resnet'"),
        (["--model", "nopool_gap", "--class", "zebra"], "class 'zebra' is unknown"),
        (["--model", "nopool_gap", "--layer", "nowhere"], "has no layer 'nowhere'"),
        (["--methods", "grad_cam,sharpest"], "unknown method sharpest; choose from grad_cam"),
    ],
)
def test_explain_bad_choices_exit_2_with_one_line(checkpoints, photos, tmp_path, capsys, options, message) -> None:
    assert cli.main(["explain", str(photos["logo"]), "--out", str(tmp_path / "out"), *options]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


def test_explain_refuses_images_whose_outputs_would_collide(tmp_path, capsys) -> None:
    assert cli.main(["explain", "a/photo.jpg", "b/photo.png", "--out", str(tmp_path / "out")]) == 2
    assert "several images are named photo" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- train, evaluate -------------------------------------------------------------------------------------------------


def test_train_then_evaluate_and_update_the_card(checkpoints, shared_tiny_dataset, tmp_path, capsys) -> None:
    data, out = str(shared_tiny_dataset), tmp_path / "trained"
    options = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--precision", "float32"]
    options += ["--cutout", "4", "--cutmix", "0.5", "--weight-decay", "0.001"]
    assert cli.main(["train", "nopool_gap", "--data", data, *options, "--out", str(out), "--name", "tiny"]) == 0
    card_path = out / "tiny.json"
    before = json.loads(card_path.read_text())
    chosen = {"cutout": 4, "cutmix": 0.5, "weight_decay": 0.001}
    assert before["training"]["config"] | chosen == before["training"]["config"]
    capsys.readouterr()

    assert cli.main(["evaluate", str(out / "tiny.keras"), "--data", data, "--update-card"]) == 0
    printed = capsys.readouterr().out
    after = json.loads(card_path.read_text())
    assert f"accuracy {after['metrics']['test']['accuracy']:.4f} on 12 images" in printed
    assert "confusion matrix" in printed and str(card_path) in printed
    assert after["metrics"]["test"]["confusion_matrix"] == before["metrics"]["test"]["confusion_matrix"]
    assert {key: value for key, value in after.items() if key != "metrics"} == {
        key: value for key, value in before.items() if key != "metrics"
    }
    assert after["metrics"]["validation"] == before["metrics"]["validation"]
    assert sorted(p.name for p in out.iterdir()) == ["tiny.json", "tiny.keras"]
    assert cli.main(["evaluate", str(out / "tiny.keras"), "--data", data, "--n", "8"]) == 0  # a balanced sample
    assert "on 8 images" in capsys.readouterr().out


def test_evaluate_without_a_checkpoint_exits_2(checkpoints, shared_tiny_dataset, capsys) -> None:
    assert cli.main(["evaluate", "nopool_gap", "--data", str(shared_tiny_dataset)]) == 2
    assert capsys.readouterr().err.strip() == f"error: Checkpoint file not found: {checkpoints / 'nopool_gap.keras'}"


def test_update_card_changes_one_key_and_leaves_the_checkpoint_alone(tmp_path: Path) -> None:
    keras_file, card = tmp_path / "m.keras", tmp_path / "m.json"
    keras_file.write_bytes(b"weights")
    card.write_text(json.dumps({"name": "m", "metrics": {"test": 1}}))
    assert cli.update_card(keras_file, "metrics", {"test": 2}) == card
    assert json.loads(card.read_text()) == {"name": "m", "metrics": {"test": 2}}
    assert keras_file.read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.keras"]


# --- data, models, report --------------------------------------------------------------------------------------------


def test_data_cifar4_offline_fails_with_a_clear_message(tmp_path, capsys) -> None:
    out = tmp_path / "cifar4"
    assert cli.main(["data", "cifar4", "--out", str(out), "--url", "http://127.0.0.1:9/cifar-10-python.tar.gz"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: Could not download") and "\n" not in error
    assert str(out / "cifar-10-python.tar.gz") in error


def test_models_lists_the_registry_without_loading_a_model(checkpoints, tmp_path, monkeypatch, capsys) -> None:
    def refuse() -> None:
        raise AssertionError("`models` must not load a model")

    for loader in ("load_checkpoint", "untrained_stand_in", "vgg16_imagenet"):  # every way load_model loads
        monkeypatch.setattr(cam.models.checkpoints, loader, refuse)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no-keras-cache"))
    (checkpoints / "nopool_gap.keras").write_bytes(b"present")
    assert cli.main(["models"]) == 0
    printed = capsys.readouterr().out
    for name in ("vgg16", "vgg16_imagenet", "nopool_gap"):
        assert f"{name}: " in printed
    assert f"yes, checkpoint {checkpoints / 'nopool_gap.keras'}" in printed
    assert f"no checkpoint at {checkpoints / 'vgg16.keras'}" in printed
    assert "not yet: downloads vgg16_weights_tf_dim_ordering_tf_kernels.h5" in printed


def test_explain_writes_one_file_per_chosen_method(checkpoints, photos, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["explain", str(photos["logo"]), "--out", str(out), "--raw", "--methods", "layer_cam_fused,hires_cam"]
    assert cli.main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["logo_hires_cam.npy", "logo_hires_cam.png", "logo_layer_cam_fused.npy", "logo_layer_cam_fused.png",
                     "logo_side_by_side.png"]
    assert np.load(out / "logo_hires_cam.npy").shape == (4, 2) and _size(out / "logo_hires_cam.png") == (64, 96)
    assert np.load(out / "logo_layer_cam_fused.npy").shape == (64, 32)
    assert "Layer-CAM, 3 layers fused on VGG16: " in capsys.readouterr().out


def test_methods_lists_the_registry(capsys) -> None:
    assert cli.main(["methods"]) == 0
    printed = capsys.readouterr().out
    assert "grad_cam: Grad-CAM (default), explains the Grad-CAM model" in printed
    assert "nopool_cam: NoPool-GAP CAM (default), explains the GAP (CAM) model" in printed
    assert "score_cam: Score-CAM, explains" in printed


def test_report_options_become_an_evaluation_config() -> None:
    args = cli.build_parser().parse_args(["report", "--data", "d", "--methods", "all", "--n", "5", "--slow-n", "2"])
    config = cli.report_config(args)
    assert config.n == 5 and config.slow_n == 2 and config.mosaics == 1000 and str(config.data) == "d"
    assert config.size is None  # the models' own size unless asked
    sized = cli.report_config(cli.build_parser().parse_args(["report", "--data", "d", "--size", "224"]))
    assert sized.size == 224 and "--size 224" in command_line(sized, Path("out"))
    assert config.methods[:3] == ("grad_cam", "guided_grad_cam", "nopool_cam") and "score_cam" in config.methods
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["report", "--data", "d", "--n", "0"])


def test_verdict_fit_writes_small_statistics_that_explain_then_uses(checkpoints, shared_tiny_dataset, photos,
                                                                     tmp_path, capsys) -> None:
    data = str(shared_tiny_dataset)
    assert cli.main(["verdict", "fit", "--set", "cifar", "--data", data]) == 2  # no trained networks: said, no file
    assert "vgg16 has no checkpoint here; train it first" in capsys.readouterr().err
    for name in ("vgg16", "nopool_gap"):
        stand_in = cam.models.checkpoints.untrained_stand_in(name)
        cam.models.checkpoints.save_checkpoint(stand_in.model, stand_in.card, checkpoints)
    assert cli.main(["verdict", "fit", "--set", "cifar", "--data", data, "--n", "24", "--held-out", "8"]) == 0
    printed = capsys.readouterr().out
    for name in ("vgg16", "nopool_gap"):
        stats = checkpoints / f"{name}.ood.npz"
        assert stats.is_file() and stats.stat().st_size < 2_000_000 and str(stats) in printed
    assert cli.main(["explain", str(photos["street"]), "--set", "cifar", "--out", str(tmp_path / "out")]) == 0
    said = capsys.readouterr().out
    assert re.search(r"  verdict: (Both networks say|The networks disagree|Not sure: )", said)
