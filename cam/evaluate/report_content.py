"""The report's content from its data (report.json): Markdown, figures (matplotlib, Plotly), and reading a
report back for the dashboard's Evaluation page. No TensorFlow: ``cam.evaluate.report`` produces and writes the data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import matplotlib
import numpy as np

from cam.core.catalog import (
    BLUR_SIGMA,
    GAP_METHOD,
    GRAD_CAM,
    MIN_IOU,
    MODEL_SETS,
    POINTING_TOLERANCE,
    PROJECT_ROOT,
    REGION_THRESHOLD,
    REGISTRY,
    RESOLUTION_TOLERANCE,
    ROLE_TITLES,
    STEPS,
    Role,
    checkpoint_path,
)

DEFAULT_OUT = PROJECT_ROOT / "reports" / "latest"
EXAMPLE_COMMAND = "python -m cam report --data data/cifar4 --n 1000 --mosaics 1000 --sanity-n 50"
# How long EXAMPLE_COMMAND takes (the study's three methods); README.md says the same.
EXAMPLE_DURATION = "about 6 minutes on 2 otherwise idle CPU cores (measured: 336 s)"
SETS = {
    "test": "Test images (each method explains its model's top prediction)",
    "mosaics": "2x2 mosaics (each tile's class explained in turn; no pointing tolerance)",
    "boxes": f"Boxed images (each class present explained; pointing tolerance {POINTING_TOLERANCE:g} px)",
    "masks": "Photos with a figure/ground mask (the true class explained, compared with the mask at the photo's size; "
    f"pointing tolerance {POINTING_TOLERANCE:g} px)",
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
    "mask_iou": ("IoU with mask", "higher", f"IoU, pixel by pixel, between the region above {REGION_THRESHOLD:.0%} of "
                 "the map's maximum and the object's mask."),
    "min_max_ratio": ("Min/max of raw map", "lower", "the native map's minimum over its maximum: near 1 the map is "
                      "flat and its colours show noise (NaN for an all-zero map)."),
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
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def labels(data: dict) -> dict[str, str]:
    """Method key -> label, for the methods of this report, in their order."""
    return data["meta"]["methods"]


def colours(data: dict) -> dict[str, str]:
    """Method key -> colour, the same in every figure of this report."""
    return {key: PALETTE[index % len(PALETTE)] for index, key in enumerate(labels(data))}


# ---------------------------------------------------------------------------------------------------- writing
def _cell(row: dict | None) -> str:
    if not row or row["mean"] is None:
        return "–"
    return f"{row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}] n={row['n']}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _sanity_table(summary: list[dict], meta: dict) -> list[str]:
    by_method = {m: [r for r in summary if r["set"] == "sanity" and r["method"] == m] for m in meta["methods"]}
    columns, header = [], ["Stage"]
    for model in meta["models"]:
        methods = [m for m in model["methods"] if by_method[m]]
        if methods:
            header += [f"{model['name']} randomised down to"] + [meta["methods"][m] for m in methods]
            columns.append([r["stage"] for r in by_method[methods[0]]])
            columns += [[_cell(r) for r in by_method[m]] for m in methods]
    rows = [[str(k)] + [c or "" for c in cells] for k, cells in enumerate(zip_longest(*columns), start=1)]
    return _table(header, rows) if columns else []


ANSWER_METRICS = (("test", "effective_grid"), ("test", "deletion_auc"), ("test", "insertion_auc"),
                  ("mosaics", "pointing"), ("mosaics", "energy"), ("sanity", "spearman"))
QUESTION = "Which method gives the finest faithful map without retraining, and is NoPool-GAP still needed?"


def _answer_cells(data: dict) -> dict[tuple[str, str, str], dict]:
    """(set, metric, method) -> summary row; for sanity, the mean over stages of the per-stage means, with the
    widest stage interval (a summary of the whole cascade)."""
    cells = {(r["set"], r["metric"], r["method"]): r for r in data["summary"] if r["set"] != "sanity"}
    for method in labels(data):
        stages = _sanity_lines(data).get(method, [])
        if stages:
            cells["sanity", "spearman", method] = {
                "mean": float(np.mean([r["mean"] for r in stages])), "low": min(r["low"] for r in stages),
                "high": max(r["high"] for r in stages), "n": stages[0]["n"]}
    return cells


def _compare(a: dict | None, b: dict | None, better: str) -> str:
    """'better', 'worse' or 'indistinguishable' for row a against row b: the 95% intervals must not overlap."""
    if not a or not b or a["mean"] is None or b["mean"] is None:
        return "not measured"
    if a["low"] > b["high"]:
        return "better" if better == "higher" else "worse"
    if a["high"] < b["low"]:
        return "worse" if better == "higher" else "better"
    return "indistinguishable"


def _finest(data: dict) -> tuple[str, str, list[str], dict] | None:
    """The finest faithful method on the Grad-CAM model, the reference it was held against (Grad-CAM), the
    faithful methods and the answer's cells; None when the report has no resolution scores (see ``answer``)."""
    cells = _answer_cells(data)
    models = {m["role"]: m for m in data["meta"]["models"]}
    candidates = [k for k in models.get(Role.GRADCAM, {}).get("methods", []) if ("test", "effective_grid", k) in cells]
    if not candidates:
        return None
    reference = GRAD_CAM if GRAD_CAM in candidates else candidates[0]

    def faithful(key: str) -> bool:
        deletion, insertion = cells.get(("test", "deletion_auc", key)), cells.get(("test", "insertion_auc", key))
        ref_deletion, ref_insertion = (cells[("test", m, reference)] for m in ("deletion_auc", "insertion_auc"))
        sanity = cells.get(("sanity", "spearman", key))
        return (deletion["mean"] <= ref_deletion["high"] and insertion["mean"] >= ref_insertion["low"]
                and (sanity is None or sanity["mean"] < 0.5))

    good = [k for k in candidates if faithful(k)] or candidates
    return max(good, key=lambda k: cells[("test", "effective_grid", k)]["mean"]), reference, good, cells


def answer(data: dict) -> list[str]:
    """The report's answer to QUESTION: one paragraph computed from the numbers, and one table.

    Faithful: deletion AUC not above Grad-CAM's interval, insertion AUC not below it, and a mean sanity Spearman
    under 0.5 (the map changes when the weights are randomised). Finest: the highest mean effective grid among
    the faithful methods on the unchanged Grad-CAM model (no retraining). NoPool-GAP CAM is still needed where it
    beats that method, with non-overlapping intervals, on the pointing game or energy in box (mosaics) or on
    deletion/insertion."""
    finest = _finest(data)
    if finest is None:
        return []
    names, models = labels(data), {m["role"]: m for m in data["meta"]["models"]}
    best, reference, good, cells = finest
    grid = cells[("test", "effective_grid", best)]
    text = [f"**{QUESTION}** On these models and images, the finest faithful map without retraining comes from "
            f"**{names[best]}** on {models['gradcam']['name']} (mean effective grid {grid['mean']:.1f} "
            f"[{grid['low']:.1f}, {grid['high']:.1f}]; faithful here means deletion AUC no worse than "
            f"{names[reference]}'s interval, insertion AUC no lower, and a mean sanity Spearman under 0.5; "
            f"faithful: {', '.join(names[k] for k in good)})."]
    if GAP_METHOD in names and ("test", "effective_grid", GAP_METHOD) in cells:
        verdicts = {(s, m): _compare(cells.get((s, m, GAP_METHOD)), cells.get((s, m, best)), METRICS[m][1])
                    for s, m in ANSWER_METRICS if s != "sanity"}
        said = ", ".join(f"{METRICS[m][0]} {v}" for (s, m), v in verdicts.items())
        needed = any(v == "better" for (_, m), v in verdicts.items() if m != "effective_grid")
        text += [f"Against it, {names[GAP_METHOD]} (retrained, no pooling) is: {said} (95% intervals overlapping = "
                 "indistinguishable). " + ("So **NoPool-GAP is still needed**: it is better on at least one of "
                 "localisation and faithfulness." if needed else "So on these numbers **NoPool-GAP is not needed**: "
                 f"{names[best]} matches it without retraining.")]
    header = ["Method", "Model"] + [f"{METRICS[m][0]} ({s}, {METRICS[m][1]} better)" for s, m in ANSWER_METRICS]
    rows = [[names[k], role_model["name"]] + [_cell(cells.get((s, m, k))) for s, m in ANSWER_METRICS]
            for role_model in data["meta"]["models"] for k in role_model["methods"]]
    return ["## Answer", "", " ".join(text), "", *_table(header, rows),
            "", "Sanity: mean over the randomisation stages of the Spearman correlation (lower = the map depends more "
            "on the weights), with the widest stage interval.", ""]


def plain_summary(data: dict) -> list[str]:
    """One sentence per use, for people who do not read tables, from the report's numbers: to see *where* the object
    is (pointing game), to see *fine detail* (effective grid, beside the map's own grid as the panels give it), to
    check that the network *learned something* (the randomised-weights test)."""
    finest = _finest(data)
    if finest is None:
        return []
    names, (best, reference, _, cells) = labels(data), finest
    native = {key: size for model in data["meta"]["models"] for key, size in model.get("native", {}).items()}
    sentences = []
    # Where: the pointing game on the mosaics and on the masked photos (photos4's horses with their outlines), each
    # when measured; the two can name different winners.
    where = []  # (winning method, pictures, finding, the reference's score when it did not win)
    for set_, pictures, target in (("mosaics", "on pictures made of four photos", "the right one"),
                                   ("masks", "on photos of horses with their outline drawn", "the horse")):
        pointing = {k: cells[(set_, "pointing", k)]["mean"] for k in names if (set_, "pointing", k) in cells}
        if pointing:
            winner = max(pointing, key=pointing.get)
            versus = (f"{names[reference]}: {pointing[reference]:.0%}"
                      if reference in pointing and winner != reference else "")
            finding = f"its strongest spot fell on {target} {pointing[winner]:.0%} of the time"
            where.append((winner, pictures, finding, versus))
    if len({winner for winner, *_ in where}) == 1:
        sentences.append(f"To see **where** the object is, trust **{names[where[0][0]]}** most: " + "; ".join(
            f"{pictures}, {finding}" + (f" ({versus})" if versus else "") for _, pictures, finding, versus in where
        ) + ".")
    elif where:
        sentences.append("To see **where** the object is, trust " + " and ".join(
            f"**{names[winner]}** {pictures} ({finding}" + (f"; {versus}" if versus else "") + ")"
            for winner, pictures, finding, versus in where
        ) + ".")

    def detail(key: str) -> str:
        grid = cells[("test", "effective_grid", key)]["mean"]
        cells_of = native.get(key, "").replace("x", " x ")
        return f"about {grid:.0f} x {grid:.0f}" + (f" of its {cells_of} cells" if cells_of else " cells")

    sentences.append(f"To see **fine detail** without retraining the network, use **{names[best]}**: its map holds "
                     f"detail of {detail(best)}, where {names[reference]}'s holds {detail(reference)}.")
    sanity = {k: cells[("sanity", "spearman", k)]["mean"] for k in names if ("sanity", "spearman", k) in cells}
    careless = [k for k, mean in sanity.items() if mean >= 0.5]
    passing = [mean for k, mean in sanity.items() if k not in careless]
    if careless:
        sentences.append(f"To **check that the network learned something**, do not use "
                         f"**{', '.join(names[k] for k in careless)}**: "
                         f"{'its map hardly changes' if len(careless) == 1 else 'their maps hardly change'} when the "
                         "network's learned weights are scrambled (rank correlation with the scrambled network's map "
                         f"{', '.join(f'{sanity[k]:.2f}' for k in careless)}; 1 = unchanged), so "
                         f"{'its' if len(careless) == 1 else 'their'} detail shows the photo's edges more than the "
                         "network's reasoning" + (f"; the others stay at or under {max(passing):.2f}." if passing
                                                  else "."))
    elif sanity:
        sentences.append("To **check that the network learned something**, any of these maps will do: each changed "
                         "when the network's learned weights were scrambled (rank correlation with the scrambled "
                         f"network's map at most {max(sanity.values()):.2f}; 1 = unchanged).")
    return sentences


def why_reports_differ(reports: list[dict]) -> list[str]:
    """Where two reports (network pairs) give different advice on the same method, one sentence each saying so and
    with which numbers: the randomised-weights test and the mosaics' pointing game."""
    sentences = []
    for a, b in zip(reports, reports[1:], strict=False):
        ca, cb, names = _answer_cells(a), _answer_cells(b), labels(a)
        ta, tb = report_title(a), report_title(b)
        for key in names:
            sa, sb = ca.get(("sanity", "spearman", key)), cb.get(("sanity", "spearman", key))
            if sa and sb and (sa["mean"] >= 0.5) != (sb["mean"] >= 0.5):
                passed, failed = (ta, tb) if sa["mean"] < 0.5 else (tb, ta)
                low, high = sorted((sa["mean"], sb["mean"]))
                sentences.append(f"The pairs differ on **{names[key]}**: with the {passed} networks its map changed "
                                 f"when the weights were scrambled ({low:.2f}), with the {failed} networks it "
                                 f"hardly did ({high:.2f}). The test holds for one network, not for a method "
                                 "everywhere.")
        pa = {k: ca[("mosaics", "pointing", k)]["mean"] for k in names if ("mosaics", "pointing", k) in ca}
        pb = {k: cb[("mosaics", "pointing", k)]["mean"] for k in labels(b) if ("mosaics", "pointing", k) in cb}
        common = set(pa) & set(pb)
        if common and max(common, key=pa.get) != max(common, key=pb.get) and GRAD_CAM in common:
            grids = {report_title(d): next((m["native"].get(GRAD_CAM) for m in d["meta"]["models"]
                                            if GRAD_CAM in m.get("native", {})), "?") for d in (a, b)}
            sentences.append(f"On pictures made of four photos, Grad-CAM's strongest spot fell on the right photo "
                             f"{pa['grad_cam']:.0%} of the time with the {ta} networks and {pb['grad_cam']:.0%} with "
                             f"the {tb} networks. Their Grad-CAM maps have "
                             + " and ".join(f"{grid.replace('x', ' x ')} cells" for grid in grids.values())
                             + ": a map as coarse as the mosaic itself cannot point at one of its photos.")
    return sentences


def public_command(command: str) -> str:
    """``command`` with every path that leaves the project folder (absolute, or through ``..``) cut to its last
    part: those name the producing machine's folders, which a visitor of the page must not see."""
    return " ".join(Path(word).name if Path(word).is_absolute() or ".." in Path(word).parts else word
                    for word in command.split())


def markdown(data: dict, images: bool = True) -> str:
    """report.md from the report's data; ``images`` adds the PNG figures and links to the HTML ones."""
    meta, summary, names = data["meta"], data["summary"], labels(data)
    lines = [f"# {', '.join(names.values())} measured against each other", ""]
    command = public_command(meta["command"])
    lines += [f"Produced by `{command}` on {meta['date']} in {meta['seconds']:.0f} s ({meta['device']}); "
              f"{meta['n_images']} test images, {meta['n_mosaics']} mosaics, {meta['sanity_n']} images for the "
              f"sanity check. Times: " + ", ".join(f"{k} {v:.0f} s" for k, v in meta["timings"].items()) + ".", ""]
    if meta["slow"]:
        lines += [f"{', '.join(names[m] for m in meta['slow'])} costs hundreds of forward passes per map, so it is "
                  f"scored on at most the first {meta['slow_n']} images of each set (its n says how many).", ""]
    gaps = ", ".join(f"{name} {gap:.4f}" for name, gap in meta["precision_gap"].items())
    lines += [f"Perturbed and masked images were scored in {meta['precision']} (maps are computed in float32); on the "
              f"original images p(explained class) differs from float32 by at most: {gaps}.", ""]
    for model in meta["models"]:
        if not model["trained"]:
            lines += [f"> **Warning**: {model['name']} is an untrained stand-in (random weights): these numbers say "
                      "nothing about the methods.", ""]
    lines += ["## Models", ""]
    lines += _table(["Role", "Model", "Trained", "Test accuracy (card)", "Methods (layers read)", "Native maps"], [
        [ROLE_TITLES[m["role"]], m["name"], "yes" if m["trained"] else "**no, untrained stand-in**",
         f"{m['test_accuracy']:.3f} (n={m['test_n']})" if m["test_accuracy"] is not None else "not on the card",
         "; ".join(f"{names[k]} ({', '.join(m['layers'][k])})" for k in m["methods"]),
         ", ".join(f"{names[k]} {v}" for k, v in m["native"].items())]
        for m in meta["models"]
    ])
    lines += ["", *answer(data)]
    lines += ["", "## Scores", "", meta["interval"], ""]
    for set_, title in SETS.items():
        cells = {(r["metric"], r["method"]): r for r in summary if r["set"] == set_}
        if not cells:
            continue
        lines += [f"### {title}", ""]
        lines += _table(["Metric", "Better"] + list(names.values()), [
            [METRICS[metric][0], METRICS[metric][1]] + [_cell(cells.get((metric, m))) for m in names]
            for metric in dict.fromkeys(metric for metric, _ in cells)
        ]) + [""]
    if data["differences"]:
        others = [m for m in names if m != GAP_METHOD]
        cells = {(r["set"], r["metric"], r["versus"]): r for r in data["differences"]}
        lines += ["## NoPool-GAP CAM minus the others, paired on the same maps", ""]
        lines += _table(["Set", "Metric", "Better"] + [f"CAM − {names[m]}" for m in others], [
            [set_, METRICS[metric][0], METRICS[metric][1]] + [_cell(cells.get((set_, metric, m))) for m in others]
            for set_, metric in dict.fromkeys(key[:2] for key in cells)
        ]) + [""]
    sanity = _sanity_table(summary, meta)
    if sanity:
        lines += ["## Sanity: cascading randomization", "", "Spearman rank correlation between the map of the trained "
                  "model and of the randomised clone, explaining the true class; close to 1 means the method ignores "
                  "the weights.", ""] + sanity + [""]
    lines += ["## Resolution", "", RESOLUTION_NOTE, ""]
    lines += _table(["Method", "Median effective grid", "Share of maps per grid side"], [
        [names[r["method"]], f"{r['median']:g}", ", ".join(f"{k}: {v:.0%}" for k, v in r["shares"].items())]
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
              "- Each method is scored on the model it explains ("
              + "; ".join(f"{m['name']}: {', '.join(names[k] for k in m['methods'])}" for m in meta["models"])
              + "). Mosaics (2x2 test images of four "
              "classes, 64x64 from 32x32 images) are resized to the models' input for every method; their maps are "
              "compared with the tiles at the mosaic's size."]
    if meta["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {why}: {count}" for why, count in meta["skipped"].items()]
    return "\n".join(lines) + "\n"


def report_dirs() -> list[Path]:
    """Where the dashboard looks for reports: the folders in $CAM_REPORT_DIR (separated by os.pathsep), else every
    folder of reports/ that holds a report.json, the photo pair's first."""
    if os.environ.get("CAM_REPORT_DIR"):
        return [Path(folder) for folder in os.environ["CAM_REPORT_DIR"].split(os.pathsep) if folder]
    found = sorted(folder.parent for folder in DEFAULT_OUT.parent.glob("*/report.json"))
    return sorted(found, key=lambda folder: folder.name != "photos") or [DEFAULT_OUT]


def report_title(data: dict) -> str:
    """A report's tab title in words: the title of the network pair it scored ("Photos (128 px)"), else the titles
    of its networks."""
    names = [model["name"] for model in data["meta"]["models"]]
    for model_set in MODEL_SETS.values():
        if sorted(names) == sorted((model_set.gradcam, model_set.gap)):
            return model_set.title
    return " and ".join(REGISTRY[name].title if name in REGISTRY else name for name in names)


def accuracy_by_size() -> dict[str, list[dict]]:
    """Per network pair (its title), one row per network: its test accuracy with the photo squashed into the square
    it was trained at, and at the photo's own aspect per short side, as its card records them
    (``python -m cam evaluate --size S [--squash] --update-card``). Pairs whose cards hold none are left out."""
    tables = {}
    for model_set in MODEL_SETS.values():
        rows = []
        for name in (model_set.gradcam, model_set.gap):
            path = checkpoint_path(name).with_suffix(".json")
            try:
                by_size = json.loads(path.read_text())["metrics"].get("test_by_size") or {}
            except (OSError, ValueError, KeyError, AttributeError):  # no card, or not one this page can read
                continue
            ordered = sorted(by_size.items(), key=lambda item: ("squashed" not in item[0], int(item[0].split()[0])))
            cells = {(f"{key.split()[0]} px, squashed" if "squashed" in key else f"{key} px"): f"{row['accuracy']:.1%}"
                     for key, row in ordered}
            if cells:
                rows.append({"network": REGISTRY[name].title, **cells})
        if rows:
            tables[model_set.title] = rows
    return tables


class ReportError(ValueError):
    """A report.json that cannot be read; the message is one sentence for a visitor (no server path)."""


REPORT_KEYS = ("meta", "summary")  # what every part of the page reads


def load_report(folder: Path) -> dict | None:
    """The content of ``folder/report.json``, or None when there is no report there; raises ReportError when the
    file is cut short, not JSON or lacks ``REPORT_KEYS``."""
    path = Path(folder) / "report.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(UNREADABLE_REPORT) from error
    if not isinstance(data, dict) or any(key not in data for key in REPORT_KEYS):
        raise ReportError(UNREADABLE_REPORT)
    return data


UNREADABLE_REPORT = ("This report's file is damaged or cut short, so it cannot be shown; whoever runs this server can "
                     "write it again with `python -m cam report`.")
UNSHOWABLE_REPORT = ("This report could not be shown; the server's log has the details. The other reports are not "
                     "affected.")


# ---------------------------------------------------------------------------------------------------- figures
FIGURES = {
    "curves": "Deletion and insertion curves (mean over test images)",
    "scores": "Scores per method with 95% intervals",
    "sanity": "Cascading randomization: rank correlation with the trained map",
    "resolution": "Effective resolution: share of maps per grid side",
}
PANEL_COLUMNS = 3  # of the "scores" figure


@dataclass(frozen=True)
class Series:
    """One line (with markers) or one set of bars in a panel. Bars of several series in a panel are grouped.

    ``colour`` is one colour, or one per bar; ``below``/``above`` say how far each point's error bar reaches (None:
    no error bars); ``legend`` whether the series gets a legend entry, ``group`` the key that ties a method's series
    across panels (one legend entry, toggled together in Plotly)."""

    name: str
    colour: str | list[str]
    x: list
    y: list[float]
    kind: str = "line"  # "line" or "bar"
    below: list[float] | None = None
    above: list[float] | None = None
    hover: list[str] | None = None
    legend: bool = True
    group: str = ""


@dataclass(frozen=True)
class Panel:
    """One set of axes: its titles, the y range when fixed, its series; ``integer_x`` for whole-number x ticks."""

    title: str
    x_title: str
    y_title: str
    series: list[Series]
    y_range: tuple[float, float] | None = None
    integer_x: bool = False


@dataclass(frozen=True)
class Figure:
    """One report figure: ``title`` is FIGURES[key], the panels fill a grid of ``columns`` columns row by row;
    ``compact`` for a grid of many small panels (smaller text, rows of 260 px in Plotly)."""

    key: str
    title: str
    panels: list[Panel]
    columns: int = 1
    compact: bool = False

    @property
    def rows(self) -> int:
        return max(1, -(-len(self.panels) // self.columns))


def _score_panels(data: dict) -> list[tuple[str, list[dict]]]:
    """(panel title, one summary row per method) for every set and metric except the sanity check."""
    panels: dict[tuple[str, str], list[dict]] = {}
    for row in data["summary"]:
        if row["set"] != "sanity" and row["mean"] is not None:
            panels.setdefault((row["set"], row["metric"]), []).append(row)
    return [(f"{set_}: {METRICS[metric][0]} ({METRICS[metric][1]} better)", rows)
            for (set_, metric), rows in panels.items()]


def _errors(rows: list[dict]) -> tuple[list[float], list[float]]:
    """How far each summary row's interval reaches below and above its mean."""
    return [r["mean"] - r["low"] for r in rows], [r["high"] - r["mean"] for r in rows]


def _sanity_lines(data: dict) -> dict[str, list[dict]]:
    lines = {m: [r for r in data["summary"] if r["set"] == "sanity" and r["method"] == m and r["mean"] is not None]
             for m in labels(data)}
    return {m: rows for m, rows in lines.items() if rows}


def _curves(data: dict) -> Figure:
    names, colour, curves = labels(data), colours(data), data["curves"]
    panels = [Panel(kind.capitalize(), f"share of pixels {done}", "p(explained class)", y_range=(0.0, 1.0), series=[
        Series(names[method], colour[method], [float(x) for x in curves["x"]], [float(y) for y in curve[kind]],
               legend=first, group=method)
        for method, curve in curves["methods"].items()
    ]) for first, (kind, done) in zip((True, False), (("deletion", "deleted"), ("insertion", "inserted")), strict=True)]
    return Figure("curves", FIGURES["curves"], panels, columns=2)


def _scores(data: dict) -> Figure:
    names, colour = labels(data), colours(data)
    panels = []
    for title, rows in _score_panels(data):
        below, above = _errors(rows)
        panels.append(Panel(title, "", "", [Series(
            title, [colour[r["method"]] for r in rows], [names[r["method"]] for r in rows],
            [float(r["mean"]) for r in rows], kind="bar", below=below, above=above,
            hover=[f"n={r['n']}" for r in rows], legend=False)]))
    return Figure("scores", FIGURES["scores"], panels, columns=PANEL_COLUMNS, compact=True)


def _sanity(data: dict) -> Figure:
    names, colour = labels(data), colours(data)
    series = []
    for method, rows in _sanity_lines(data).items():
        below, above = _errors(rows)
        series.append(Series(names[method], colour[method], list(range(1, len(rows) + 1)),
                             [float(r["mean"]) for r in rows], below=below, above=above,
                             hover=[f"down to {r['stage']}" for r in rows], group=method))
    panel = Panel("", "layers randomised, from the output down", "Spearman vs trained map", series,
                  y_range=(-1.05, 1.05), integer_x=True)
    return Figure("sanity", FIGURES["sanity"], [panel])


def _resolution(data: dict) -> Figure:
    """Grouped bars per grid side, sides in numeric order, a side a method never reached counting 0."""
    names, colour = labels(data), colours(data)
    sides = sorted({int(side) for row in data["resolution"] for side in row["shares"]})
    shares = [{int(side): share for side, share in row["shares"].items()} for row in data["resolution"]]
    series = [Series(names[row["method"]], colour[row["method"]], [f"{s}x{s}" for s in sides],
                     [float(share.get(s, 0.0)) for s in sides], kind="bar", group=row["method"])
              for row, share in zip(data["resolution"], shares, strict=True)]
    return Figure("resolution", FIGURES["resolution"], [Panel("", "effective grid", "share of maps", series)])


def figure_specs(data: dict) -> dict[str, Figure]:
    """The report's figures described once, as plain data (lists and floats), keyed and ordered like FIGURES;
    ``matplotlib_figures`` and ``plotly_figures`` only draw these."""
    return {"curves": _curves(data), "scores": _scores(data), "sanity": _sanity(data),
            "resolution": _resolution(data)}


def _categories(series: list[Series]) -> list:
    """The x values of a panel's bars, in order of first appearance (one slot per value, bars grouped in it)."""
    return list(dict.fromkeys(x for s in series for x in s.x))


def matplotlib_figures(data: dict) -> dict:
    """The report's figures (``figure_specs``) as matplotlib Figures (Agg backend), keyed like FIGURES, each with
    FIGURES[key] as its suptitle and one Axes per panel."""
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # after choosing the backend, so no display is needed

    figures = {}
    for key, spec in figure_specs(data).items():
        height = (2.6 if spec.compact else 3.6) * spec.rows
        width = {1: 8, 2: 10}.get(spec.columns, 4 * spec.columns)
        figure, axes = plt.subplots(spec.rows, spec.columns, figsize=(width, height), squeeze=False,
                                    layout="constrained")
        for ax, panel in zip(axes.flat, spec.panels, strict=False):
            bars = [s for s in panel.series if s.kind == "bar"]
            categories, bar_width = _categories(bars), 0.8 / max(len(bars), 1)
            for s in panel.series:
                label = s.name if s.legend else f"_{s.name}"  # a leading underscore keeps it out of the legend
                errors = [s.below, s.above] if s.below is not None else None
                if s.kind == "bar":
                    shift = (bars.index(s) - (len(bars) - 1) / 2) * bar_width
                    ax.bar([categories.index(x) + shift for x in s.x], s.y, bar_width, yerr=errors, capsize=4,
                           color=s.colour, label=label)
                elif errors is not None:
                    ax.errorbar(s.x, s.y, yerr=errors, marker="o", markersize=4, capsize=3, color=s.colour,
                                label=label)
                else:
                    ax.plot(s.x, s.y, marker="o", markersize=4, color=s.colour, label=label)
            ax.set(xlabel=panel.x_title, ylabel=panel.y_title)
            ax.set_title(panel.title, fontsize=9 if spec.compact else None)
            if panel.y_range is not None:
                ax.set_ylim(panel.y_range)
            if categories:
                ax.set_xticks(range(len(categories)), [str(c) for c in categories])
            if panel.integer_x:
                ax.xaxis.get_major_locator().set_params(integer=True)
            if spec.compact:
                ax.tick_params(axis="x", labelsize=7, labelrotation=30)
            if any(s.legend for s in panel.series):
                ax.legend()
        for ax in axes.flat[len(spec.panels):]:
            ax.remove()
        figure.suptitle(spec.title)
        figures[key] = figure
    plt.close("all")  # the Figure objects stay usable; pyplot just forgets them
    return figures


def plotly_figures(data: dict) -> dict:
    """The report's figures (``figure_specs``) as Plotly Figures, keyed like FIGURES (for HTML files and the
    dashboard), each titled FIGURES[key]; panel i's traces are on the axes x{i+1}/y{i+1} ("x"/"y" for the first)."""
    from plotly import graph_objects as go
    from plotly.subplots import make_subplots

    figures = {}
    for key, spec in figure_specs(data).items():
        figure = make_subplots(spec.rows, spec.columns, subplot_titles=[panel.title for panel in spec.panels],
                               vertical_spacing=0.5 / spec.rows if spec.rows > 1 else None)
        for index, panel in enumerate(spec.panels):
            row, column = index // spec.columns + 1, index % spec.columns + 1
            for s in panel.series:
                common = {"x": s.x, "y": s.y, "name": s.name, "showlegend": s.legend, "hovertext": s.hover,
                          "legendgroup": s.group or None}
                if s.below is not None:
                    common["error_y"] = {"type": "data", "symmetric": False, "array": s.above, "arrayminus": s.below}
                trace = (go.Bar(marker_color=s.colour, **common) if s.kind == "bar"
                         else go.Scatter(mode="lines+markers", line={"color": s.colour}, **common))
                figure.add_trace(trace, row, column)
            figure.update_xaxes(title_text=panel.x_title, row=row, col=column)
            figure.update_yaxes(title_text=panel.y_title, row=row, col=column)
            if panel.y_range is not None:
                figure.update_yaxes(range=list(panel.y_range), row=row, col=column)
            if panel.integer_x:
                figure.update_xaxes(dtick=1, row=row, col=column)
        figure.update_layout(title=spec.title, barmode="group")
        if spec.compact:
            figure.update_layout(height=260 * spec.rows)
            figure.update_annotations(font_size=11)
        figures[key] = figure
    return figures
