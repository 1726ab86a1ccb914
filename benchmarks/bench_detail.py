"""What each detail level costs the networks, and what Score-CAM's skipped channels save, on real photos.

For each short side S of ``cam.core.images.detail_sizes`` (128, 192, 256 and 320 for the photo pair), the photos of
``--data``'s test split go through the fused Explainer at their own aspect (``cam.explain.pipeline.explain_image``, the
dashboard's path): the median time of one photo's pass, its ratio to the standard detail measured in the same run,
and how many graphs were compiled (one per input shape). Then Score-CAM's masked passes per photo: one per channel
of the Grad-CAM layer that varies on the photo (``cam.explain.methods.varying_channels``), against one per channel.

    python -m benchmarks.bench_detail --data ../shared/data/photos4 [--photos 24]
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras
import numpy as np

from cam.core.catalog import MODEL_SETS
from cam.core.device import describe_device
from cam.core.images import detail_sizes, load_image
from cam.data.folders import data_root, list_images
from cam.explain.methods import Explainer, feature_layer, varying_channels
from cam.explain.pipeline import explain_image, model_inputs, photo_view, trained_size
from cam.models.checkpoints import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="dataset root with a test split (default: $CAM_DATA)")
    parser.add_argument("--set", default="photos", choices=list(MODEL_SETS))
    parser.add_argument("--photos", type=int, default=24, help="test photos, evenly spread over the split")
    args = parser.parse_args()
    pair = MODEL_SETS[args.set]
    gradcam, cam_model = load_model(pair.gradcam), load_model(pair.gap)
    paths, _ = list_images(data_root(args.data), "test")
    photos = [load_image(paths[i]) for i in np.linspace(0, len(paths) - 1, args.photos).astype(int)]
    explainer = Explainer(gradcam.model, None, cam_model.model)
    print(f"device: {describe_device()}; {len(photos)} photos of {args.data}'s test split, {args.set} pair, "
          "median seconds of one photo's fused pass (both networks) after a first pass per shape")
    medians = {}
    for name, size in detail_sizes(trained_size(gradcam, cam_model)).items():
        compiled = explainer.compilations
        for photo in photos:  # first pass per shape: compiles
            explain_image(photo, explainer, gradcam, cam_model, short_side=size)
        seconds = []
        for photo in photos:
            started = time.perf_counter()
            explain_image(photo, explainer, gradcam, cam_model, short_side=size)
            seconds.append(time.perf_counter() - started)
        medians[size] = statistics.median(seconds)
        first = medians[min(medians)]
        print(f"{name:>9s} (short side {size}): {medians[size] * 1000:7.0f} ms, x{medians[size] / first:.2f} of "
              f"standard; {explainer.compilations - compiled} graphs compiled")
    layer = gradcam.card["gradcam_layer"]
    features = keras.Model(gradcam.model.inputs, feature_layer(gradcam.model, layer).output)
    channels = int(features.output.shape[-1])
    passes = []
    for photo in photos:
        x = model_inputs(photo, photo_view(photo.shape[:2], gradcam, cam_model))["gradcam"]
        passes.append(1 + len(varying_channels(features(x))))
    print(f"Score-CAM on {layer}: {statistics.median(passes):.0f} passes per photo (median; {min(passes)} to "
          f"{max(passes)}) instead of {1 + channels}: {1 - statistics.mean(passes) / (1 + channels):.0%} fewer")


if __name__ == "__main__":
    main()
