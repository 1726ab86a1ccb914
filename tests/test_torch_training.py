"""Training on a PyTorch-only GPU machine: the PyTorch twins of the photo pair are the Keras models (same outputs
after conversion) and the weight pieces fit the machine's file limits (the augmentation: tests/test_augment.py)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from cam import torch_training  # noqa: E402  (after the skip: it imports torch)
from cam.images import resize  # noqa: E402
from cam.models import receptive_field  # noqa: E402


def randomised_state(name: str) -> dict[str, np.ndarray]:
    """A twin with random weights and non-trivial BatchNorm statistics (so a swapped mean/variance would show)."""
    torch.manual_seed(0)
    model = torch_training.MODELS[name]()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return {key: value.detach() for key, value in model.state_dict().items()}


@pytest.mark.parametrize("name", ["vgg16_photos", "nopool_gap_photos"])
def test_the_pytorch_twin_and_its_keras_conversion_give_the_same_logits(name: str, tmp_path: Path) -> None:
    index = torch_training.save_state(randomised_state(name), tmp_path / name)
    state = torch_training.load_state(tmp_path / name, index)
    model = torch_training.to_keras(state, name)
    images = np.random.default_rng(0).uniform(0, 255, (2, 128, 128, 3)).astype(np.float32)
    assert torch_training.max_logit_difference(state, name, model, images) < 1e-4
    learned = sum(layer.count_params() for layer in model.layers if layer.name != "caffe_preprocess")
    assert learned == sum(v.size for k, v in state.items() if k not in ("mean_bgr",) and "num_batches" not in k)
    if name == "nopool_gap_photos":
        assert receptive_field(model) == 129


def test_weight_pieces_respect_the_machines_file_limit_and_round_trip(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch_training, "CHUNK_BYTES", 1000)
    state = {"a": torch.arange(300.0).reshape(3, 100), "b": torch.ones(2, 2, 50), "c": torch.tensor(7.0)}
    index = torch_training.save_state(state, tmp_path / "m")
    pieces = sorted(tmp_path.glob("m.*.bin"))
    assert len(pieces) == 3 and all(piece.stat().st_size <= 1000 for piece in pieces)  # 501 floats = 2004 bytes
    loaded = torch_training.load_state(tmp_path / "m", index)
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value.numpy())


def test_validation_images_are_squashed_exactly_as_the_dashboard_does() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    np.testing.assert_array_equal(torch_training.squashed(Image.fromarray(pixels), 128), resize(pixels, 128))
