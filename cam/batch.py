"""``python -m cam batch``: explain every image of a folder (or of a list of files) with both networks, on Ray.

Per image, in ``OUT/items/<item>/`` (``item``: the image's path relative to the folder, or to the folder the
listed files share): each method's map at its native resolution (``<method key>.npy``; with ``png`` also
``<method key>.png`` at the photo's size) and ``row.json``, the image's row of the table, written last and
atomically, so that its presence says the image is done. A second run skips those images. At the end all rows
go into ``OUT/table.parquet`` (one row per image, columns in ``image_row``), written only once every image has
its row. A file that cannot be read or explained is a row whose ``error`` column holds the reason, in words.

Ray Data spreads the images over a pool of actors (``ImageWorker``), each loading the two models and compiling the
``Explainer`` once; the work per image is ``cam.pipeline.explain_image``, what the dashboard does for one photo,
so the batch and the page cannot differ. Ray starts inside this process by default (``ray.init``), or joins a
running cluster (``address``, or ``$RAY_ADDRESS``), whose nodes must see the project, its checkpoints and the
images at the same paths as this machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cam.images import IMAGE_SUFFIXES

ITEMS = "items"  # OUT/items/<item>/: one image's maps and row
ROW = "row.json"
TABLE = "table.parquet"
SETTINGS = "batch.json"
TOP_K = 3  # classes (and probabilities) per network in the table
BATCH_SIZE = 4  # images per call of a worker: small, so that the progress bar moves and retries redo little
OBJECT_STORE_BYTES = 1 << 30  # a local Ray's object store; only file names and short rows travel through it
CONNECT_SECONDS = 5.0  # how long to wait for a cluster's port before saying it cannot be reached
PROJECT = Path(__file__).resolve().parent.parent

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
    """(root, files): every picture under a folder (by suffix, ``cam.images.IMAGE_SUFFIXES``, sorted), or every
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
    """Figures of one map (h, w), or a guided picture (H, W, 3) read as ``cam.metrics.saliency``: blank (all zero or
    the same everywhere, ``cam.pipeline.flat``), min and max, the peak's centre as fractions of the photo's height
    and width (NaN for a blank map; the first maximum in row-major order), the native size and the effective grid
    (``cam.metrics.effective_grid`` at the model's input shape, as the report measures it)."""
    from cam.metrics import at_size, effective_grid, saliency
    from cam.pipeline import flat

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
    method key ``<key>_<figure>`` for each of ``map_figures``. ``result`` is a ``cam.pipeline.ImageResult``;
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
    """The ``cam.pipeline.ImageResult`` of an explained row, from its saved maps and probabilities, for
    ``cam.pipeline.render_panels`` (the page shows a batch's photo as it shows a photo explained there). Its
    models carry their cards only: nothing is computed again."""
    from cam.catalog import Role
    from cam.methods import Explanation
    from cam.models import LoadedModel
    from cam.pipeline import ImageResult
    from cam.registry import selected

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
    from cam.gallery import configured_roots

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


# ---------------------------------------------------------------------------------------------------- worker
def limit_threads(threads: int) -> None:
    """TensorFlow's thread pools for a worker: ``threads`` per operation, one operation at a time (several
    workers share the machine's cores). Only possible before TensorFlow's first operation in the process; later
    (a worker inside a process that already computed) the process's settings stay."""
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


class ImageWorker:
    """Explains images and writes their maps and rows; Ray Data runs one per actor (the models load once each),
    and the in-process loop calls one directly. A call takes a batch ``{"path": [...], "item": [...]}`` and
    returns ``{"item": [...], "error": [...]}`` (the error sentences, "" where explained)."""

    def __init__(self, settings: BatchSettings, out: str):
        limit_threads(settings.threads)
        from cam.catalog import Role
        from cam.methods import Explainer
        from cam.models import load_model
        from cam.registry import selected

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
        that cannot be read (``cam.images.ImageError``) or explained (``ExplanationError``): a row with the
        reason, naming the item, never the server's path."""
        from cam import render
        from cam.images import load_image
        from cam.pipeline import explain_image, render_panels

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


# ------------------------------------------------------------------------------------------------------- Ray
def check_reachable(address: str, timeout: float = CONNECT_SECONDS) -> None:
    """Raise BatchError unless something answers on the cluster address's port within ``timeout`` seconds (Ray
    itself retries for minutes). ``auto`` (the cluster started on this machine) is left to Ray."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except ValueError as error:
        raise BatchError(f"the Ray address '{address}' is not of the form HOST:PORT (e.g. 127.0.0.1:6379)") from error
    except OSError as error:
        raise BatchError(f"no Ray cluster answers at {address} ({error.strerror or error}); start one there with "
                         "`ray start --head`, or leave out --address to run on this machine") from error


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: ``address``, else ``$RAY_ADDRESS``; None: start Ray here."""
    return address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(address: str | None, cpus: int) -> Iterator[None]:
    """Ray for the duration of a run: the session already open in this process if any, else the cluster at
    ``cluster_address(address)`` (checked reachable), else a local Ray in this process with ``cpus`` CPUs and a
    small object store. Workers get this project on their path and its checkpoints folder. Shuts down only what it
    started."""
    import ray

    from cam.catalog import CHECKPOINTS

    address = cluster_address(address)
    if address:
        check_reachable(address)
    if ray.is_initialized():
        yield
        return
    paths = [str(PROJECT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths), "CAM_CHECKPOINTS": str(CHECKPOINTS.resolve()),
                                "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}}
    if address:
        try:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        except (ConnectionError, ray.exceptions.RayError) as error:
            raise BatchError(f"could not join the Ray cluster at {address} ({str(error).splitlines()[0]}); a cluster "
                             "with token authentication (Ray's default) needs RAY_AUTH_MODE=token and its token "
                             "here too (~/.ray/auth_token or $RAY_AUTH_TOKEN)") from error
    else:
        # log_to_driver=False: the workers' TensorFlow start-up lines would bury the progress bar; their failures
        # still come back as exceptions.
        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                 runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


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


class PartWorker:
    """A Ray actor of ``RayParts``: the models (from the object store) and an Explainer, built once."""

    def __init__(self, shared: list, methods: Sequence[str], threads: int):
        import ray

        limit_threads(threads)  # before the models arrive: unpacking them is TensorFlow's first work here
        from cam.catalog import Role
        from cam.methods import Explainer
        from cam.registry import selected

        self.models = ray.get(shared[0])
        gradcam, cam_model = self.models[Role.GRADCAM], self.models[Role.GAP]
        self.methods = selected(methods)
        self.explainer = Explainer(gradcam.model, gradcam.card["gradcam_layer"], cam_model.model)

    def run(self, kind: str, *job) -> dict | list:
        """One part of the report (``cam.evaluation.run_part``)."""
        from cam.evaluation import run_part

        return run_part(kind, self.explainer, self.models, self.methods, job)


class RayParts:
    """``cam.evaluation``'s parts (faithfulness, localization, sanity) on a pool of ``workers`` Ray actors (inside
    ``ray_session``), one GPU each where the cluster has GPUs: the models travel once through the object store, each
    actor builds its own Explainer, and the results come back in the jobs' order."""

    def __init__(self, models: dict, methods: Sequence[str], workers: int, threads: int = 1):
        import ray
        from ray.util import ActorPool

        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        actor = ray.remote(num_cpus=1, num_gpus=gpus)(PartWorker)
        shared = [ray.put(models)]  # in a list, so that each actor unpacks it after limiting its threads
        self.pool = ActorPool([actor.remote(shared, list(methods), threads) for _ in range(workers)])

    def __call__(self, kind: str, jobs: list[tuple]) -> list:
        return list(self.pool.map(lambda worker, job: worker.run.remote(kind, *job), jobs))


def worker_threads(workers: int) -> int:
    """TensorFlow threads per worker: this machine's cores shared among the workers."""
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


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
    from cam.registry import selected

    settings = BatchSettings(*models, tuple(m.key for m in selected(args.methods)), args.png, args.colormap,
                             worker_threads(args.workers))
    summary = run(args.source, args.out, settings, args.workers, args.address)
    print(f"{summary.done} images explained now, {summary.skipped} done before, {summary.failed} could not be "
          f"read or explained; table: {Path(args.out) / TABLE}")
    return 1 if summary.failed else 0
