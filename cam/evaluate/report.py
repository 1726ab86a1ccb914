"""``python -m cam report``: score the registry's methods (``cam.explain.registry``; the study's three by default), each
on the model it explains, for faithfulness, localization, sanity and resolution, and write report.md, scores.csv,
report.json, PNG plots (matplotlib) and interactive HTML plots (Plotly, offline) to one folder.

The scores come from ``cam.evaluate.scoring``, the text and figures from ``cam.evaluate.report_content``; the options
are parsed in ``cam.cli``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from cam.core.boxes import BoxError
from cam.core.catalog import Role, default_set
from cam.core.workers import ray_session, worker_threads
from cam.data.folders import DataError, list_images
from cam.evaluate.parallel import RayParts
from cam.evaluate.report_content import DEFAULT_OUT, markdown, matplotlib_figures, plotly_figures
from cam.evaluate.scoring import EvaluationConfig, Log, evaluate
from cam.explain.methods import ExplanationError
from cam.models.checkpoints import LoadedModel, load_model
from cam.models.errors import CheckpointError, WeightsUnavailable


def command_line(config: EvaluationConfig, out: Path) -> str:
    """The command that reproduces ``config`` and ``out``."""
    parts = ["python -m cam report", f"--data {config.data}"] + ([f"--boxes {config.boxes}"] if config.boxes else [])
    parts += [f"--methods {','.join(config.methods)}", f"--n {config.n}", f"--mosaics {config.mosaics}"]
    parts += [f"--slow-n {config.slow_n}", f"--out {out}", f"--seed {config.seed}", f"--sanity-n {config.sanity_n}"]
    parts += [f"--steps {config.steps}", f"--batch-size {config.batch_size}", f"--precision {config.precision}"]
    parts += [f"--size {config.size}"] if config.size else []
    return " ".join(parts)


def run(
    config: EvaluationConfig, out: Path = DEFAULT_OUT, models: tuple[LoadedModel, LoadedModel] | None = None,
    log: Log = print, workers: int = 1, address: str | None = None,
) -> int:
    """Evaluate and write the report to ``out``; ``models`` = (Grad-CAM model, GAP model), default the pair of
    ``cam.core.catalog.default_set()`` (as on the command line). The faithfulness, localization and sanity scoring run
    on ``workers`` Ray actors (``cam.evaluate.parallel.RayParts``), on the cluster at ``address`` or a Ray started here,
    or in this process (0); the numbers are the same.
    Returns 0, or 2 after printing why the data or the models could not be used."""
    try:
        list_images(config.data, "test")  # a missing or empty test folder is said at once, before Ray starts
        if models is None:
            pair = default_set()
            models = load_model(pair.gradcam), load_model(pair.gap)
        with ray_session(address, max(workers, os.cpu_count() or 1)) if workers else contextlib.nullcontext():
            parts = RayParts(dict(zip((Role.GRADCAM, Role.GAP), models, strict=True)), config.methods, workers,
                             worker_threads(workers)) if workers else None
            data = evaluate(config, *models, command_line(config, out), log=log, map_parts=parts)
    except (DataError, BoxError, CheckpointError, WeightsUnavailable, ExplanationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_report(data, Path(out))
    log(f"report written to {out} ({data['meta']['seconds']:.0f} s)")
    return 0


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


