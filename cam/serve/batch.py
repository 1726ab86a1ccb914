"""``python -m cam batch``: explain every image of a folder (or of a list of files) with both networks, on Ray.

Per image, in ``OUT/items/<item>/`` (``item``: the image's path relative to the folder, or to the folder the
listed files share): each method's map at its native resolution (``<method key>.npy``; with ``png`` also
``<method key>.png`` at the photo's size) and ``row.json``, the image's row of the table, written last and
atomically, so that its presence says the image is done. A second run skips those images. At the end all rows
go into ``OUT/table.parquet`` (one row per image, columns in ``image_row``), written only once every image has
its row. A file that cannot be read or explained is a row whose ``error`` column holds the reason, in words.

Ray Data spreads the images over a pool of actors (``ImageWorker``), each loading the two models and compiling the
``Explainer`` once; the work per image is ``cam.explain.pipeline.explain_image``, what the dashboard does for one photo,
so the batch and the page cannot differ. Ray starts inside this process by default (``ray.init``), or joins a
running cluster (``address``, or ``$RAY_ADDRESS``), whose nodes must see the project, its checkpoints and the
images at the same paths as this machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cam.core.images import IMAGE_SUFFIXES
from cam.core.workers import check_reachable, cluster_address, limit_threads, ray_session, worker_threads

ITEMS = "items"  # OUT/items/<item>/: one image's maps and row


ROW = "row.json"


TABLE = "table.parquet"


SETTINGS = "batch.json"


TOP_K = 3  # classes (and probabilities) per network in the table


BATCH_SIZE = 4  # images per call of a worker: small, so that the progress bar moves and retries redo little




Log = Callable[[str], None]


class BatchError(ValueError):
    """A batch that cannot run as asked (no images, unusable output folder, unreachable cluster); in words."""


@dataclass(frozen=True)
class BatchSettings:
    """What every image gets: the two models (registry names or checkpoint paths), the methods (registry keys),
    PNGs or not, and how many TensorFlow threads a worker may use."""

    gradcam: str
    gap: str
    methods: tuple[str, ...]
    png: bool = False
    colormap: str = "jet"
    threads: int = 1

    def same_output(self, other: BatchSettings) -> bool:
        """Whether rows made with ``other`` belong to the same table (threads change nothing in them)."""
        return asdict(self) | {"threads": 0} == asdict(other) | {"threads": 0}


# ---------------------------------------------------------------------------------------------------- images
def list_images(source: str | Path, skip: str | Path | None = None) -> tuple[Path, list[Path]]:
    """(root, files): every picture under a folder (by suffix, ``cam.core.images.IMAGE_SUFFIXES``, sorted), or every
    file named by a text file, one per line (relative to the list's folder; blank lines and ``#`` comments
    skipped), whatever its suffix: a file that is no picture becomes a row with the reason. ``root`` is the folder,
    or the folder the listed files share; a folder's files under ``skip`` (a batch's output folder inside it, with
    its PNGs) are left out. Raises BatchError when there is nothing to explain."""
    source = Path(source)
    if source.is_dir():
        skip = Path(skip).resolve() if skip else None
        files = sorted(path for path in source.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
                       and not (skip and path.resolve().is_relative_to(skip)))
        root = source
    elif source.is_file():
        try:
            lines = source.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise BatchError(f"{source} is not a readable list of files (one path per line): {error}") from error
        files = [source.parent / line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        files = list(dict.fromkeys(path.resolve() for path in files))
        root = Path(os.path.commonpath([path.parent for path in files])) if files else source.parent
    else:
        raise BatchError(f"{source} is neither a folder of pictures nor a list of files")
    if not files:
        raise BatchError(f"{source} holds no pictures ({', '.join(IMAGE_SUFFIXES)})")
    return root, files


def item_of(path: Path, root: Path) -> str:
    """The image's name in the table and under OUT/items: its path relative to ``root``, with ``/``."""
    return path.relative_to(root).as_posix()


def item_folder(out: str | Path, item: str) -> Path:
    """Where one image's maps and row are."""
    return Path(out) / ITEMS / item


def map_path(out: str | Path, item: str, key: str, suffix: str = ".npy") -> Path:
    """The file of method ``key``'s map of ``item`` (``.npy``: native resolution; ``.png``: at the photo's size)."""
    return item_folder(out, item) / f"{key}{suffix}"


# ------------------------------------------------------------------------------------------------------ rows
def map_figures(native: np.ndarray, input_shape: tuple[int, int]) -> dict[str, object]:
    """Figures of one map (h, w), or a guided picture (H, W, 3) read as ``cam.evaluate.metrics.saliency``: blank (all
    zero or the same everywhere, ``cam.explain.pipeline.flat``), min and max, the peak's centre as fractions of the
    photo's height and width (NaN for a blank map; the first maximum in row-major order), the native size and the
    effective grid (``cam.evaluate.metrics.effective_grid`` at the model's input shape, as the report measures it)."""
    from cam.evaluate.metrics import at_size, effective_grid, saliency
    from cam.explain.pipeline import flat

    values = saliency(native[None])[0]
    height, width = values.shape
    blank = flat(native)
    row, col = np.unravel_index(int(np.argmax(values)), values.shape)
    return {
        "blank": bool(blank), "min": float(values.min()), "max": float(values.max()),
        "peak_row": float("nan") if blank else (row + 0.5) / height,
        "peak_col": float("nan") if blank else (col + 0.5) / width,
        "native": f"{height}x{width}",
        "grid": int(effective_grid(at_size(native[None], input_shape))[0]),
    }


def image_row(item: str, result=None, error: str = "") -> dict[str, object]:
    """One image's row: ``item``, ``error`` ("" when explained), ``height``, ``width``; per network role
    (``gradcam``, ``cam``) its model's name, top classes ``<role>_class_<k>`` with probabilities ``<role>_p_<k>``,
    the class its maps explain ``<role>_explained`` and all its probabilities ``<role>_probabilities``; per
    method key ``<key>_<figure>`` for each of ``map_figures``. ``result`` is a ``cam.explain.pipeline.ImageResult``;
    None for a file that failed (``error``)."""
    row: dict[str, object] = {"item": item, "error": error}
    if result is None:
        return row
    row |= {"height": int(result.image.shape[0]), "width": int(result.image.shape[1])}
    for role in result.roles:
        row[f"{role}_model"] = result.model(role).card["name"]
        for k, (name, p) in enumerate(result.top_predictions(role, TOP_K), start=1):
            row[f"{role}_class_{k}"], row[f"{role}_p_{k}"] = name, p
        row[f"{role}_explained"] = result.class_name(role)
        row[f"{role}_probabilities"] = result.explanation.probabilities[role][0].astype(float).tolist()
    for method in result.methods:
        native = result.explanation.maps[method.key][0]
        shape = result.input_shape(method.role)
        row |= {f"{method.key}_{name}": value for name, value in map_figures(native, shape).items()}
    return row


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file: a reader sees the whole file or none."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def read_rows(out: str | Path) -> list[dict]:
    """Every finished row under OUT/items, sorted by item."""
    rows = [json.loads(path.read_text()) for path in (Path(out) / ITEMS).rglob(ROW)]
    return sorted(rows, key=lambda row: row["item"])


def write_table(out: str | Path) -> pd.DataFrame:
    """All rows of OUT as ``OUT/table.parquet`` (written atomically); returns the table."""
    table = pd.DataFrame(read_rows(out))
    # Rows with an error lack the figures; nullable types keep the others' integers and booleans as such.
    for column in table.columns:
        if column.endswith("_blank"):
            table[column] = table[column].astype("boolean")
        elif column in ("height", "width") or column.endswith("_grid"):
            table[column] = table[column].astype("Int64")
    partial = Path(out) / (TABLE + ".partial")
    table.to_parquet(partial, index=False)
    os.replace(partial, Path(out) / TABLE)
    return table


def read_table(out: str | Path) -> pd.DataFrame:
    """The table of a finished batch."""
    return pd.read_parquet(Path(out) / TABLE)


def recorded(out: str | Path) -> dict:
    """What OUT/batch.json records: the settings, the source folder (``root``) and, once a worker started, the
    models' cards (``models``: name and classes per role)."""
    return json.loads((Path(out) / SETTINGS).read_text())


def rebuilt_result(out: str | Path, row: dict, image: np.ndarray):
    """The ``cam.explain.pipeline.ImageResult`` of an explained row, from its saved maps and probabilities, for
    ``cam.explain.pipeline.render_panels`` (the page shows a batch's photo as it shows a photo explained there). Its
    models carry their cards only: nothing is computed again."""
    from cam.core.catalog import Role
    from cam.explain.methods import Explanation
    from cam.explain.pipeline import ImageResult
    from cam.explain.registry import selected
    from cam.models.checkpoints import LoadedModel

    settings = recorded(out)
    cards = settings["models"]
    loaded = {role: LoadedModel(None, cards[role]) for role in (Role.GRADCAM, Role.GAP)}
    methods = selected(settings["methods"])
    explanation = Explanation(
        {role: np.asarray([row[f"{role}_probabilities"]], np.float32) for role in loaded},
        {role: np.asarray([loaded[role].classes.index(row[f"{role}_explained"])]) for role in loaded},
        {method.key: np.load(map_path(out, row["item"], method.key))[None] for method in methods}, {},
    )
    return ImageResult(image, loaded[Role.GRADCAM], loaded[Role.GAP], explanation, methods)


def batch_folders(value: str | None = None) -> dict[str, Path]:
    """The finished batches a page may show, by name: every folder with a table named in ``value`` (default:
    ``$CAM_BATCHES``, folders separated by ``os.pathsep``) and every such folder directly inside one (the folder's
    own name, numbered when two are alike). Visitors choose among these names; no path comes from them."""
    from cam.data.folders import configured_roots

    value = os.environ.get("CAM_BATCHES", "") if value is None else value
    found: dict[str, Path] = {}
    for root in configured_roots(value):
        candidates = [root] if (root / TABLE).is_file() else sorted(
            path for path in (root.iterdir() if root.is_dir() else ()) if (path / TABLE).is_file())
        for folder in candidates:
            name, number = folder.resolve().name, 2
            while name in found:
                name, number = f"{folder.resolve().name} ({number})", number + 1
            found[name] = folder
    return found


class ImageWorker:
    """Explains images and writes their maps and rows; Ray Data runs one per actor (the models load once each),
    and the in-process loop calls one directly. A call takes a batch ``{"path": [...], "item": [...]}`` and
    returns ``{"item": [...], "error": [...]}`` (the error sentences, "" where explained)."""

    def __init__(self, settings: BatchSettings, out: str):
        limit_threads(settings.threads)
        from cam.core.catalog import Role
        from cam.explain.methods import Explainer
        from cam.explain.registry import selected
        from cam.models.checkpoints import load_model

        self.settings, self.out = settings, Path(out)
        self.gradcam, self.cam_model = load_model(settings.gradcam), load_model(settings.gap)
        self.methods = selected(settings.methods)
        self.explainer = Explainer(self.gradcam.model, self.gradcam.card["gradcam_layer"], self.cam_model.model)
        cards = {role: {"name": loaded.card["name"], "classes": loaded.classes}
                 for role, loaded in ((Role.GRADCAM, self.gradcam), (Role.GAP, self.cam_model))}
        record = recorded(self.out)
        if record.get("models") != cards:  # every worker loads the same models: the first one writes them down
            write_atomically(self.out / SETTINGS, json.dumps(record | {"models": cards}, indent=1).encode())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = [self.explain_file(Path(path), str(item)) for path, item in zip(batch["path"], batch["item"],
                                                                                 strict=True)]
        return {"item": np.asarray(batch["item"], dtype=str), "error": np.asarray(errors, dtype=str)}

    def explain_file(self, path: Path, item: str) -> str:
        """Explain one file, write its maps, then its row; returns its error sentence ("" when explained). A file
        that cannot be read (``cam.core.images.ImageError``) or explained (``ExplanationError``): a row with the
        reason, naming the item, never the server's path."""
        from cam.core.images import load_image
        from cam.explain import render
        from cam.explain.pipeline import explain_image, render_panels

        folder = item_folder(self.out, item)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            image = load_image(path, name=item)
            result = explain_image(image, self.explainer, self.gradcam, self.cam_model, None, self.methods)
        except ValueError as error:  # ImageError and ExplanationError: the input's fault, said in words
            row = image_row(item, error=" ".join(str(error).split()))
        else:
            for method in result.methods:
                np.save(map_path(self.out, item, method.key), result.explanation.maps[method.key][0])
            if self.settings.png:
                for panel in render_panels(result, self.settings.colormap, raw=True):
                    write_atomically(map_path(self.out, item, panel.key, ".png"), render.to_png(panel.image))
            row = image_row(item, result)
        write_atomically(folder / ROW, json.dumps(row).encode())
        return str(row["error"])


def ray_results(
    todo: Sequence[tuple[Path, str]], settings: BatchSettings, out: Path, workers: int
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data over ``todo`` (path, item): ``map_batches`` on a pool of ``workers`` ImageWorker actors, one GPU
    each where the cluster has GPUs; yields each finished batch's ``{"item", "error"}`` as it comes."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the batch shows its own bar, in images
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no "execution finished" lines under the bar
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    rows = [{"path": str(path), "item": item} for path, item in todo]
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // BATCH_SIZE)))
    explained = dataset.map_batches(
        ImageWorker, fn_constructor_kwargs={"settings": settings, "out": str(out)}, batch_size=BATCH_SIZE,
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, num_gpus=gpus,
    )
    yield from explained.iter_batches(batch_size=None, batch_format="numpy")


def local_results(
    todo: Sequence[tuple[Path, str]], settings: BatchSettings, out: Path
) -> Iterator[dict[str, np.ndarray]]:
    """The same work in this process, one ImageWorker, no Ray (``workers=0``; the benchmark's reference)."""
    worker = ImageWorker(settings, str(out))
    for start in range(0, len(todo), BATCH_SIZE):
        part = todo[start : start + BATCH_SIZE]
        yield worker({"path": np.asarray([str(p) for p, _ in part]), "item": np.asarray([i for _, i in part])})


# ----------------------------------------------------------------------------------------------------- a run
def prepare_out(out: Path, settings: BatchSettings, root: Path) -> None:
    """Make OUT (checked writable) and record the settings; refuse a folder that holds another batch's rows. A
    table left by an earlier run is removed until this run completes it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise BatchError(f"cannot write to the output folder {out} ({error.strerror or error})") from error
    record = {}
    if (out / SETTINGS).is_file():
        record = recorded(out)
        fields = {name: record[name] for name in BatchSettings.__dataclass_fields__}
        earlier = BatchSettings(**{**fields, "methods": tuple(fields["methods"])})
        if not earlier.same_output(settings):
            raise BatchError(f"{out} holds a batch made with other models or methods ({earlier.gradcam}, "
                             f"{earlier.gap}: {', '.join(earlier.methods)}); choose another --out")
    record |= asdict(settings) | {"root": str(Path(root).resolve())}
    write_atomically(out / SETTINGS, json.dumps(record, indent=1).encode())
    (out / TABLE).unlink(missing_ok=True)


@dataclass
class BatchSummary:
    """What a run did: images found, skipped (done before), explained now, failed now (rows with an error), and
    whether the table is written (every image has its row)."""

    found: int
    skipped: int
    done: int
    failed: int
    complete: bool


def run(
    source: str | Path, out: str | Path, settings: BatchSettings, workers: int = 1, address: str | None = None,
    limit: int | None = None, progress: bool = True,
) -> BatchSummary:
    """Explain every image of ``source`` (``list_images``) not yet in ``out`` with ``workers`` Ray actors (0: in
    this process, no Ray), on the cluster at ``address`` (default: ``$RAY_ADDRESS``, else a local Ray), then write
    the table. ``limit``: stop after that many images, leaving the table unwritten (resuming is tested with it)."""
    from tqdm import tqdm

    out = Path(out)
    root, files = list_images(source, skip=out)
    address = cluster_address(address)
    items = [(path, item_of(path, root)) for path in files]
    if address and workers:
        check_reachable(address)  # before OUT is touched: a run that cannot start leaves nothing behind
    prepare_out(out, settings, root)
    todo = [(path, item) for path, item in items if not (item_folder(out, item) / ROW).is_file()]
    skipped = len(items) - len(todo)
    todo = todo[:limit] if limit is not None else todo
    done = failed = 0
    if todo:
        session = contextlib.nullcontext() if workers == 0 else ray_session(address, max(workers, os.cpu_count() or 1))
        with session, tqdm(total=len(todo), unit="image", desc="explaining", file=sys.stderr,
                           disable=not progress) as bar:
            results = local_results(todo, settings, out) if workers == 0 else ray_results(todo, settings, out, workers)
            for part in results:
                done += len(part["item"])
                failed += int(sum(bool(error) for error in part["error"]))
                bar.update(len(part["item"]))
    complete = skipped + done == len(items)
    if complete:
        write_table(out)
    return BatchSummary(len(items), skipped, done, failed, complete)


def command(args, models: tuple[str, str]) -> int:
    """``python -m cam batch`` (options parsed in ``cam.cli``): 0 when every image has its row, 1 when some are
    rows with an error (the table is written all the same)."""
    from cam.explain.registry import selected

    settings = BatchSettings(*models, tuple(m.key for m in selected(args.methods)), args.png, args.colormap,
                             worker_threads(args.workers))
    summary = run(args.source, args.out, settings, args.workers, args.address)
    print(f"{summary.done} images explained now, {summary.skipped} done before, {summary.failed} could not be "
          f"read or explained; table: {Path(args.out) / TABLE}")
    return 1 if summary.failed else 0
