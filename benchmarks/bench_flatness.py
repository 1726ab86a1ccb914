"""How flat are the raw Grad-CAM maps? Median min/max (cam.metrics.min_max_ratio) and the share of all-zero maps,
per layer, over 200 test images of each VGG16 of the registry, explaining its own top class.

    python -m benchmarks.bench_flatness [DATA_ROOT]      # DATA_ROOT holds cifar4/ and photos4/ (default ../shared/data)

Near 1 a map is flat and the colours shown are min-max noise (the CIFAR VGG16's default layer); the photo VGG16's
default layer must stay at or under 0.5.
"""

import sys
from pathlib import Path

import numpy as np

from cam.data import load_split
from cam.methods import grad_cam
from cam.metrics import min_max_ratio
from cam.models import load_model

LAYERS = {
    ("vgg16", "cifar4"): ("block5_conv3_bn", "block5_conv3", "block4_conv3_bn"),
    ("vgg16_photos", "photos4"): ("block5_conv3", "block4_conv3"),
}


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data")
    for (name, dataset), layers in LAYERS.items():
        loaded = load_model(name)
        data = load_split(root / dataset, "test", loaded.input_size)
        images = data.images[np.random.default_rng(0).choice(len(data.labels), 200, replace=False)].astype("float32")
        for layer in layers:
            maps = np.concatenate([grad_cam(loaded.model, images[i : i + 25], layer=layer) for i in range(0, 200, 25)])
            empty = (maps.reshape(len(maps), -1).max(axis=1) <= 0).mean()
            print(f"{name} {layer} {maps.shape[1]}x{maps.shape[2]}: median min/max "
                  f"{np.nanmedian(min_max_ratio(maps)):.3f}, all-zero maps {empty:.1%}")


if __name__ == "__main__":
    main()
