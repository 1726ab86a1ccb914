"""How often does a method say nothing, and how flat are the raw Grad-CAM maps? For every registry method on a
model set's two networks, on a class-balanced sample of a test split at the photos' own aspect (short side
--size, as the page feeds them), each network explaining its own top class: the share of blank maps
(``cam.explain.pipeline.flat``: all zero, constant or not finite, what the page calls "nothing found") and, for
Grad-CAM, the median min/max of its raw maps (``cam.evaluate.metrics.min_max_ratio``; near 1 a map is flat and its
colours are min-max noise; the photo VGG16 must stay at or under 0.5).

    python -m benchmarks.bench_flatness --data ../shared/data/photos4 --set photos --size 128 --n 1000 --slow-n 100

Slow methods (Score-CAM) are computed on the first --slow-n photos of the sample only.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from cam.cli import update_card
from cam.core.catalog import GRAD_CAM, MODEL_SETS, Role, checkpoint_path
from cam.core.predict import by_shape
from cam.data.folders import balanced_sample, load_split
from cam.evaluate.metrics import min_max_ratio
from cam.explain.methods import Explainer
from cam.explain.pipeline import flat
from cam.explain.registry import METHODS, explain
from cam.models.checkpoints import load_model

BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="image-folder root with test/<class>/")
    parser.add_argument("--set", default="photos", choices=list(MODEL_SETS))
    parser.add_argument("--size", type=int, help="short side (default: the networks' card size)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--slow-n", type=int, default=100)
    parser.add_argument("--methods", default="all", help="comma-separated registry keys, or all")
    parser.add_argument("--update-card", action="store_true",
                        help="store each network's figures as metrics.blank_maps in its card")
    args = parser.parse_args()

    model_set = MODEL_SETS[args.set]
    loaded = {Role.GRADCAM: load_model(model_set.gradcam), Role.GAP: load_model(model_set.gap)}
    models = {role: item.model for role, item in loaded.items()}
    layer = loaded[Role.GRADCAM].card["gradcam_layer"]
    size = args.size or loaded[Role.GRADCAM].input_size
    chosen = list(METHODS.values()) if args.methods == "all" else [METHODS[k] for k in args.methods.split(",")]
    data = load_split(args.data, "test", size, classes=loaded[Role.GRADCAM].classes, squash=False)
    sample = balanced_sample(data.labels, args.n)
    images = [data.images[i] for i in sample]
    explainer = Explainer(models[Role.GRADCAM], layer, models[Role.GAP])
    blank: dict[str, list[bool]] = {method.key: [] for method in chosen}
    ratios: list[float] = []
    cheap = [m for m in chosen if not m.slow]
    for indices in by_shape(images).values():
        for start in range(0, len(indices), BATCH):
            part = indices[start : start + BATCH]
            x = np.stack([images[i] for i in part]).astype(np.float32)
            explanation = explainer(x)
            explanation.explain_cam_class()
            explain(explanation, cheap, models, {role: x for role in models}, layer)
            slow_rows = [row for row, i in enumerate(part) if i < args.slow_n]
            for method in (m for m in chosen if m.slow and slow_rows):
                maps = method.compute(models[method.role], x[slow_rows], explanation.classes[method.role][slow_rows],
                                      layer)
                blank[method.key] += [flat(m) for m in maps]
            for method in cheap:
                blank[method.key] += [flat(m) for m in explanation.maps[method.key]]
            if GRAD_CAM in explanation.maps:
                ratios += list(min_max_ratio(explanation.maps[GRAD_CAM]))
    result = {
        "set": args.set, "size": size, "photos": len(images), "layer": layer,
        "blank_share": {key: round(float(np.mean(values)), 4) for key, values in blank.items()},
        "maps": {key: len(values) for key, values in blank.items()},
        "grad_cam_median_min_max": round(float(np.nanmedian(ratios)), 4) if ratios else None,
    }
    print(f"{model_set.title}: {len(images)} test photos of {args.data}, own aspect, short side {size}")
    for key, share in result["blank_share"].items():
        print(f"  {key:<18} blank on {share:6.1%} of {result['maps'][key]} maps")
    if ratios:
        print(f"  Grad-CAM ({layer}): median min/max of the raw maps {result['grad_cam_median_min_max']:.3f}")
    print(json.dumps(result))
    if args.update_card:
        for role, item in loaded.items():
            keys = [method.key for method in chosen if method.role == role]
            figures = {"size": size, "photos": len(images), "explained": "each network's top class",
                       "share": {key: result["blank_share"][key] for key in keys},
                       "maps": {key: result["maps"][key] for key in keys}}
            if role == Role.GRADCAM and ratios:
                figures["grad_cam_median_min_max"] = result["grad_cam_median_min_max"]
            card = update_card(checkpoint_path(item.card["name"]), "metrics",
                               {**item.card["metrics"], "blank_maps": figures})
            print(f"updated metrics.blank_maps in {card}")


if __name__ == "__main__":
    main()
