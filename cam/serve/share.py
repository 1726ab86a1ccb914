"""Sharing a comparison: the page's settings as URL query parameters (encoded, and decoded with validation, so that
a copied link reproduces the view), and the comparison as one self-contained web page (images embedded as data
URIs) that opens offline and can be emailed. Nothing here knows about Streamlit."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from cam.core.images import DETAIL_LEVELS, resize
from cam.explain import render
from cam.explain.pipeline import ImageResult, Panel, model_name, side_by_side
from cam.serve.gallery import GalleryError, split_reference

CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _'-]{0,59}$")
EXPORT_SIDE = 1600  # the web page's pictures are at most this many pixels on their long side (emailable)


@dataclass(frozen=True)
class View:
    """What a link carries: None (or empty) means 'the page's default'."""

    model_set: str | None = None
    class_name: str | None = None  # None: the Grad-CAM model's top prediction
    methods: tuple[str, ...] = ()  # methods added to the study's three
    colormap: str | None = None
    opacity: float | None = None
    raw: bool = False
    image: str | None = None  # a gallery picture (cam.serve.gallery.reference); uploads cannot travel in a link
    zoom: tuple[float, float, float, float] | None = None  # x0, x1, y0, y1 in image pixels (y0 > y1: rows go down)
    uploaded: bool = False  # made while an uploaded photo was shown: the page opening it says the photo is not in it
    detail: str | None = None  # a name of cam.core.images.DETAIL_LEVELS; None: standard


def encode(view: View) -> dict[str, str]:
    """The query parameters of ``view``, only those that differ from the defaults."""
    params = {
        "set": view.model_set, "class": view.class_name, "methods": ",".join(view.methods) or None,
        "colours": view.colormap, "opacity": None if view.opacity is None else f"{view.opacity:g}",
        "raw": "1" if view.raw else None, "image": view.image,
        "zoom": None if view.zoom is None else ",".join(f"{value:.0f}" for value in view.zoom),
        "upload": "1" if view.uploaded else None, "detail": view.detail,
    }
    return {key: value for key, value in params.items() if value}


def decode(
    params: Mapping[str, str], model_sets: Iterable[str], methods: Iterable[str], colormaps: Iterable[str],
    max_methods: int,
) -> tuple[View, list[str]]:
    """The view a link asks for, keeping only what is valid (known model set, methods, colours and detail level,
    opacity in [0, 1], a plain class name, a well-formed gallery picture name), and one plain sentence per value
    left out."""
    problems, known_methods = [], list(methods)

    def pick(key: str, allowed: Iterable[str], what: str) -> str | None:
        value = params.get(key)
        if value is None or value in allowed:
            return value
        problems.append(f"The link asks for {what} this page does not have; the default is shown.")
        return None

    wanted = [key for key in (params.get("methods") or "").split(",") if key]
    chosen = tuple(dict.fromkeys(key for key in wanted if key in known_methods))[:max_methods]
    if len(chosen) < len(wanted):
        problems.append("The link asks for methods this page does not have or too many; the others are shown.")
    class_name = params.get("class")
    if class_name is not None and not CLASS_NAME.match(class_name):
        problems.append("The link asks for a class this page does not know; the top prediction is shown.")
        class_name = None
    opacity = None
    if params.get("opacity") is not None:
        try:
            opacity = float(params["opacity"])
        except ValueError:
            opacity = None
        if opacity is None or not 0.0 <= opacity <= 1.0:
            problems.append("The link's opacity is not between 0 and 1; the default is shown.")
            opacity = None
    image = params.get("image")
    if image is not None:
        try:
            split_reference(image)
        except GalleryError:
            problems.append("The link's picture is not in this page's gallery; the example is shown.")
            image = None
    zoom = zoom_of(params.get("zoom"))
    if params.get("zoom") is not None and zoom is None:
        problems.append("The link's zoom is not a box on the picture; the whole picture is shown.")
    view = View(pick("set", model_sets, "a model pair"), class_name, chosen, pick("colours", colormaps, "colours"),
                opacity, params.get("raw") == "1", image, zoom, params.get("upload") == "1",
                pick("detail", DETAIL_LEVELS, "a detail level"))
    return view, problems


def zoom_of(text: str | None) -> tuple[float, float, float, float] | None:
    """The zoom box "x0,x1,y0,y1" of a link (pixels, x0 < x1, y0 > y1, none negative), or None when absent or
    malformed."""
    try:
        x0, x1, y0, y1 = (float(value) for value in (text or "").split(","))
    except ValueError:
        return None
    finite = all(np.isfinite(value) and value >= -1 for value in (x0, x1, y0, y1))
    return (x0, x1, y0, y1) if finite and x0 < x1 and y1 < y0 else None


def data_uri(image: np.ndarray, max_side: int | None = None) -> str:
    """The image as a JPEG data URI, shrunk to ``max_side`` pixels on its long side when larger: a tenth of a PNG's
    bytes and faster to decode, for the dashboard's figure (made on every rerun) and the web page. Downloads of the
    panels themselves stay lossless PNG."""
    if max_side and max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        image = resize(image, (round(image.shape[0] * scale), round(image.shape[1] * scale)))
    return "data:image/jpeg;base64," + base64.b64encode(render.to_jpeg(image)).decode("ascii")


def _words(text: str) -> str:
    """Escaped text with **strong** and *emphasis* (the captions' Markdown) as <strong> and <em>."""
    strong = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", html.escape(text))
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", strong)


STYLE = """body{font-family:sans-serif;color:#1d2433;max-width:1400px;margin:1.5em auto;padding:0 1em;line-height:1.4}
.panels{display:flex;flex-wrap:wrap;gap:1em}.panel{flex:1 1 300px;max-width:32%}.panel img,.photo img{width:100%}
.photo{max-width:480px}.note{color:#8a4b00}.legend{color:#555;font-size:.9em}table{border-collapse:collapse}
td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #ddd}.strip{height:12px;width:100%}
.verdict{font-size:1.2em}"""


def comparison_page(
    title: str, photo: np.ndarray, panels: list[Panel], predictions: Mapping[str, list[tuple[str, float]]],
    reading: Iterable[tuple[str, str]], strip: np.ndarray | None = None, verdict: str = "",
) -> str:
    """One self-contained HTML page: the verdict (``cam.explain.verdict``'s sentence, Markdown), the photo, the panels
    with their plain captions, notes and legends, each model's top predictions (``predictions``: model name -> (class,
    probability)), and how to read each method (``reading``: label -> sentence). ``strip``: the heat map colour
    strip that the legends refer to."""
    legend_strip = f'<img class="strip" alt="colour strip" src="{data_uri(strip)}">' if strip is not None else ""
    blocks = []
    for panel in panels:
        notes = "".join(f'<p class="note">{_words(text)}</p>' for text in (panel.empty, panel.note) if text)
        strip_here = legend_strip if panel.native.ndim == 2 else ""  # heat maps, not guided pictures
        blocks.append(
            f'<figure class="panel"><figcaption><strong>{html.escape(panel.title)}</strong></figcaption>'
            f'<img alt="{html.escape(panel.title)}" src="{data_uri(panel.image, EXPORT_SIDE)}">'
            f"<p>{_words(panel.caption)}</p>{notes}{strip_here}<p class=\"legend\">{_words(panel.legend)}</p></figure>"
        )
    tables = "".join(
        f"<div><h3>{html.escape(model)}</h3><table><tr><th>class</th><th>probability</th></tr>"
        + "".join(f"<tr><td>{html.escape(name)}</td><td>{p:.0%}</td></tr>" for name, p in rows)
        + "</table></div>"
        for model, rows in predictions.items()
    )
    how = "".join(f"<li><strong>{html.escape(label)}</strong>: {_words(text)}</li>" for label, text in reading)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>Where does the network look?</h1><h2>{html.escape(title)}</h2>"
        + (f'<p class="verdict">{_words(verdict)}</p>' if verdict else "")
        + f'<div class="photo"><img alt="the photo" src="{data_uri(photo, EXPORT_SIDE)}"></div>'
        f'<h2>The maps</h2><div class="panels">{"".join(blocks)}</div>'
        f'<h2>What the networks think it is</h2><div class="panels">{tables}</div>'
        f"<h2>How to read each method</h2><ul>{how}</ul></body></html>"
    )


def comparison_files(
    title: str, result: ImageResult, panels: list[Panel], colormap: str, verdict: str = ""
) -> dict[str, bytes]:
    """Every download of a view: each panel's PNG at full resolution (by method key), all of them ``side_by_side``
    and the ``comparison_page`` ("page"), with each model's top 5 and how to read each method."""
    files = {panel.key: render.to_png(panel.image, compress_level=1) for panel in panels}
    files["side_by_side"] = render.to_png(side_by_side(panels), compress_level=1)
    predictions = {model_name(result.model(role)): result.top_predictions(role, 5) for role in result.roles}
    page = comparison_page(title, result.image, panels, predictions,
                           [(method.label, method.summary) for method in result.methods],
                           render.colour_bar(colormap, 512, 16), verdict)
    files["page"] = page.encode("utf-8")
    return files
