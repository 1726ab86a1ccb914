"""The EfficientNet-Lite0 teacher: its 1000 -> 4 mapping, preprocessing, CLI (the network itself:
test_imagenet_net.py)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cam.train import teacher


def test_four_class_probabilities_sums_each_group_and_renormalises():
    p = np.zeros(1000)
    p[[10, 130]] = 0.1  # bird (7-24 and 127-146)
    p[282] = 0.1  # cat (281-285)
    p[[151, 268]] = 0.075  # dog (151-268), both ends
    p[339] = 0.05  # horse (sorrel)
    # Neighbours just outside each range, and elsewhere: in no group, so they must not count.
    p[[6, 25, 150, 269, 280, 286, 338, 340]] = 0.05
    p[500] = 1 - p.sum()
    out = teacher.four_class_probabilities(p[None])
    assert out.dtype == np.float32 and out.shape == (1, 4)
    np.testing.assert_allclose(out[0], [0.4, 0.2, 0.3, 0.1], rtol=1e-6)


def test_group_matrix_follows_cam_models_groups():
    from cam.models.checkpoints import imagenet_class_groups

    matrix = teacher.group_matrix()
    for column, name in enumerate(teacher.CLASSES):
        assert np.flatnonzero(matrix[:, column]).tolist() == sorted(imagenet_class_groups()[name])
    assert matrix.sum(axis=1).max() == 1  # no ImageNet class in two groups


@pytest.mark.parametrize("resize", teacher.RESIZES)
def test_preprocess_shape_and_range(resize: str):
    pixels = np.zeros((160, 320, 3), np.uint8)
    pixels[:, 160:] = 255  # left half black, right half white
    x = teacher.preprocess(Image.fromarray(pixels), resize)
    assert x.shape == (224, 224, 3) and x.dtype == np.float32
    assert (x[:, 0] == 0).all() and (x[:, -1] == 255).all()


def test_cli_writes_soft_labels(tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "teacher" / "test.npz"
    teacher.main(["--data", str(tiny_dataset), "--split", "test", "--out", str(out)])
    saved = np.load(out)
    assert saved["files"][0] == "test/bird/000.png" and len(saved["files"]) == 12
    assert saved["probabilities"].dtype == np.float32 and saved["probabilities"].shape == (12, 4)
    np.testing.assert_allclose(saved["probabilities"].sum(axis=1), 1, rtol=1e-5)
    assert list(saved["classes"]) == list(teacher.CLASSES)
    assert "horse" in capsys.readouterr().out


def test_compare_refuses_the_test_split(tiny_dataset: Path):
    with pytest.raises(SystemExit):
        teacher.main(["--data", str(tiny_dataset), "--split", "test", "--compare", "8"])
