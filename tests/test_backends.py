"""One model definition for both machines: the builders of cam.models give the same logits under Keras's
TensorFlow backend (here) and its PyTorch backend (the GPU machine has PyTorch, no TensorFlow), on the same
weights. Skipped where PyTorch is not installed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from cam.models.architectures import nopool_gap_dilated, vgg16

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent
BUILDS = {  # name -> (builder, options): the photo pair's designs
    "vgg16_linear": (vgg16, {"batch_norm": False, "head": "linear"}),
    "vgg16_mlp": (vgg16, {"batch_norm": False, "head_norm": True}),
    "nopool_gap_dilated": (nopool_gap_dilated, {}),
}
TORCH_SIDE = """
import json, sys
import numpy as np
import keras
from tests.test_backends import BUILDS
assert keras.backend.backend() == "torch"
folder = sys.argv[1]
images = np.load(f"{folder}/images.npy")
out = {}
for name, (build, options) in BUILDS.items():
    model = build(num_classes=4, **options)
    weights = np.load(f"{folder}/{name}.npz")
    model.set_weights([weights[f"w{i}"] for i in range(len(weights.files))])
    logits = keras.Model(model.inputs, model.get_layer("logits").output)
    out[name] = keras.ops.convert_to_numpy(logits(images, training=False)).tolist()
print(json.dumps(out))
"""


def randomised(model: keras.Model, seed: int = 0) -> keras.Model:
    """Every weight random (BatchNorm variances positive), so that a swapped or ignored one would show."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = rng.normal(0, 0.05, weight.shape)
        if "variance" in weight.path:
            value = np.abs(value) + 0.5
        weight.assign(value.astype("float32"))
    return model


def test_the_builders_give_the_same_logits_under_tensorflow_and_torch(tmp_path: Path) -> None:
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 96, 3)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    expected = {}
    for name, (build, options) in BUILDS.items():
        model = randomised(build(num_classes=4, **options))
        np.savez(tmp_path / f"{name}.npz", **{f"w{i}": w for i, w in enumerate(model.get_weights())})
        expected[name] = keras.Model(model.inputs, model.get_layer("logits").output)(images, training=False).numpy()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # keep a torch placed on the path
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", TORCH_SIDE, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for name, logits in expected.items():
        assert np.abs(logits).max() > 1e-3  # not a degenerate all-zero comparison
        np.testing.assert_allclose(np.asarray(got[name]), logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
