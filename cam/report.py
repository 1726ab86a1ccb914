"""``python -m cam report``: score Grad-CAM and Guided Grad-CAM (on the Grad-CAM model, VGG16) and NoPool-GAP CAM
(on the GAP model) for faithfulness, localization, sanity and resolution, and write report.md, scores.csv,
report.json, PNG plots (matplotlib) and interactive HTML plots (Plotly, offline) to one folder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import keras
import matplotlib
import numpy as np
import pandas as pd

from cam.boxes import Box, BoxError, image_path, mosaics, read_boxes, tile_boxes
from cam.data import DataError, ImageSet, load_split
from cam.device import describe_device
from cam.images import ImageError, load_image, model_input
from cam.methods import Explainer, ExplanationError, cam, grad_cam, guided_grad_cam
from cam.metrics import (
    BLUR_SIGMA,
    MIN_IOU,
    POINTING_TOLERANCE,
    REGION_THRESHOLD,
    RESOLUTION_TOLERANCE,
    STEPS,
    at_size,
    cascading_randomization,
    curve_area,
    drop_and_increase,
    effective_grid,
    explanation_images,
    localization_scores,
    perturbation_curves,
    rank_correlation,
    saliency,
)
from cam.models import PROJECT_ROOT, CheckpointError, LoadedModel, WeightsUnavailable, load_model
from cam.training import predict_probabilities

Log = Callable[[str], None]
DEFAULT_OUT = PROJECT_ROOT / "reports" / "latest"
EXAMPLE_COMMAND = "python -m cam report --data ../shared/data/cifar4 --n 1000 --mosaics 1000"
# Which model each method explains: Grad-CAM and Guided Grad-CAM the Grad-CAM model, CAM the GAP model.
METHODS = {"gradcam": "Grad-CAM", "guided_gradcam": "Guided Grad-CAM", "cam": "NoPool-GAP CAM"}
ROLES = {"gradcam": "gradcam", "guided_gradcam": "gradcam", "cam": "cam"}
ROLE_NAMES = {"gradcam": "Grad-CAM model", "cam": "GAP (CAM) model"}
SETS = {
    "test": "Test images (each method explains its model's top prediction)",
    "mosaics": "2x2 mosaics (each tile's class explained in turn; no pointing tolerance)",
    "boxes": f"Boxed images (each class present explained; pointing tolerance {POINTING_TOLERANCE:g} px)",
}
METRICS = {  # key: (label, which way is better, definition)
    "deletion_auc": ("Deletion AUC", "lower", f"p(class) as the most salient pixels are set to black in {STEPS} "
                     "equal chunks; area under the curve, trapezoid rule on [0, 1] (Petsiuk et al. 2018)."),
    "insertion_auc": ("Insertion AUC", "higher", "p(class) as the most salient pixels are put back into a copy "
                      f"blurred with a Gaussian of sigma {BLUR_SIGMA:g} px; area under the curve."),
    "average_drop": ("Average drop (%)", "lower", "mean of 100 * max(0, Y - O) / Y with Y = p(class | image), "
                     "O = p(class | image * min-max normalized map) (Chattopadhyay et al. 2018)."),
    "increase": ("Increase in confidence", "higher", "share of images with O > Y (same E as average drop)."),
    "effective_grid": ("Effective grid (side)", "higher", "side of the coarsest grid that keeps 95% of the map's "
                       "variance (see Resolution)."),
    "pointing": ("Pointing game", "higher", "hit when the map's maximum, at the original image's resolution, is "
                 "inside a box of the explained class, within the tolerance (Zhang et al. 2016)."),
    "energy": ("Energy in box", "higher", "share of the map's positive part, at the original resolution, inside "
               "the boxes of the explained class."),
    "iou": ("Best IoU", "higher", f"IoU between the box around the largest connected region above "
            f"{REGION_THRESHOLD:.0%} of the map's maximum and the closest box of the class (Selvaraju et al. 2017)."),
    "iou_hit": (f"IoU >= {MIN_IOU:g}", "higher", f"share of maps whose best IoU is at least {MIN_IOU:g}."),
    "spearman": ("Spearman vs trained", "lower", "rank correlation between the map of the trained model and of a "
                 "clone whose layers from the output down to the stage are re-initialised (Adebayo et al. 2018)."),
}
RESOLUTION_NOTE = (
    "Effective resolution: a map that can be written as a g x g grid of numbers, shown as blocks or bilinearly "
    "interpolated, has no detail finer than that grid, whatever size it is drawn at. For each map at the model "
    "input size S x S, we fit the best (least-squares) g x g approximation for g = S/2, S/4, ... (each shown both "
    "ways, the better one counts) and take the coarsest g, stopping at the first failure, that keeps at least "
    f"{1 - RESOLUTION_TOLERANCE:.0%} of the map's variance. A bilinearly upsampled 2x2 map (Grad-CAM at VGG16's "
    "block5_conv3 for a 32x32 input) scores 2, a map with pixel-level detail S."
)
COLOURS = dict(zip(METHODS, ("#1f77b4", "#ff7f0e", "#2ca02c"), strict=True))
RESAMPLES = 2000
INTERVAL_NOTE = (
    f"Mean and 95% bootstrap percentile interval ({RESAMPLES} resamples of the maps, seeded); n counts the maps with "
    "a defined score (energy is undefined for a map with no positive value)."
)


# ----------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m cam report``."""
    parser.add_argument("--data", required=True, help="dataset root with test/<class>/*.jpg (e.g. cifar4)")
    parser.add_argument("--boxes", help="box annotations: a JSON file, a VOC .xml file or a folder of them")
    parser.add_argument("--n", type=_at_least(1), default=1000, help="test images for faithfulness and resolution")
    parser.add_argument("--mosaics", type=_at_least(0), default=1000, help="2x2 mosaics for localization (0: none)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default reports/latest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sanity-n", type=_at_least(0), default=50, help="images for the randomization test (0: none)")
    parser.add_argument("--steps", type=_at_least(1), default=STEPS, help="deletion/insertion steps")
    parser.add_argument("--batch-size", type=_at_least(1), default=64, help="maps explained and perturbed together")
    parser.add_argument(
        "--precision", choices=("bfloat16", "float32"), default="bfloat16",
        help="arithmetic of the convolutions when scoring perturbed images (maps are always float32); bfloat16 is "
        "3-7x faster on CPUs with AMX, the report states how far its probabilities are from float32",
    )


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces ``args``."""
    parts = ["python -m cam report", f"--data {args.data}"] + ([f"--boxes {args.boxes}"] if args.boxes else [])
    parts += [f"--n {args.n}", f"--mosaics {args.mosaics}", f"--out {args.out}", f"--seed {args.seed}"]
    parts += [f"--sanity-n {args.sanity_n}", f"--steps {args.steps}", f"--batch-size {args.batch_size}"]
    parts += [f"--precision {args.precision}"]
    return " ".join(parts)


def run(args: argparse.Namespace, models: tuple[LoadedModel, LoadedModel] | None = None, log: Log = print) -> int:
    """Evaluate and write the report; ``models`` = (Grad-CAM model, GAP model), default vgg16 and nopool_gap.
    Returns 0, or 2 after printing why the data or the models could not be used."""
    try:
        models = models or (load_model("vgg16"), load_model("nopool_gap"))
        data = evaluate(args, *models, log=log)
    except (DataError, BoxError, CheckpointError, WeightsUnavailable, ExplanationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    write_report(data, out)
    log(f"report written to {out} ({data['meta']['seconds']:.0f} s)")
    return 0


# ------------------------------------------------------------------------------------------------------ maps
def _indices(loaded: LoadedModel, names: list[str]) -> np.ndarray:
    """Each class name's index in the model, -1 where the model does not know it."""
    return np.array([loaded.classes.index(name) if name in loaded.classes else -1 for name in names], dtype=np.int32)


def _explain(
    explainer: Explainer, images: np.ndarray, gradcam_classes: np.ndarray | None, cam_classes: np.ndarray | None,
    batch_size: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Per method: native maps (saliency, (B, h, w)), the explained classes and their float32 probabilities.
    None classes: each model's top prediction."""
    parts = {m: {"maps": [], "classes": [], "probabilities": []} for m in METHODS}
    for start in range(0, len(images), batch_size):
        part = slice(start, start + batch_size)
        e = explainer(images[part], None if gradcam_classes is None else gradcam_classes[part])
        cam_class = e.cam_probabilities.argmax(axis=-1) if cam_classes is None else np.asarray(cam_classes[part])
        for method, map_, chosen, probabilities in (
            ("gradcam", e.gradcam, e.gradcam_class, e.gradcam_probabilities),
            ("guided_gradcam", e.guided_gradcam, e.gradcam_class, e.gradcam_probabilities),
            ("cam", e.cam_for(cam_class), cam_class, e.cam_probabilities),
        ):
            parts[method]["maps"].append(saliency(map_))
            parts[method]["classes"].append(chosen)
            parts[method]["probabilities"].append(probabilities[np.arange(len(chosen)), chosen])
    return {m: {key: np.concatenate(values) for key, values in p.items()} for m, p in parts.items()}


def _scores(
    set_: str, items: list[str], classes: list[str], method: str, values: dict[str, np.ndarray], stage: str = ""
) -> pd.DataFrame:
    """Per-map scores as long rows: set, item, class, method, metric, stage, value."""
    return pd.concat(
        pd.DataFrame({"set": set_, "item": items, "class": classes, "method": method, "metric": metric, "stage": stage,
                      "value": np.asarray(value, dtype=np.float64)})
        for metric, value in values.items()
    )


# ------------------------------------------------------------------------------------------------- evaluation
def evaluation_model(model: keras.Model, precision: str) -> keras.Model:
    """The model that scores perturbed images: ``model`` itself for "float32"; for "bfloat16" a copy with the same
    weights whose layers with 4-D outputs (the convolutions) compute in bfloat16 and whose head and softmax stay
    float32 (3x faster for VGG16, 7x for NoPool-GAP on this project's AMX CPU)."""
    if precision == "float32":
        return model

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if len(layer.output.shape) == 4:
            config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights(model.get_weights())
    return copy


def _faithfulness(
    explainer: Explainer, models: dict[str, LoadedModel], sample: ImageSet, items: list[str], args, log: Log
) -> tuple[list[pd.DataFrame], dict, dict, dict]:
    """Deletion/insertion, average drop/increase and effective grid of every method's map of the top prediction;
    also the mean curves, the native map shapes and, per model, the largest |p| difference between the scoring
    precision and float32 on the original images."""
    x = sample.images.astype(np.float32)
    size = x.shape[1:3]
    explained = _explain(explainer, x, None, None, args.batch_size)
    scorers = {role: evaluation_model(loaded.model, args.precision) for role, loaded in models.items()}
    frames, curves, native, precision_gap = [], {}, {}, {}
    rng = np.random.default_rng(args.seed)
    for method, label in METHODS.items():
        started = time.perf_counter()
        loaded, scorer = models[ROLES[method]], scorers[ROLES[method]]
        maps, chosen = explained[method]["maps"], explained[method]["classes"]
        native[method] = "x".join(map(str, maps.shape[1:3]))
        full_maps = at_size(maps, size)
        deletion, insertion = [], []
        for start in range(0, len(x), args.batch_size):
            part = slice(start, start + args.batch_size)
            d, i = perturbation_curves(scorer, x[part], full_maps[part], chosen[part], args.steps, rng=rng)
            deletion.append(d)
            insertion.append(i)
            log(f"  {label}: deletion/insertion {min(start + args.batch_size, len(x))}/{len(x)} maps "
                f"({time.perf_counter() - started:.0f} s)")
        deletion, insertion = np.concatenate(deletion), np.concatenate(insertion)
        masked = predict_probabilities(scorer, explanation_images(x, full_maps))
        drop, increase = drop_and_increase(deletion[:, 0], masked[np.arange(len(x)), chosen])
        frames.append(_scores("test", items, [loaded.classes[c] for c in chosen], method, {
            "deletion_auc": curve_area(deletion), "insertion_auc": curve_area(insertion),
            "average_drop": drop, "increase": increase, "effective_grid": effective_grid(full_maps),
        }))
        curves[method] = {"deletion": deletion.mean(axis=0).tolist(), "insertion": insertion.mean(axis=0).tolist()}
        gap = float(np.abs(deletion[:, 0] - explained[method]["probabilities"]).max())
        precision_gap[loaded.card["name"]] = max(gap, precision_gap.get(loaded.card["name"], 0.0))
    return frames, curves, native, precision_gap


@dataclass
class Targets:
    """Images at the models' input size, each with the class to explain, its boxes and the original image size."""

    x: np.ndarray
    names: list[str]
    boxes: list[list[Box]]
    sizes: list[tuple[int, int]]
    items: list[str]


def _localize(
    set_: str, explainer: Explainer, models: dict[str, LoadedModel], targets: Targets, tolerance: float,
    batch_size: int, skipped: dict,
) -> list[pd.DataFrame]:
    """Localization scores of the maps that explain each target's class, compared with its boxes at its original
    size; targets whose class a model does not know are skipped for that model's methods and counted."""
    wanted = {role: _indices(loaded, targets.names) for role, loaded in models.items()}
    for role, indices in wanted.items():
        if (indices < 0).any():
            unknown = ", ".join(sorted({n for n, i in zip(targets.names, indices, strict=True) if i < 0}))
            key = f"{set_}: maps of classes unknown to {models[role].card['name']} ({unknown})"
            skipped[key] = skipped.get(key, 0) + int((indices < 0).sum())
    keep = np.flatnonzero((wanted["gradcam"] >= 0) | (wanted["cam"] >= 0))
    if not len(keep):
        return []
    # A model that does not know a class explains class 0 there; those maps are dropped below.
    explained = _explain(
        explainer, targets.x[keep], np.maximum(wanted["gradcam"][keep], 0), np.maximum(wanted["cam"][keep], 0),
        batch_size,
    )
    frames = []
    for method, method_maps in ((m, e["maps"]) for m, e in explained.items()):
        rows = [k for k, i in enumerate(keep) if wanted[ROLES[method]][i] >= 0]  # positions in ``keep``
        scores = {}
        for size in {targets.sizes[keep[k]] for k in rows}:  # upsample the maps of one image size together
            group = [k for k in rows if targets.sizes[keep[k]] == size]
            for k, map_ in zip(group, at_size(method_maps[group], size), strict=True):
                scores[k] = localization_scores(map_, targets.boxes[keep[k]], tolerance)
        if rows:
            values = {metric: [scores[k][metric] for k in rows] for metric in scores[rows[0]]}
            frames.append(_scores(set_, [targets.items[keep[k]] for k in rows],
                                  [targets.names[keep[k]] for k in rows], method, values))
    return frames


def _mosaic_scores(explainer, models, data: ImageSet, args, skipped: dict, log: Log) -> list[pd.DataFrame]:
    built, sources = mosaics(data.images, data.labels, args.mosaics, args.seed)
    x = model_input(built, models["gradcam"].input_size)
    boxes = tile_boxes(*data.images.shape[1:3])
    frames = []
    for tile in range(4):
        started = time.perf_counter()
        targets = Targets(
            x, [data.classes[label] for label in data.labels[sources[:, tile]]], [[boxes[tile]]] * len(built),
            [built.shape[1:3]] * len(built), [f"mosaic-{i:04d}/tile-{tile}" for i in range(len(built))],
        )
        # No pointing tolerance: 15 px would reach halfway into the neighbouring 32-px tiles.
        frames += _localize("mosaics", explainer, models, targets, 0.0, args.batch_size, skipped)
        log(f"  mosaics: tile {tile + 1}/4 of {len(built)} mosaics ({time.perf_counter() - started:.0f} s)")
    return frames


def _box_scores(explainer, models, args, skipped: dict, log: Log) -> list[pd.DataFrame]:
    annotations = read_boxes(args.boxes)
    targets = Targets([], [], [], [], [])
    for annotation in annotations:
        path = image_path(annotation, args.data)
        try:
            image = load_image(path) if path else None
        except ImageError as error:
            log(f"  skipped {annotation.image}: {error}")
            image = None
        if image is None or image.shape[:2] != (annotation.height, annotation.width):
            key = "boxes: images " + ("missing or unreadable" if image is None else "of another size than annotated")
            skipped[key] = skipped.get(key, 0) + 1
            continue
        resized = model_input(image, models["gradcam"].input_size)[0]
        for name in annotation.names:
            targets.x.append(resized)
            targets.names.append(name)
            targets.boxes.append(annotation.boxes(name))
            targets.sizes.append(image.shape[:2])
            targets.items.append(f"{annotation.image}/{name}")
    log(f"  boxes: {len(targets.items)} (image, class) pairs from {len(annotations)} annotations")
    if not targets.items:
        return []
    targets.x = np.stack(targets.x)
    return _localize("boxes", explainer, models, targets, POINTING_TOLERANCE, args.batch_size, skipped)


def _sanity(models: dict[str, LoadedModel], sample: ImageSet, items: list[str], args, log: Log) -> list[pd.DataFrame]:
    """Cascading randomization on the sample, explaining each image's true class, with the eager methods."""
    x = sample.images.astype(np.float32)
    size = x.shape[1:3]
    names = [sample.classes[label] for label in sample.labels]
    layer = models["gradcam"].card["gradcam_layer"]
    explain = {
        "gradcam": lambda model, images, classes: grad_cam(model, images, classes, layer),
        "guided_gradcam": lambda model, images, classes: guided_grad_cam(model, images, classes, layer),
        "cam": cam,
    }
    frames = []
    for role, loaded in models.items():
        methods = [m for m in METHODS if ROLES[m] == role]
        indices = _indices(loaded, names)
        known = np.flatnonzero(indices >= 0)
        if not len(known):
            continue
        trained = {m: at_size(explain[m](loaded.model, x[known], indices[known]), size) for m in methods}
        started = time.perf_counter()
        for stage, clone in cascading_randomization(loaded.model, args.seed):
            for method in methods:
                randomized = at_size(explain[method](clone, x[known], indices[known]), size)
                rho = rank_correlation(trained[method], randomized)
                frames.append(_scores("sanity", [items[k] for k in known], [names[k] for k in known], method,
                                      {"spearman": rho}, stage))
            log(f"  sanity: {loaded.card['name']} randomised down to {stage} ({time.perf_counter() - started:.0f} s)")
    return frames


def _model_summary(role: str, loaded: LoadedModel, native: dict) -> dict:
    test = loaded.card.get("metrics", {}).get("test", {})
    methods = [m for m in METHODS if ROLES[m] == role]
    return {
        "role": role, "name": loaded.card["name"], "trained": loaded.trained, "note": loaded.note,
        "test_accuracy": test.get("accuracy"), "test_n": test.get("n"),
        "layer": loaded.card.get("gradcam_layer") if role == "gradcam" else "GAP head",
        "methods": [METHODS[m] for m in methods], "native": {METHODS[m]: native.get(m) for m in methods},
    }


def evaluate(args: argparse.Namespace, gradcam_model: LoadedModel, cam_model: LoadedModel, log: Log = print) -> dict:
    """Every score of every map, summarised: the content of report.json, with the per-map table as ``frame``."""
    started = time.perf_counter()
    if gradcam_model.input_size != cam_model.input_size:
        raise ExplanationError(
            f"the models need one input size, got {gradcam_model.input_size} and {cam_model.input_size}"
        )
    models = {"gradcam": gradcam_model, "cam": cam_model}
    for loaded in models.values():
        if not loaded.trained:
            log(f"WARNING: {loaded.note}")
    data = load_split(args.data, "test", gradcam_model.input_size)
    rng = np.random.default_rng(args.seed)
    # Random order, so that the first --sanity-n images are a random subset too (the folder is sorted by class).
    chosen = rng.choice(len(data.labels), min(args.n, len(data.labels)), replace=False)
    sample = data.subset(chosen)
    items = [str(p.relative_to(args.data)) if p.is_relative_to(args.data) else p.name for p in sample.paths]
    explainer = Explainer(gradcam_model.model, gradcam_model.card["gradcam_layer"], cam_model.model)
    skipped, timings = {}, {}

    def timed(name: str, step: Callable[[], object]):
        begin = time.perf_counter()
        log(f"{name}...")
        result = step()
        timings[name] = round(time.perf_counter() - begin, 1)
        return result

    frames, curves, native, precision_gap = timed(
        "faithfulness and resolution", lambda: _faithfulness(explainer, models, sample, items, args, log)
    )
    if args.mosaics > 0 and len(data.classes) < 4:
        skipped[f"mosaics: need 4 classes, the data has {len(data.classes)}"] = args.mosaics
    elif args.mosaics > 0:
        frames += timed("localization on mosaics", lambda: _mosaic_scores(explainer, models, data, args, skipped, log))
    if args.boxes:
        frames += timed("localization on boxes", lambda: _box_scores(explainer, models, args, skipped, log))
    if args.sanity_n > 0:
        few = min(args.sanity_n, len(chosen))
        frames += timed("sanity", lambda: _sanity(models, sample.subset(np.arange(few)), items[:few], args, log))
    frame = pd.concat(frames, ignore_index=True)
    return {
        "meta": {
            "command": command_line(args),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 1), "timings": timings, "device": describe_device(),
            "data": str(args.data), "n_images": len(chosen),
            "n_mosaics": max(args.mosaics, 0) if len(data.classes) >= 4 else 0,
            "sanity_n": min(args.sanity_n, len(chosen)), "steps": args.steps, "seed": args.seed,
            "precision": args.precision, "precision_gap": precision_gap,
            "models": [_model_summary(role, loaded, native) for role, loaded in models.items()],
            "skipped": skipped, "interval": INTERVAL_NOTE,
        },
        "summary": summarize(frame, args.seed),
        "differences": differences(frame, args.seed),
        "curves": {"x": np.linspace(0, 1, args.steps + 1).tolist(), "methods": curves},
        "resolution": resolution(frame),
        "frame": frame,
    }


# ------------------------------------------------------------------------------------------------- statistics
def interval(values: np.ndarray, rng: np.random.Generator, resamples: int = RESAMPLES) -> dict:
    """Mean, 95% bootstrap percentile interval and n of the finite values (NaNs dropped)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return {"mean": None, "low": None, "high": None, "n": 0}
    means = values[rng.integers(0, len(values), (resamples, len(values)), dtype=np.int32)].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high), "n": int(len(values))}


def summarize(frame: pd.DataFrame, seed: int = 0) -> list[dict]:
    """One row per (set, metric, method, stage) with ``interval`` of its values, in order of appearance."""
    rng = np.random.default_rng(seed)
    groups = frame.groupby(["set", "metric", "method", "stage"], sort=False)["value"]
    keys = ("set", "metric", "method", "stage")
    return [dict(zip(keys, key, strict=True)) | interval(v.to_numpy(), rng) for key, v in groups]


def differences(frame: pd.DataFrame, seed: int = 0) -> list[dict]:
    """NoPool-GAP CAM minus each other method on the same items (paired), per set and metric, with intervals."""
    rng = np.random.default_rng(seed)
    rows = []
    for (set_, metric), group in frame[frame["set"] != "sanity"].groupby(["set", "metric"], sort=False):
        table = group.pivot_table(index="item", columns="method", values="value")
        for other in (m for m in METHODS if m != "cam" and m in table and "cam" in table):
            rows.append({"set": set_, "metric": metric, "method": "cam", "versus": other}
                        | interval((table["cam"] - table[other]).to_numpy(), rng))
    return rows


def resolution(frame: pd.DataFrame) -> list[dict]:
    """Per method: median effective grid and the share of maps at each grid side."""
    grids = frame[frame["metric"] == "effective_grid"]
    rows = []
    for method, values in grids.groupby("method", sort=False)["value"]:
        shares = values.astype(int).value_counts(normalize=True).sort_index()
        rows.append({"method": method, "median": float(values.median()),
                     "shares": {str(side): float(share) for side, share in shares.items()}})
    return rows


# ---------------------------------------------------------------------------------------------------- writing
def _cell(row: dict | None) -> str:
    if not row or row["mean"] is None:
        return "–"
    return f"{row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}] n={row['n']}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _sanity_table(summary: list[dict], meta: dict) -> list[str]:
    by_method = {m: [r for r in summary if r["set"] == "sanity" and r["method"] == m] for m in METHODS}
    columns, header = [], ["Stage"]
    for model in meta["models"]:
        methods = [m for m in METHODS if ROLES[m] == model["role"] and by_method[m]]
        if methods:
            header += [f"{model['name']} randomised down to"] + [METHODS[m] for m in methods]
            columns.append([r["stage"] for r in by_method[methods[0]]])
            columns += [[_cell(r) for r in by_method[m]] for m in methods]
    rows = [[str(k)] + [c or "" for c in cells] for k, cells in enumerate(zip_longest(*columns), start=1)]
    return _table(header, rows) if columns else []


def markdown(data: dict, images: bool = True) -> str:
    """report.md from the report's data; ``images`` adds the PNG figures and links to the HTML ones."""
    meta, summary = data["meta"], data["summary"]
    lines = ["# Grad-CAM, Guided Grad-CAM and NoPool-GAP CAM measured against each other", ""]
    lines += [f"Produced by `{meta['command']}` on {meta['date']} in {meta['seconds']:.0f} s ({meta['device']}); "
              f"{meta['n_images']} test images, {meta['n_mosaics']} mosaics, {meta['sanity_n']} images for the "
              f"sanity check. Times: " + ", ".join(f"{k} {v:.0f} s" for k, v in meta["timings"].items()) + ".", ""]
    gaps = ", ".join(f"{name} {gap:.4f}" for name, gap in meta["precision_gap"].items())
    lines += [f"Perturbed and masked images were scored in {meta['precision']} (maps are computed in float32); on the "
              f"original images p(explained class) differs from float32 by at most: {gaps}.", ""]
    for model in meta["models"]:
        if not model["trained"]:
            lines += [f"> **Warning**: {model['name']} is an untrained stand-in (random weights): these numbers say "
                      "nothing about the methods.", ""]
    lines += ["## Models", ""]
    lines += _table(["Role", "Model", "Trained", "Test accuracy (card)", "Methods", "Native maps"], [
        [ROLE_NAMES[m["role"]], m["name"], "yes" if m["trained"] else "**no, untrained stand-in**",
         f"{m['test_accuracy']:.3f} (n={m['test_n']})" if m["test_accuracy"] is not None else "not on the card",
         f"{', '.join(m['methods'])} (layer {m['layer']})", ", ".join(f"{k} {v}" for k, v in m["native"].items())]
        for m in meta["models"]
    ])
    lines += ["", "## Scores", "", meta["interval"], ""]
    for set_, title in SETS.items():
        rows = [r for r in summary if r["set"] == set_]
        if not rows:
            continue
        lines += [f"### {title}", ""]
        lines += _table(["Metric", "Better"] + list(METHODS.values()), [
            [METRICS[metric][0], METRICS[metric][1]]
            + [_cell(next((r for r in rows if r["metric"] == metric and r["method"] == m), None)) for m in METHODS]
            for metric in dict.fromkeys(r["metric"] for r in rows)
        ]) + [""]
    if data["differences"]:
        others = [m for m in METHODS if m != "cam"]
        lines += ["## NoPool-GAP CAM minus the others, paired on the same maps", ""]
        lines += _table(["Set", "Metric", "Better"] + [f"CAM − {METHODS[m]}" for m in others], [
            [set_, METRICS[metric][0], METRICS[metric][1]]
            + [_cell(next((r for r in data["differences"] if (r["set"], r["metric"], r["versus"]) == (set_, metric, m)),
                          None)) for m in others]
            for set_, metric in dict.fromkeys((r["set"], r["metric"]) for r in data["differences"])
        ]) + [""]
    sanity = _sanity_table(summary, meta)
    if sanity:
        lines += ["## Sanity: cascading randomization", "", "Spearman rank correlation between the map of the trained "
                  "model and of the randomised clone, explaining the true class; close to 1 means the method ignores "
                  "the weights.", ""] + sanity + [""]
    lines += ["## Resolution", "", RESOLUTION_NOTE, ""]
    lines += _table(["Method", "Median effective grid", "Share of maps per grid side"], [
        [METHODS[r["method"]], f"{r['median']:g}", ", ".join(f"{k}: {v:.0%}" for k, v in r["shares"].items())]
        for r in data["resolution"]
    ])
    if images:
        lines += ["", "## Figures"]
        for name, title in FIGURES.items():
            lines += ["", f"![{title}]({name}.png)  ", f"[{title}, interactive]({name}.html)"]
    lines += ["", "## Definitions", ""] + [f"- **{label}** ({better} is better): {text}" for label, better, text in
                                           METRICS.values()]
    lines += ["- Maps are compared with images after bilinear upsampling; Guided Grad-CAM counts sum_c |g_c| "
              "per pixel.",
              "- Each method is scored on the model it explains (Grad-CAM and Guided Grad-CAM: "
              f"{meta['models'][0]['name']}; CAM: {meta['models'][1]['name']}). Mosaics (2x2 test images of four "
              "classes, 64x64 from 32x32 images) are resized to the models' input for every method; their maps are "
              "compared with the tiles at the mosaic's size."]
    if meta["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {why}: {count}" for why, count in meta["skipped"].items()]
    return "\n".join(lines) + "\n"


def write_report(data: dict, out: Path) -> None:
    """report.md, scores.csv, report.json, and each figure as PNG and as HTML (Plotly, script in plotly.min.js)."""
    out.mkdir(parents=True, exist_ok=True)
    data["frame"].to_csv(out / "scores.csv", index=False)
    content = {key: value for key, value in data.items() if key != "frame"}
    (out / "report.json").write_text(json.dumps(content, indent=1) + "\n")
    (out / "report.md").write_text(markdown(content))
    for name, figure in matplotlib_figures(content).items():
        figure.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    for name, figure in plotly_figures(content).items():
        # "directory": one shared plotly.min.js next to the pages, so they work offline and stay small.
        figure.write_html(out / f"{name}.html", include_plotlyjs="directory")


def report_dir() -> Path:
    """Where the dashboard looks for the report: $CAM_REPORT_DIR, else reports/latest."""
    return Path(os.environ.get("CAM_REPORT_DIR", DEFAULT_OUT))


def load_report(folder: Path) -> dict | None:
    """The content of ``folder/report.json``, or None when there is no report there."""
    path = Path(folder) / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------------------------------- figures
FIGURES = {
    "curves": "Deletion and insertion curves (mean over test images)",
    "scores": "Scores per method with 95% intervals",
    "sanity": "Cascading randomization: rank correlation with the trained map",
    "resolution": "Effective resolution: share of maps per grid side",
}


def _score_panels(data: dict) -> list[tuple[str, list[dict]]]:
    """(panel title, one summary row per method) for every set and metric except the sanity check."""
    panels: dict[tuple[str, str], list[dict]] = {}
    for row in data["summary"]:
        if row["set"] != "sanity" and row["mean"] is not None:
            panels.setdefault((row["set"], row["metric"]), []).append(row)
    return [(f"{set_}: {METRICS[metric][0]} ({METRICS[metric][1]} better)", rows)
            for (set_, metric), rows in panels.items()]


def _sanity_lines(data: dict) -> dict[str, list[dict]]:
    lines = {m: [r for r in data["summary"] if r["set"] == "sanity" and r["method"] == m and r["mean"] is not None]
             for m in METHODS}
    return {m: rows for m, rows in lines.items() if rows}


def matplotlib_figures(data: dict) -> dict:
    """The report's figures as matplotlib Figures (Agg backend), keyed like FIGURES."""
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # after choosing the backend, so no display is needed

    figures = {}
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
        for method, curve in data["curves"]["methods"].items():
            ax.plot(data["curves"]["x"], curve[kind], marker=".", label=METHODS[method], color=COLOURS[method])
        ax.set(title=kind.capitalize(), xlabel=f"share of pixels {'deleted' if kind == 'deletion' else 'inserted'}",
               ylabel="p(explained class)", ylim=(0, 1))
    axes[0].legend()
    figures["curves"] = figure
    panels = _score_panels(data)
    columns = 3
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(12, 2.6 * rows), squeeze=False, layout="constrained")
    for ax, (title, rows) in zip(axes.flat, panels, strict=False):
        means = [r["mean"] for r in rows]
        errors = [[r["mean"] - r["low"] for r in rows], [r["high"] - r["mean"] for r in rows]]
        ax.bar([METHODS[r["method"]] for r in rows], means, yerr=errors, capsize=4,
               color=[COLOURS[r["method"]] for r in rows])
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    figures["scores"] = figure
    figure, ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
    for method, rows in _sanity_lines(data).items():
        stages = np.arange(1, len(rows) + 1)
        ax.errorbar(stages, [r["mean"] for r in rows], yerr=[[r["mean"] - r["low"] for r in rows],
                    [r["high"] - r["mean"] for r in rows]], marker="o", capsize=3, label=METHODS[method],
                    color=COLOURS[method])
    ax.set(xlabel="layers randomised, from the output down", ylabel="Spearman vs trained map", ylim=(-1.05, 1.05))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    figures["sanity"] = figure
    figure, ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
    sides = sorted({int(k) for r in data["resolution"] for k in r["shares"]})
    for offset, row in enumerate(data["resolution"]):
        ax.bar(np.arange(len(sides)) + (offset - 1) * 0.27, [row["shares"].get(str(s), 0.0) for s in sides], 0.27,
               label=METHODS[row["method"]], color=COLOURS[row["method"]])
    ax.set(xticks=np.arange(len(sides)), xticklabels=[f"{s}x{s}" for s in sides], xlabel="effective grid",
           ylabel="share of maps")
    ax.legend()
    figures["resolution"] = figure
    for name, figure in figures.items():
        figure.suptitle(FIGURES[name])
    plt.close("all")  # the Figure objects stay usable; pyplot just forgets them
    return figures


def plotly_figures(data: dict) -> dict:
    """The report's figures as Plotly Figures, keyed like FIGURES (for HTML files and the dashboard)."""
    from plotly import graph_objects as go
    from plotly.subplots import make_subplots

    figures = {}
    figure = make_subplots(1, 2, subplot_titles=("Deletion", "Insertion"))
    for column, kind in enumerate(("deletion", "insertion"), start=1):
        for method, curve in data["curves"]["methods"].items():
            figure.add_trace(go.Scatter(x=data["curves"]["x"], y=curve[kind], name=METHODS[method], legendgroup=method,
                                        showlegend=column == 1, line={"color": COLOURS[method]}), 1, column)
    figure.update_xaxes(title_text="share of pixels changed")
    figure.update_yaxes(title_text="p(explained class)", range=[0, 1])
    figures["curves"] = figure
    panels = _score_panels(data)
    rows = -(-len(panels) // 3)
    figure = make_subplots(rows, 3, subplot_titles=[title for title, _ in panels], vertical_spacing=0.5 / max(rows, 1))
    for index, (_, group) in enumerate(panels):
        figure.add_trace(go.Bar(
            x=[METHODS[r["method"]] for r in group], y=[r["mean"] for r in group],
            error_y={"type": "data", "symmetric": False, "array": [r["high"] - r["mean"] for r in group],
                     "arrayminus": [r["mean"] - r["low"] for r in group]},
            marker_color=[COLOURS[r["method"]] for r in group], showlegend=False,
            hovertext=[f"n={r['n']}" for r in group],
        ), index // 3 + 1, index % 3 + 1)
    figure.update_layout(height=260 * rows)
    figure.update_annotations(font_size=11)
    figures["scores"] = figure
    figure = go.Figure()
    for method, group in _sanity_lines(data).items():
        figure.add_trace(go.Scatter(
            x=list(range(1, len(group) + 1)), y=[r["mean"] for r in group], mode="lines+markers", name=METHODS[method],
            error_y={"type": "data", "symmetric": False, "array": [r["high"] - r["mean"] for r in group],
                     "arrayminus": [r["mean"] - r["low"] for r in group]},
            hovertext=[f"down to {r['stage']}" for r in group], line={"color": COLOURS[method]},
        ))
    figure.update_layout(xaxis_title="layers randomised, from the output down", yaxis_title="Spearman vs trained map")
    figures["sanity"] = figure
    figure = go.Figure([
        go.Bar(x=[f"{k}x{k}" for k in row["shares"]], y=list(row["shares"].values()), name=METHODS[row["method"]],
               marker_color=COLOURS[row["method"]])
        for row in data["resolution"]
    ])
    figure.update_layout(barmode="group", xaxis_title="effective grid", yaxis_title="share of maps")
    figures["resolution"] = figure
    for name, figure in figures.items():
        figure.update_layout(title=FIGURES[name])
    return figures
