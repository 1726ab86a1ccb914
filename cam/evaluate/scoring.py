"""Score the registry's methods (``cam.explain.registry``), each on the model it explains, for faithfulness,
localization (2x2 mosaics, annotated boxes), sanity and resolution; ``evaluate`` returns every per-map score and their
summaries as data, which ``cam.evaluate.report`` writes out.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from cam.core.boxes import Box, image_path, mosaics, read_boxes, tile_boxes
from cam.core.catalog import GAP_METHOD, POINTING_TOLERANCE, STEPS, STUDY, Role
from cam.core.device import chosen_precision, describe_device
from cam.core.images import ImageError, crop, input_shape, load_image, model_input, own_aspect, view_box
from cam.core.predict import by_shape, predict_probabilities
from cam.data.folders import ImageSet, load_masks, load_split
from cam.evaluate.metrics import (
    at_size,
    cascading_randomization,
    curve_area,
    drop_and_increase,
    effective_grid,
    explanation_images,
    localization_scores,
    mask_scores,
    min_max_ratio,
    perturbation_curves,
    randomization_stages,
    rank_correlation,
)
from cam.explain.methods import Explainer, Explanation, ExplanationError
from cam.explain.registry import METHODS, Method, explain, selected
from cam.models.architectures import with_precision
from cam.models.checkpoints import LoadedModel

Log = Callable[[str], None]
RESAMPLES = 2000
INTERVAL_NOTE = (
    f"Mean and 95% bootstrap percentile interval ({RESAMPLES} resamples of the maps, seeded); n counts the maps with "
    "a defined score (energy is undefined for a map with no positive value)."
)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """What ``evaluate`` scores and how: the options of ``python -m cam report``."""

    data: Path
    boxes: str | None = None  # box annotations: a JSON file, a VOC .xml file or a folder of them
    n: int = 1000  # test images for faithfulness and resolution
    mosaics: int = 1000  # 2x2 mosaics for localization
    seed: int = 0
    sanity_n: int = 50  # images for the randomization test
    steps: int = STEPS  # deletion/insertion steps
    batch_size: int = 64  # maps explained and perturbed together
    # of the convolutions when scoring perturbed images; "auto": bfloat16 where it is fast
    # (cam.core.device.fast_bfloat16)
    precision: str = "auto"

    @property
    def scoring_precision(self) -> str:
        return chosen_precision(self.precision)
    methods: tuple[str, ...] = STUDY  # registry keys
    slow_n: int = 100  # at most this many maps per set for the slow methods (Score-CAM)
    size: int | None = None  # short side of the input, each photo at its own aspect; None: the models' card size

    def limit(self, method: Method, count: int) -> int:
        """How many of ``count`` maps ``method`` is scored on."""
        return min(count, self.slow_n) if method.slow else count


@dataclasses.dataclass(frozen=True)
class Target:
    """One map to localize: its item name, the class it explains, and where that class is at ``size`` (the size its
    map is compared at): its ``boxes``, or a figure/ground ``mask`` (H, W, True = object) of that size."""

    item: str
    name: str
    size: tuple[int, int]
    boxes: tuple[Box, ...] = ()
    mask: np.ndarray | None = None


# ------------------------------------------------------------------------------------------------------ maps
def _indices(loaded: LoadedModel, names: list[str]) -> np.ndarray:
    """Each class name's index in the model, -1 where the model does not know it."""
    return np.array([loaded.classes.index(name) if name in loaded.classes else -1 for name in names], dtype=np.int32)


def _known(set_: str, models: dict[str, LoadedModel], names: list[str], skipped: Counter) -> dict[str, np.ndarray]:
    """Per role, ``_indices`` of ``names``; the maps a model cannot give (unknown class) are counted in ``skipped``."""
    wanted = {role: _indices(loaded, names) for role, loaded in models.items()}
    for role, indices in wanted.items():
        unknown = sorted({name for name, index in zip(names, indices, strict=True) if index < 0})
        if unknown:
            why = f"{set_}: maps of classes unknown to {models[role].card['name']} ({', '.join(unknown)})"
            skipped[why] += int((indices < 0).sum())
    return wanted


def _maps(
    explained: Explanation, cam_classes: np.ndarray, methods: list[Method], models: dict[str, LoadedModel],
    images: np.ndarray, config: EvaluationConfig, cams: Explanation | None = None,
    limits: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Each method's native maps, the GAP model's explaining ``cam_classes`` (a lookup in the CAMs of every class
    held by ``cams``, default ``explained``); a slow method's only for the first ``config.slow_n`` images, or for
    the first ``limits[key]`` when given (fused methods' maps are all given)."""
    source = cams or explained
    explained.cams, explained.probabilities[Role.GAP] = source.cams, source.probabilities[Role.GAP]
    explained.explain_cam_class(cam_classes)
    limits = limits or {method.key: config.limit(method, len(images)) for method in methods}
    explain(explained, methods, {role: loaded.model for role, loaded in models.items()},
            {role: images for role in models}, models[Role.GRADCAM].card["gradcam_layer"], config.batch_size, limits)
    return {method.key: explained.maps[method.key] for method in methods}


def _scores(
    set_: str, items: list[str], classes: list[str], method: str, values: dict[str, np.ndarray], stage: str = ""
) -> pd.DataFrame:
    """Per-map scores as long rows: set, item, class, method, metric, stage, value."""
    return pd.concat(
        pd.DataFrame({"set": set_, "item": items, "class": classes, "method": method, "metric": metric, "stage": stage,
                      "value": np.asarray(value, dtype=np.float64)})
        for metric, value in values.items()
    )


# ------------------------------------------------------------------------------------------------------ parts
# (kind, jobs) -> the jobs' results in their order (each job: run_part's ``job``).
MapParts = Callable[[str, list[tuple]], list]


def _parts(images: list[np.ndarray], config: EvaluationConfig) -> list[tuple[list[int], np.ndarray, EvaluationConfig]]:
    """The images in parts of one input shape and at most ``config.batch_size``: each part's indices, its float32
    images, and ``config`` with the part's share of the slow methods' budget (``slow_n`` less the images before it),
    so that a slow method is scored on the same first ``slow_n`` images wherever the parts run."""
    parts, before = [], 0
    for indices in by_shape(images).values():
        for start in range(0, len(indices), config.batch_size):
            chunk = indices[start : start + config.batch_size]
            x = np.stack([images[i] for i in chunk]).astype(np.float32)
            parts.append((chunk, x, dataclasses.replace(config, slow_n=max(0, config.slow_n - before))))
            before += len(chunk)
    return parts


def run_part(
    kind: str, explainer: Explainer, models: dict[str, LoadedModel], methods: list[Method], job: tuple,
) -> dict | list:
    """One part of the report, wherever it runs (here, or on a Ray worker: ``cam.evaluate.parallel.RayParts``): ``kind``
    "faithfulness" (``job``: faithfulness_part's arguments after the methods), "localization" (localization_part's)
    or "sanity" (sanity_part's after the models)."""
    if kind == "faithfulness":
        return faithfulness_part(explainer, models, methods, *job)
    if kind == "localization":
        return localization_part(explainer, models, methods, *job)
    if kind == "sanity":
        return sanity_part(models, *job)
    raise ValueError(f"unknown kind of part {kind!r}")


def _run_parts(
    kind: str, jobs: list[tuple], explainer: Explainer, models: dict[str, LoadedModel], methods: list[Method],
    log: Log, map_parts: MapParts | None = None,
) -> list:
    """``run_part`` on every job, in this process one after the other, or by ``map_parts``; results in order."""
    if map_parts is not None:
        return map_parts(kind, jobs)
    results, started = [], time.perf_counter()
    for job in jobs:
        results.append(run_part(kind, explainer, models, methods, job))
        log(f"  {kind}: {len(results)}/{len(jobs)} parts ({time.perf_counter() - started:.0f} s)")
    return results


# ------------------------------------------------------------------------------------------------ faithfulness


def faithfulness_part(
    explainer: Explainer, models: dict[str, LoadedModel], methods: list[Method], x: np.ndarray, items: list[str],
    config: EvaluationConfig, seed: tuple[int, int],
) -> dict:
    """Deletion/insertion, average drop/increase and effective grid of every method's map of the top prediction
    on one part of the sample (``x``: float32 images, at most ``config.batch_size``) with its own random generator
    ``seed``: per method key the per-map ``frames``, the ``deletion`` and ``insertion`` curves and its map's
    ``native`` shape, and per model the largest |p| difference (``gap``) between the scoring precision and float32
    on the original images. A slow method is scored on the first ``config.limit`` images only (none: left out)."""
    size = x.shape[1:3]
    methods = [method for method in methods if config.limit(method, len(x))]
    explained = explainer.in_batches(x, None, config.batch_size)
    maps = _maps(explained, explained.cam_classes(), methods, models, x, config)
    scorers = {role: with_precision(loaded.model, config.scoring_precision) for role, loaded in models.items()}
    part = {"frames": {}, "deletion": {}, "insertion": {}, "native": {}, "gap": {}}
    rng = np.random.default_rng(seed)
    for method in methods:
        key, role, count = method.key, method.role, len(maps[method.key])
        loaded, scorer = models[role], scorers[role]
        classes, probabilities = explained.classes[role][:count], explained.probabilities[role][:count]
        part["native"][key] = "x".join(map(str, maps[key].shape[1:3]))
        full_maps = at_size(maps[key], size)
        deletion, insertion = perturbation_curves(scorer, x[:count], full_maps, classes, config.steps, rng=rng)
        masked = predict_probabilities(scorer, explanation_images(x[:count], full_maps))
        drop, increase = drop_and_increase(deletion[:, 0], masked[np.arange(count), classes])
        part["frames"][key] = _scores("test", items[:count], [loaded.classes[c] for c in classes], key, {
            "deletion_auc": curve_area(deletion), "insertion_auc": curve_area(insertion),
            "average_drop": drop, "increase": increase, "effective_grid": effective_grid(full_maps),
            "min_max_ratio": min_max_ratio(maps[key]),
        })
        part["deletion"][key], part["insertion"][key] = deletion, insertion
        gap = float(np.abs(deletion[:, 0] - probabilities[np.arange(count), classes]).max())
        part["gap"][loaded.card["name"]] = max(gap, part["gap"].get(loaded.card["name"], 0.0))
    return part


def _faithfulness(
    explainer: Explainer, models: dict[str, LoadedModel], methods: list[Method], sample: ImageSet, items: list[str],
    config: EvaluationConfig, log: Log, map_parts: MapParts | None = None,
) -> tuple[list[pd.DataFrame], dict, dict, dict]:
    """``faithfulness_part`` on parts of at most ``config.batch_size`` images of one input shape, part k with the
    random generator seeded by (seed, k), so that where a part runs changes nothing: one after the other here, or by
    ``map_parts`` (e.g. on Ray workers, ``cam.evaluate.parallel.RayParts``), which returns the results in the jobs'
    order. Merged: the per-map frames (method by method), the mean curves, the most common native map shapes and the
    precision gap per model."""
    jobs = [(x, [items[i] for i in chunk], budget, (config.seed, k))
            for k, (chunk, x, budget) in enumerate(_parts(list(sample.images), config))]
    parts = _run_parts("faithfulness", jobs, explainer, models, methods, log, map_parts)
    frames, curves, native, precision_gap = [], {}, {}, {}
    for method in methods:
        key = method.key
        scored = [part for part in parts if key in part["frames"]]
        frames.append(pd.concat([part["frames"][key] for part in scored]))
        curves[key] = {kind: np.concatenate([part[kind][key] for part in scored]).mean(axis=0).tolist()
                       for kind in ("deletion", "insertion")}
        shapes = Counter()  # photos differ in shape: the most common native map shape
        for part in scored:
            shapes[part["native"][key]] += part["frames"][key]["item"].nunique()
        native[key] = shapes.most_common(1)[0][0]
    for part in parts:
        for name, gap in part["gap"].items():
            precision_gap[name] = max(gap, precision_gap.get(name, 0.0))
    return frames, curves, native, precision_gap


# ------------------------------------------------------------------------------------------------ localization
def _localize(
    set_: str, maps: dict[str, np.ndarray], methods: list[Method], wanted: dict[str, np.ndarray],
    targets: list[Target], tolerance: float,
) -> list[pd.DataFrame]:
    """Localization scores of each method's maps (one per target, or the first ones for a slow method) where its
    model knows the target's class (``wanted`` >= 0), each map compared with the target's boxes or mask at its size,
    pointing within ``tolerance`` pixels."""
    frames = []
    for method in methods:
        method_maps = maps[method.key]
        rows = np.flatnonzero(wanted[method.role][: len(method_maps)] >= 0)
        if not len(rows):
            continue
        scores = {}
        for size in {targets[k].size for k in rows}:  # upsample the maps of one image size together
            group = [k for k in rows if targets[k].size == size]
            for k, map_ in zip(group, at_size(method_maps[group], size), strict=True):
                target = targets[k]
                scores[k] = (localization_scores(map_, list(target.boxes), tolerance) if target.mask is None
                             else mask_scores(map_, target.mask, tolerance))
        values = {metric: [scores[k][metric] for k in rows] for metric in scores[rows[0]]}
        items, names = [targets[k].item for k in rows], [targets[k].name for k in rows]
        frames.append(_scores(set_, items, names, method.key, values))
    return frames


def localization_part(
    explainer: Explainer, models: dict[str, LoadedModel], methods: list[Method], set_: str, x: np.ndarray,
    passes: list[list[Target]], tolerance: float, config: EvaluationConfig,
) -> list[pd.DataFrame]:
    """Localization scores of one part (``x``: float32 images of one shape, at most ``config.batch_size``): in each
    pass, image i's map of ``targets[i]``'s class, compared with that target (``_localize``). A model explains class 0
    where it does not know the class, and those maps are dropped. The first pass's CAMs (of every class at once)
    serve the later passes; Grad-CAM needs a pass per class."""
    frames, cams = [], None
    for targets in passes:
        wanted = {role: _indices(loaded, [target.name for target in targets]) for role, loaded in models.items()}
        explained = explainer.in_batches(x, np.maximum(wanted[Role.GRADCAM], 0), config.batch_size,
                                         with_cam=cams is None)
        cams = cams or explained
        maps = _maps(explained, np.maximum(wanted[Role.GAP], 0), methods, models, x, config, cams)
        frames += _localize(set_, maps, methods, wanted, targets, tolerance)
    return frames


def _localization_jobs(
    set_: str, images: list[np.ndarray], passes: list[list[Target]], tolerance: float, config: EvaluationConfig,
) -> list[tuple]:
    """``localization_part``'s jobs (its arguments after the methods): the images in parts, each with its targets in
    every pass (``passes[p][i]``: image i's target in pass p)."""
    return [(set_, x, [[targets[i] for i in chunk] for targets in passes], tolerance, budget)
            for chunk, x, budget in _parts(images, config)]


def _mosaic_jobs(
    models: dict[str, LoadedModel], data: ImageSet, config: EvaluationConfig, skipped: Counter,
) -> list[tuple]:
    """Localization on 2x2 mosaics: each tile's class explained in turn (a pass per tile) and compared with the
    tile's box. The tiles are the middle squares of the test photos (nothing squashed); a mosaic is shown at the
    short side of the run."""
    squares = np.stack([crop(image, view_box(*image.shape[:2], max_aspect=1.0)) for image in data.images])
    built, sources = mosaics(squares, data.labels, config.mosaics, config.seed)
    x = model_input(built, input_shape(*built.shape[1:3], _short_side(config, models)))
    boxes = tile_boxes(*squares.shape[1:3])
    passes = []
    for tile in range(4):
        names = [data.classes[label] for label in data.labels[sources[:, tile]]]
        _known("mosaics", models, names, skipped)
        passes.append([Target(f"mosaic-{i:04d}/tile-{tile}", name, built.shape[1:3], (boxes[tile],))
                       for i, name in enumerate(names)])
    # No pointing tolerance: 15 px would reach halfway into the neighbouring 32-px tiles.
    return _localization_jobs("mosaics", list(x), passes, 0.0, config)


def _box_jobs(models: dict[str, LoadedModel], config: EvaluationConfig, skipped: Counter, log: Log) -> list[tuple]:
    """Localization on annotated images: each class present explained and compared with its boxes at the image's
    original size, within the pointing tolerance."""
    annotations = read_boxes(config.boxes)
    images, targets = [], []
    for annotation in annotations:
        path = image_path(annotation, config.data)
        try:
            image = load_image(path) if path else None
        except ImageError as error:
            log(f"  skipped {annotation.image}: {error}")
            image = None
        if image is None or image.shape[:2] != (annotation.height, annotation.width):
            why = "missing or unreadable" if image is None else "of another size than annotated"
            skipped[f"boxes: images {why}"] += 1
            continue
        if view_box(*image.shape[:2])[2:] != image.shape[:2]:
            skipped["boxes: images longer than 2:1 (the networks would see only their middle)"] += 1
            continue
        resized = own_aspect(image, _short_side(config, models))
        for name in annotation.names:
            images.append(resized)
            targets.append(Target(f"{annotation.image}/{name}", name, image.shape[:2], tuple(annotation.boxes(name))))
    log(f"  boxes: {len(targets)} (image, class) pairs from {len(annotations)} annotations")
    wanted = _known("boxes", models, [target.name for target in targets], skipped)
    # Pairs whose class neither model knows are not explained at all; elsewhere an unknown class explains class 0.
    keep = np.flatnonzero((wanted[Role.GRADCAM] >= 0) | (wanted[Role.GAP] >= 0))
    return _localization_jobs("boxes", [images[k] for k in keep], [[targets[k] for k in keep]], POINTING_TOLERANCE,
                              config)


def _mask_jobs(
    models: dict[str, LoadedModel], data: ImageSet, config: EvaluationConfig, skipped: Counter, log: Log,
) -> list[tuple]:
    """Localization on the test photos that have a figure/ground mask (``masks/test/<class>/``): each photo's true
    class explained, every map compared with the mask at the photo's own size (``cam.evaluate.metrics.mask_scores``)."""
    masks = load_masks(config.data, data)
    rows = sorted(masks)
    names = [data.classes[data.labels[k]] for k in rows]
    items = [str(Path(data.paths[k]).relative_to(config.data)) for k in rows]
    log(f"  masks: {len(rows)} masked test photos")
    _known("masks", models, names, skipped)
    # The mask of the part of the photo the networks saw (all of it up to 2:1), at the photo's size.
    seen = [crop(masks[k], view_box(*masks[k].shape)) for k in rows]
    targets = [Target(item, name, mask.shape, mask=mask) for item, name, mask in zip(items, names, seen, strict=True)]
    return _localization_jobs("masks", [data.images[k] for k in rows], [targets], POINTING_TOLERANCE, config)


# ------------------------------------------------------------------------------------------------------ sanity
def _sanity_maps(model: keras.Model, loaded: LoadedModel, role: Role,
                 batches: list[tuple[str, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Each batch's maps (method key, classes, images) on ``model`` (``loaded``'s or a clone), at the images' size."""
    layer = loaded.card["gradcam_layer"] if role == Role.GRADCAM else None
    return [at_size(METHODS[key].compute(model, x, classes, layer), x.shape[1:3]) for key, classes, x in batches]


def sanity_part(models: dict[Role, LoadedModel], role: Role, stage: str, seed: int,
                batches: list[tuple[str, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """The maps of ``batches`` [(method key, classes, images), ...] on ``role``'s model randomised down to ``stage``
    (``cascading_randomization`` with ``seed``, replayed up to that stage: the same clone wherever this runs)."""
    loaded = models[role]
    for name, clone in cascading_randomization(loaded.model, seed):
        if name == stage:
            return _sanity_maps(clone, loaded, role, batches)
    raise ValueError(f"{loaded.card['name']} has no randomization stage {stage!r}")


def _sanity(
    models: dict[str, LoadedModel], methods: list[Method], sample: ImageSet, items: list[str],
    config: EvaluationConfig, log: Log, map_parts: MapParts | None = None,
) -> list[pd.DataFrame]:
    """Cascading randomization on the sample, explaining each image's true class, with each method's own function
    (the Explainer compiles for one model, and every stage is a new clone). Here the stages are walked once; with
    ``map_parts``, one part per model and stage (``sanity_part``); the numbers are the same."""
    names = [sample.classes[label] for label in sample.labels]
    frames = []
    for role, loaded in models.items():
        indices = _indices(loaded, names)
        known = np.flatnonzero(indices >= 0)
        rows = {m.key: known[: config.limit(m, len(known))] for m in methods if m.role == role}
        own = [method for method in methods if len(rows.get(method.key, ()))]
        if not own:
            continue
        # Per input shape and method, the sample rows it scores and their images: one batch each.
        picks, batches = [], []
        for group in by_shape([sample.images[k] for k in known]).values():
            x = np.stack([sample.images[k] for k in known[group]]).astype(np.float32)
            for m in own:
                picked = np.isin(known[group], rows[m.key])
                if picked.any():
                    picks.append(known[group][picked])
                    batches.append((m.key, indices[known[group][picked]], x[picked]))
        trained = _sanity_maps(loaded.model, loaded, role, batches)
        stages = randomization_stages(loaded.model)
        started = time.perf_counter()
        if map_parts is None:
            results = []
            for stage, clone in cascading_randomization(loaded.model, config.seed):  # each clone made once
                results.append(_sanity_maps(clone, loaded, role, batches))
                log(f"  sanity: {loaded.card['name']} randomised down to {stage} "
                    f"({time.perf_counter() - started:.0f} s)")
        else:
            results = map_parts("sanity", [(role, stage, config.seed, batches) for stage in stages])
        for stage, randomized_maps in zip(stages, results, strict=True):
            for (key, _, _), picked, maps, randomized in zip(batches, picks, trained, randomized_maps, strict=True):
                frames.append(_scores("sanity", [items[k] for k in picked], [names[k] for k in picked], key,
                                      {"spearman": rank_correlation(maps, randomized)}, stage))
    return frames


# -------------------------------------------------------------------------------------------------- evaluation
def _model_summary(role: Role, loaded: LoadedModel, methods: list[Method], native: dict) -> dict:
    test = loaded.card.get("metrics", {}).get("test", {})
    layer = loaded.card.get("gradcam_layer") if role == Role.GRADCAM else None
    own = [method for method in methods if method.role == role]
    return {
        "role": role, "name": loaded.card["name"], "trained": loaded.trained, "note": loaded.note,
        "test_accuracy": test.get("accuracy"), "test_n": test.get("n"),
        "methods": [method.key for method in own], "native": {m.key: native.get(m.key) for m in own},
        "layers": {method.key: method.reads(loaded.model, layer) for method in own},
    }


def _short_side(config: EvaluationConfig, models: dict[str, LoadedModel]) -> int:
    """The short side of every input of the run: ``config.size``, else the size the models were trained at."""
    return config.size or models[Role.GRADCAM].input_size


def evaluate(
    config: EvaluationConfig, gradcam_model: LoadedModel, cam_model: LoadedModel, command: str, log: Log = print,
    map_parts: MapParts | None = None,
) -> dict:
    """Every score of every map of ``config.methods``, summarised: the content of report.json, with the per-map
    table as ``frame``; ``command`` (the line that reproduces the run) is recorded in ``meta``. ``map_parts``
    scores the parts (faithfulness, localization, sanity: ``run_part``) elsewhere, with the same numbers. Raises
    DataError, BoxError or ExplanationError for inputs it cannot use."""
    started = time.perf_counter()
    if gradcam_model.input_size != cam_model.input_size:
        raise ExplanationError(
            f"the models need one input size, got {gradcam_model.input_size} and {cam_model.input_size}"
        )
    models = {Role.GRADCAM: gradcam_model, Role.GAP: cam_model}
    methods = selected(config.methods)
    for loaded in models.values():
        if not loaded.trained:
            log(f"WARNING: {loaded.note}")
    data = load_split(config.data, "test", _short_side(config, models), squash=False)
    rng = np.random.default_rng(config.seed)
    # Random order, so that the first --sanity-n images are a random subset too (the folder is sorted by class).
    chosen = rng.choice(len(data.labels), min(config.n, len(data.labels)), replace=False)
    sample = data.subset(chosen)
    items = [str(p.relative_to(config.data)) if p.is_relative_to(config.data) else p.name for p in sample.paths]
    explainer = Explainer(gradcam_model.model, gradcam_model.card["gradcam_layer"], cam_model.model)
    skipped, timings = Counter(), {}

    def timed(name: str, step: Callable[[], object]):
        begin = time.perf_counter()
        log(f"{name}...")
        result = step()
        timings[name] = round(time.perf_counter() - begin, 1)
        return result

    frames, curves, native, precision_gap = timed(
        "faithfulness and resolution",
        lambda: _faithfulness(explainer, models, methods, sample, items, config, log, map_parts),
    )

    def localize(jobs: list[tuple]) -> list[pd.DataFrame]:
        return [frame for part in _run_parts("localization", jobs, explainer, models, methods, log, map_parts)
                for frame in part]

    n_mosaics = config.mosaics if len(data.classes) >= 4 else 0
    if n_mosaics:
        frames += timed("localization on mosaics", lambda: localize(_mosaic_jobs(models, data, config, skipped)))
    elif config.mosaics:
        skipped[f"mosaics: need 4 classes, the data has {len(data.classes)}"] = config.mosaics
    if (Path(config.data) / "masks" / "test").is_dir():
        frames += timed("localization on masks", lambda: localize(_mask_jobs(models, data, config, skipped, log)))
    if config.boxes:
        frames += timed("localization on boxes", lambda: localize(_box_jobs(models, config, skipped, log)))
    if config.sanity_n > 0:
        few = min(config.sanity_n, len(chosen))
        few_images = sample.subset(np.arange(few))
        frames += timed("sanity", lambda: _sanity(models, methods, few_images, items[:few], config, log, map_parts))
    frame = pd.concat(frames, ignore_index=True)
    return {
        "meta": {
            "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 1), "timings": timings, "device": describe_device(),
            "data": str(config.data), "n_images": len(chosen), "n_mosaics": n_mosaics,
            "input": f"own aspect ratio, short side {_short_side(config, models)}",
            "sanity_n": min(config.sanity_n, len(chosen)), "steps": config.steps, "seed": config.seed,
            "precision": config.scoring_precision, "precision_gap": precision_gap,
            "models": [_model_summary(role, loaded, methods, native) for role, loaded in models.items()],
            "methods": {method.key: method.label for method in methods}, "slow_n": config.slow_n,
            "slow": [method.key for method in methods if method.slow],
            "skipped": dict(skipped), "interval": INTERVAL_NOTE,
        },
        "summary": summarize(frame, config.seed),
        "differences": differences(frame, config.seed),
        "curves": {"x": np.linspace(0, 1, config.steps + 1).tolist(), "methods": curves},
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
    keys = ("set", "metric", "method", "stage")
    return [dict(zip(keys, key, strict=True)) | interval(v.to_numpy(), rng)
            for key, v in frame.groupby(list(keys), sort=False)["value"]]


def differences(frame: pd.DataFrame, seed: int = 0) -> list[dict]:
    """NoPool-GAP CAM minus each other method on the same items (paired), per set and metric, with intervals."""
    cam = GAP_METHOD
    rng = np.random.default_rng(seed)
    rows = []
    for (set_, metric), group in frame[frame["set"] != "sanity"].groupby(["set", "metric"], sort=False):
        table = group.pivot_table(index="item", columns="method", values="value")
        for other in (m for m in table if m != cam and cam in table):
            rows.append({"set": set_, "metric": metric, "method": cam, "versus": other}
                        | interval((table[cam] - table[other]).to_numpy(), rng))
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
