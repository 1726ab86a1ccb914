"""What Ray costs and gives ``python -m cam batch``: images/s of the in-process loop (no Ray), of one local Ray
worker and of two, on the same photos in one run, as ratios to the in-process loop; then the time 50,000 photos
would take on 8 GPUs, from the measured per-image cost and the assumption given by ``--gpu-speedup``.

    python -m benchmarks.bench_batch [--data ../shared/data/photos4] [--n 120] [--set photos] [--modes 0,1,2]
           [--report-data ../shared/data/cifar4] [--report-n 64]

Each mode explains the same ``--n`` photos of ``DATA/test`` (evenly spread over the sorted file list) into a
fresh folder and is timed from the call to the table written, start-up included (Ray's start, each worker's
TensorFlow import and model load), and again per image once the first result is in (steady state). Then the
report's scoring (faithfulness, the part that runs on Ray) of ``--report-n`` images, in-process, 1 and 2 workers.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cam.core.catalog import MODEL_SETS, STUDY
from cam.core.workers import ray_session, worker_threads
from cam.evaluate.parallel import RayParts
from cam.serve import batch


def timed_run(source: Path, out: Path, settings: batch.BatchSettings, workers: int) -> dict[str, float]:
    """One batch into ``out``: whole wall time, and the seconds per image after the first result arrived."""
    started = time.perf_counter()
    arrivals: list[tuple[float, int]] = []
    root, files = batch.list_images(source)
    todo = [(path, batch.item_of(path, root)) for path in files]
    batch.prepare_out(out, settings, root)
    with contextlib.nullcontext() if workers == 0 else ray_session(None, max(workers, 2)):
        parts = batch.local_results(todo, settings, out) if workers == 0 else batch.ray_results(
            todo, settings, out, workers)
        for part in parts:
            arrivals.append((time.perf_counter(), len(part["item"])))
    batch.write_table(out)
    wall = time.perf_counter() - started
    first_time, first_count = arrivals[0]
    steady = (arrivals[-1][0] - first_time) / max(1, len(files) - first_count)
    return {"wall": wall, "images_per_s": len(files) / wall, "steady_s_per_image": steady}


def report_seconds(data: Path, n: int, set_name: str, workers: int) -> float:
    """Wall time of ``python -m cam report``'s scoring (faithfulness parts on ``workers`` Ray actors, 0: here; no
    mosaics, no sanity), Ray's start included."""
    from cam.core.catalog import Role
    from cam.evaluate.scoring import EvaluationConfig, evaluate
    from cam.models.checkpoints import load_model

    model_set = MODEL_SETS[set_name]
    models = load_model(model_set.gradcam), load_model(model_set.gap)
    config = EvaluationConfig(data, n=n, mosaics=0, sanity_n=0, batch_size=16)
    started = time.perf_counter()
    with contextlib.nullcontext() if workers == 0 else ray_session(None, max(workers, 2)):
        parts = RayParts(dict(zip((Role.GRADCAM, Role.GAP), models, strict=True)), STUDY, workers,
                               worker_threads(workers)) if workers else None
        evaluate(config, *models, "bench", log=lambda line: None, map_parts=parts)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/photos4")
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--set", default="photos", choices=sorted(MODEL_SETS))
    parser.add_argument("--modes", default="0,1,2", help="worker counts; 0 = in-process, no Ray")
    parser.add_argument("--gpu-speedup", type=float, default=20.0,
                        help="assumed: one GPU explains this many times faster than one worker here")
    parser.add_argument("--report-data", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/data/cifar4")
    parser.add_argument("--report-n", type=int, default=64, help="test images the report scores (0: skip)")
    parser.add_argument("--report-set", default="cifar", choices=sorted(MODEL_SETS))
    args = parser.parse_args()
    _, files = batch.list_images(args.data / "test")
    chosen = [files[i] for i in np.linspace(0, len(files) - 1, min(args.n, len(files))).round().astype(int)]
    model_set = MODEL_SETS[args.set]
    with tempfile.TemporaryDirectory() as scratch:
        listing = Path(scratch) / "files.txt"
        listing.write_text("\n".join(str(path.resolve()) for path in chosen) + "\n")
        results = {}
        for workers in (int(mode) for mode in args.modes.split(",")):
            threads = max(1, 2 // max(workers, 1))
            settings = batch.BatchSettings(model_set.gradcam, model_set.gap, STUDY, threads=threads)
            out = Path(scratch) / f"out{workers}"
            results[workers] = timed_run(listing, out, settings, workers)
            shutil.rmtree(out)
            name = "in-process" if workers == 0 else f"Ray, {workers} worker{'s' * (workers > 1)}"
            r = results[workers]
            print(f"{name}: {len(chosen)} photos in {r['wall']:.1f} s = {r['images_per_s']:.2f} images/s; steady "
                  f"{1 / r['steady_s_per_image']:.2f} images/s ({r['steady_s_per_image'] * 1000:.0f} ms per image)",
                  flush=True)
    base = results.get(0)
    if base:
        for workers, r in results.items():
            if workers:
                print(f"Ray {workers} worker(s) / in-process: {r['images_per_s'] / base['images_per_s']:.2f}x overall, "
                      f"{base['steady_s_per_image'] / r['steady_s_per_image']:.2f}x steady")
        per_image = base["steady_s_per_image"]
        hours = 50_000 * per_image / args.gpu_speedup / 8 / 3600
        print(f"on paper: 50,000 photos on 8 GPUs (one worker each, each {args.gpu_speedup:g}x this machine's "
              f"in-process {per_image * 1000:.0f} ms per image): {hours * 60:.0f} minutes, start-up aside; on "
              f"this machine's 2 cores: {50_000 * per_image / 3600:.1f} hours")

    if args.report_n:
        seconds = {workers: report_seconds(args.report_data, args.report_n, args.report_set, workers)
                   for workers in (0, 1, 2)}
        print(f"report ({args.report_set} pair, n={args.report_n}, faithfulness only): in-process {seconds[0]:.1f} s, "
              f"Ray 1 worker {seconds[1]:.1f} s, 2 workers {seconds[2]:.1f} s; 2 workers / 1 worker: "
              f"{seconds[1] / seconds[2]:.2f}x faster", flush=True)


if __name__ == "__main__":
    main()
