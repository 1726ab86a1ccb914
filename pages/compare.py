"""The first page, "Compare the maps": give a photo, see where Grad-CAM, Guided Grad-CAM (on VGG16) and NoPool-GAP
CAM say the network looks, side by side at the photo's full resolution, plus any other method of
``cam.explain.registry`` the user adds.

Layout and widgets only: the networks, maps and caches come from ``cam.serve.model_service``, the panels and captions
from ``cam.explain.pipeline``, the figure from ``cam.serve.panels_figure``, the pictures a visitor may choose from
``cam.serve.gallery``, links and downloads from ``cam.serve.share``. Server paths and exception texts go to the
server's log, never to the page.
"""

from __future__ import annotations

import sys

import streamlit as st

# A server's first run imports TensorFlow (about 10 s on 2 cores) before anything could be drawn: the page says
# at once that it is starting, before those imports (hence the imports below this; ruff's E402 is off here).
STARTING = ("Starting up: loading the two networks and preparing their first look at a photo. This happens once "
            "after the server starts and takes about 20 to 50 seconds; later photos take a second or two.")
STARTING_ICON = ":material/hourglass_top:"
STARTUP_NOTICE = st.empty()
if "tensorflow" not in sys.modules:
    STARTUP_NOTICE.info(STARTING, icon=STARTING_ICON)

import functools
import hashlib
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from streamlit.delta_generator import DeltaGenerator
from streamlit.logger import get_logger

from cam.core.catalog import FALLBACK, GRAD_CAM, MODEL_SETS, REGISTRY, STUDY, ModelSet, Role, default_set
from cam.core.device import describe_device
from cam.core.images import DECODE_MAX_SIDE, Decoded, ImageError, crop, detail_sizes
from cam.core.names import markdown_literal, shorten
from cam.explain import render
from cam.explain.methods import feature_layers
from cam.explain.pipeline import ImageResult, Panel, model_name, photo_view, trained_size, with_fallback
from cam.explain.registry import METHODS, Method, selected
from cam.explain.verdict import KNOWN, Verdict
from cam.models.checkpoints import LoadedModel, accuracy_on_photos
from cam.serve import gallery, library_patches, model_service, share
from cam.serve.examples import EXAMPLES
from cam.serve.model_service import Served, serve
from cam.serve.panels_figure import PANELS_PER_ROW, colour_strip, panels_figure

log = get_logger(__name__)
IMAGENET_MODEL = "vgg16_imagenet"  # offered as the Grad-CAM model of every set (downloaded on first use)
TOP = "Top prediction"
FIRST_PICTURE = gallery.reference(gallery.BUILT_IN, "", next(iter(EXAMPLES)))  # a first visit's worked example
DEFAULT_OPACITY = 0.5
# Every method may be added ("Select all" must select all): at most nine panels, three rows of three, each as wide
# as one of the first three.
MAX_EXTRA_METHODS = len(METHODS) - len(STUDY)
VERDICT_ICONS = {"agree": ":material/check_circle:", "disagree": ":material/compare_arrows:",
                 "not sure": ":material/help:"}
DEFAULT_DETAIL = "standard"
KEPT_DOWNLOADS = "kept_downloads"  # the hidden container of keep_offered_downloads
PAGE_STYLE = (
    "<style>[data-testid='stMainBlockContainer']{padding-top:2.2rem;padding-bottom:3rem}"  # results above the fold
    + library_patches.no_fade_on_rerun()
    + f".st-key-{KEPT_DOWNLOADS}{{display:none}}</style>"  # see keep_offered_downloads
)


@dataclass(frozen=True)
class Choice:
    """The image being explained: raw bytes (upload) or a file found by ``cam.serve.gallery`` (never shown)."""

    source: bytes | str
    label: str  # shown above the results
    stem: str  # start of the download file names
    key: str  # identifies the image in caches and the zoom: a digest of an upload, or the gallery name
    reference: str | None = None  # the gallery name that links carry; None for uploads


# ------------------------------------------------------------------------------------------------ inputs
def choose(choice: Choice) -> None:
    """Make ``choice`` the image the page explains."""
    st.session_state["image"] = choice


def gallery_choice(name: str) -> Choice:
    """The Choice of a gallery picture; raises GalleryError when ``name`` is not an allowed picture."""
    path = gallery.resolve(name)
    return Choice(str(path), gallery.describe(name), Path(name).stem, name, name)


def use_upload() -> None:
    """The file uploader's callback: a newly uploaded file becomes the image, explained for its top prediction;
    removing it goes back to the picture the gallery shows."""
    upload = st.session_state["upload"]
    if upload is not None:
        data = upload.getvalue()
        choose(Choice(data, f"Uploaded photo “{shorten(upload.name)}”", shorten(Path(upload.name).stem),
                      "upload:" + hashlib.sha256(data).hexdigest()))
        st.session_state["class"] = TOP
    else:
        pick_from_gallery(gallery.collections())


def pick_from_gallery(found: dict[str, gallery.Collection], shuffle: bool = False) -> None:
    """The gallery widgets' callback: the picture they show (a random one with ``shuffle``) becomes the image."""
    collection = found[st.session_state.get("collection", gallery.BUILT_IN)]
    folders = collection.folders()
    folder = st.session_state.get(f"folder:{collection.name}", folders[0] if folders else "")
    pictures = collection.pictures(folder)
    if not pictures:
        return
    picture = st.session_state.get(f"picture:{collection.name}:{folder}", pictures[0])
    if shuffle:
        picture = st.session_state[f"picture:{collection.name}:{folder}"] = random.choice(pictures)
    try:
        choose(gallery_choice(gallery.reference(collection.name, folder, picture)))
    except gallery.GalleryError:  # removed, or turned into a link leading out, since the list was drawn
        log.warning("the gallery picture %r could not be opened", gallery.reference(collection.name, folder, picture))
        st.session_state["gallery_problem"] = ("That picture is no longer in the gallery (it may have been moved or "
                                               "removed); the photo shown is the previous one. Choose another.")
        return
    st.session_state["class"] = TOP  # a new photo: its own top prediction, not the last photo's class


def show_picture_in_gallery(name: str) -> None:
    """Set the gallery widgets to the picture ``name`` (from a link)."""
    collection, folder, picture = gallery.split_reference(name)
    st.session_state["collection"] = collection
    st.session_state[f"folder:{collection}"] = folder
    st.session_state[f"picture:{collection}:{folder}"] = picture


def picture_picker() -> None:
    """The compact image choice: a collection, a folder of a dataset, a picture, and an upload."""
    found = gallery.collections()
    if st.session_state.get("collection") not in found:
        st.session_state["collection"] = gallery.BUILT_IN
    names = list(found)
    if len(names) > 1:
        name = st.selectbox(
            "Collection", names, key="collection", on_change=pick_from_gallery, args=(found,),
            format_func=lambda n: "Built-in examples" if n == gallery.BUILT_IN else f"Dataset “{shorten(n)}”",
        )
    else:
        name = names[0]
    collection, folder = found[name], ""
    if not collection.built_in:
        folders = collection.folders()
        folder = st.selectbox("Folder (split/class)", folders, key=f"folder:{name}", on_change=pick_from_gallery,
                              args=(found,), format_func=shorten)
    pictures = collection.pictures(folder)
    if pictures:
        st.selectbox(
            "Picture", pictures, key=f"picture:{name}:{folder}", on_change=pick_from_gallery, args=(found,),
            format_func=(lambda file: EXAMPLES.get(file, file)) if collection.built_in else shorten,
        )
    else:
        st.caption("This folder has no pictures.")
    shown = st.session_state.get("image")
    if shown is not None and shown.reference is None:  # the picture box above is not what the page shows
        st.caption(f":material/upload: Shown now: {shown.label[0].lower()}{shown.label[1:]}. Remove it below to go "
                   "back to the picture above.")
    if not collection.built_in and pictures:
        st.button("Random picture", icon=":material/casino:", on_click=pick_from_gallery, args=(found, True))
    st.file_uploader(
        "Or upload your own photo", key="upload", on_change=use_upload,
        help=f"JPEG, PNG, WebP, BMP, GIF (the first frame) or TIFF, up to 50 MB and 50 megapixels; a larger photo "
             f"is read at {DECODE_MAX_SIDE} pixels on its long side.",
    )


def slow_map(method: Method, served: Served, layer: str | None, classes: np.ndarray,
             x: np.ndarray) -> tuple[np.ndarray, float]:
    """The maps of one slow method on the model input ``x`` and their seconds, with a progress bar and a cancel
    button while they last (``model_service.explained`` calls it when no session has them yet)."""
    shown = st.empty()
    with shown.container():
        progress = st.progress(0.0, text=progress_text(method, 0, 0))
        st.button(f"Cancel {method.label}", key=f"cancel:{method.key}", on_click=drop_method, args=(method.key,),
                  icon=":material/cancel:", help=f"Removes the {method.label} panel; the other panels stay.")
    started = time.perf_counter()
    # Each progress call is also where a click on "Cancel" (a rerun) stops the computation.
    maps = model_service.slow_worker().compute(
        method.key, served.name, served.loaded, layer, classes, x,
        lambda done, total: progress.progress(done / total if total else 0.0, text=progress_text(method, done, total)),
    )
    shown.empty()
    return maps, time.perf_counter() - started


def progress_text(method: Method, done: int, total: int) -> str:
    if not total:
        return f"{method.label}: getting ready (it waits while another visitor's is running)…"
    return f"{method.label}: {done} of {total} passes through the network…"


def drop_method(key: str) -> None:
    """The cancel button's callback: remove method ``key``'s panel (the rerun this click makes stops it)."""
    st.session_state["extra_methods"] = [k for k in st.session_state.get("extra_methods", []) if k != key]


# ------------------------------------------------------------------------------------------------ links
def apply_link() -> list[str]:
    """On a session's first run, set the widgets and the image from the URL's query parameters; returns one plain
    sentence per value the link asked for that this page does not have."""
    view, problems = share.decode(st.query_params.to_dict(), MODEL_SETS, [k for k in METHODS if k not in STUDY],
                                  render.COLORMAPS, MAX_EXTRA_METHODS)
    state = st.session_state
    for key, value in (("model_set", view.model_set), ("class", view.class_name), ("colormap", view.colormap),
                       ("opacity", view.opacity), ("detail", view.detail)):
        if value is not None:
            state[key] = value
    state["extra_methods"], state["raw"] = list(view.methods), view.raw
    if view.uploaded:
        problems.append("This link was made while its sender looked at a photo of their own, which a link cannot "
                        "carry, so an example is shown; ask them for the comparison as a web page (“Download this "
                        "comparison as a web page” under the pictures).")
    picture = view.image or FIRST_PICTURE
    try:
        choose(gallery_choice(picture))
    except gallery.GalleryError:
        log.warning("a link asked for the picture %r, which is not in the gallery", picture)
        problems.append("The link's picture is not in this page's gallery; the example is shown.")
        picture = FIRST_PICTURE
        choose(gallery_choice(picture))
    show_picture_in_gallery(picture)
    if view.zoom is not None and view.image == picture:
        x0, x1, y0, y1 = view.zoom
        state.setdefault("zoom", {})[picture] = {"x": [x0, x1], "y": [y0, y1]}
    return problems


def write_link(view: share.View) -> None:
    """Keep the URL's query parameters equal to ``view``, so that a copied link reproduces it."""
    wanted = share.encode(view)
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)


# ------------------------------------------------------------------------------------------------ sidebar
def status(served: Served) -> str:
    """One line on a model: trained (with its test accuracy), untrained, or unavailable and why."""
    spec = REGISTRY[served.name]
    if served.loaded is None:
        return f":material/error: **{spec.title}**: unavailable, {served.problem}."
    if not served.loaded.trained:
        return f":material/warning: **{spec.title}**: untrained (random weights)."
    accuracy = served.loaded.card["metrics"].get("test", {}).get("accuracy")
    score = f", right on {accuracy:.0%} of its test images" if accuracy is not None else ""
    return f":material/check_circle: **{spec.title}**: trained{score}."


def pick_class(slot: DeltaGenerator, loaded: LoadedModel, top: ImageResult | None) -> str:
    """The class selectbox: all of a small model's classes; for ImageNet, our four names plus the image's top 5."""
    groups = loaded.card.get("class_groups")
    best = [name for name, _ in top.top_predictions(Role.GRADCAM, 5)] if top and top.gradcam_model else []
    options = [TOP, *loaded.classes] if groups is None else list(dict.fromkeys([TOP, *groups, *best]))
    if st.session_state.get("class") not in options:
        st.session_state["class"] = TOP
    return slot.selectbox(
        "Class", options, key="class",
        help="The class every map explains; by default the top prediction of the first network.",
    )


def pick_detail(trained_size: int) -> tuple[str, int]:
    """The Detail control: how many pixels high the networks look at the photo, with what it costs in words."""
    sizes = detail_sizes(trained_size)
    if st.session_state.get("detail") not in sizes:
        st.session_state["detail"] = DEFAULT_DETAIL
    detail = st.select_slider(
        "Detail", list(sizes), key="detail",
        help="Finer detail shows the networks a larger copy of the photo: sharper maps, more time. The networks "
        f"were trained at the standard detail ({trained_size} pixels).",
    )
    size = sizes[detail]
    ratio = (size / trained_size) ** 2
    cost = f"about {ratio:.1f} times the time of standard" if size != trained_size else "as they were trained"
    st.caption(f"The networks look at a copy of the photo {size} pixels on its short side ({cost}).")
    return detail, size


def size_warning(models: list[LoadedModel], size: int) -> str:
    """One sentence when networks are less accurate at input size ``size`` than at their own, from their cards'
    accuracy per size (``python -m cam evaluate --size``); empty when none is, or the cards do not say."""
    worse = []
    for loaded in models:
        by_size = loaded.card["metrics"].get("test_by_size", {})
        here, own = by_size.get(str(size), {}).get("accuracy"), by_size.get(str(loaded.input_size), {}).get("accuracy")
        if size != loaded.input_size and here is not None and own is not None and here < own - 0.01:
            worse.append(f"{model_name(loaded)} on {here:.0%} of its test photos ({own:.0%} at the standard detail)")
    if not worse:
        return ""
    trained = " and ".join(dict.fromkeys(f"{loaded.input_size}-pixel" for loaded in models))
    return f"Trained on {trained} photos, the networks are right less often at this detail: {', '.join(worse)}."


def explain_class(name: str) -> None:
    """The disagreement button's callback: explain ``name`` instead."""
    st.session_state["class"] = name


def add_method(key: str) -> None:
    """The empty-map button's callback: add the panel of method ``key`` (dropping the oldest extra one when full)."""
    st.session_state["extra_methods"] = [*st.session_state.get("extra_methods", []), key][-MAX_EXTRA_METHODS:]


# ------------------------------------------------------------------------------------------------ results
def keep_zoom(image_key: str) -> None:
    """The figure's selection callback: a box dragged over any panel becomes the zoom of this image (all panels);
    a cleared selection zooms out."""
    boxes = st.session_state["panels"].selection.box
    zooms = st.session_state.setdefault("zoom", {})
    if boxes:
        x, y = sorted(boxes[0]["x"]), sorted(boxes[0]["y"])
        if x[1] - x[0] >= 1 and y[1] - y[0] >= 1:
            zooms[image_key] = {"x": x, "y": [y[1], y[0]]}  # images run downwards
    else:
        zooms.pop(image_key, None)


def zoom_out(image_key: str) -> None:
    st.session_state.setdefault("zoom", {}).pop(image_key, None)


def panel_texts(panels: list[Panel], result: ImageResult, colormap: str) -> list[DeltaGenerator]:
    """Under each panel: its caption in words, what is wrong with it if anything, its legend, and a slot for its
    download (filled once the files are made, so that the words come first)."""
    slots = []
    for start in range(0, len(panels), PANELS_PER_ROW):
        for column, panel in zip(st.columns(PANELS_PER_ROW), panels[start : start + PANELS_PER_ROW], strict=False):
            with column:
                st.markdown(f"**{panel.caption}**")
                if panel.empty:
                    st.markdown(f":orange[:material/block: {panel.empty}]")
                if panel.note:
                    st.markdown(f":orange[:material/swap_horiz: {panel.note}]")
                if panel.native.ndim == 2:
                    st.markdown(colour_strip(colormap), unsafe_allow_html=True)
                st.caption(panel.legend)
                slots.append(st.empty())
    for role in result.roles:  # one button per model that would rather explain another class
        other = result.disagreement(role)
        if other:
            name = other[1]
            st.button(f"Explain {name} instead (what {model_name(result.model(role))} sees)", key=f"switch:{role}",
                      on_click=explain_class, args=(name,), icon=":material/swap_horiz:")
    shown = {panel.key for panel in panels}
    if any(panel.empty for panel in panels if panel.key == GRAD_CAM) and FALLBACK not in shown:
        # Grad-CAM averages each channel's gradient first, so opposite signs can cancel to an empty map; Layer-CAM
        # weighs every cell by its own positive gradient and is rarely empty on the same layer.
        st.button(f"Add {METHODS[FALLBACK].label}: a close relative of Grad-CAM that is rarely empty",
                  key="add:fallback", on_click=add_method, args=(FALLBACK,), icon=":material/add:")
    return slots


def prepared_files(signature: tuple, panels: list[Panel], result: ImageResult, choice: Choice,
                   colormap: str, verdict: Verdict | None = None) -> dict[str, bytes]:
    """Every download's bytes (``share.comparison_files``), made now (a download clicked during a rerun must find
    its file) and kept in the session until the view changes."""
    kept = st.session_state.get("downloads")
    if kept and kept[0] == signature:
        return kept[1]
    files = share.comparison_files(choice.label, result, panels, colormap, verdict.sentence if verdict else "")
    st.session_state["downloads"] = (signature, files)
    return files


def downloads(files: dict[str, bytes], panels: list[Panel], slots: list[DeltaGenerator], choice: Choice,
              size: tuple[int, int]) -> None:
    """The download buttons: each panel's PNG in its slot, then the comparison as a web page and all side by side.
    What they offer is kept in the session for ``keep_offered_downloads`` as soon as each button is drawn: a run
    stopped halfway by the next upload leaves its new buttons on screen beside the previous run's."""
    offered, previous = [], st.session_state.get("offered", [])

    def offer(slot: DeltaGenerator, label: str, data: bytes, name: str, mime: str, **options) -> None:
        slot.download_button(label, data, name, mime, on_click="ignore", icon=":material/download:", **options)
        offered.append((data, name, mime))
        st.session_state["offered"] = offered + [kept for kept in previous if kept not in offered]

    for slot, panel in zip(slots, panels, strict=True):
        offer(slot, f"{panel.title} (PNG)", files[panel.key], f"{choice.stem}_{panel.key}.png", "image/png",
              key=f"download:{panel.key}",
              help=f"This panel at the photo's full resolution, {size[1]}x{size[0]} pixels.")
    page, together, _ = st.columns([3, 2, 3])
    offer(page, "Download this comparison as a web page", files["page"], f"{choice.stem}_comparison.html", "text/html",
          key="download:page",
          help="One file with the photo, the maps, their captions and both networks' answers; opens offline.")
    offer(together, "All side by side (PNG)", files["side_by_side"], f"{choice.stem}_side_by_side.png", "image/png",
          key="download:all")
    st.session_state["offered"] = offered


def keep_offered_downloads() -> None:
    """Offer the previous run's files again, in a hidden container, at the start of every run.

    While a new run computes, the page still shows the previous run's download buttons, and Streamlit deletes a
    file once two runs have finished without offering it; in a rapid series of uploads the uploader's own short
    reruns finish meanwhile, and a click then got a 404 (28 of 30 in issue 20). Streamlit names a file by its bytes,
    name and type, so offering the same ones here keeps every visible button's file until new files replace them."""
    with st.container(key=KEPT_DOWNLOADS):
        for index, (data, name, mime) in enumerate(st.session_state.get("offered", [])):
            st.download_button(name, data, name, mime, key=f"kept:{index}", on_click="ignore")


def details(result: ImageResult, scale: float, timings: dict[str, float], decoded: Decoded,
            verdict: Verdict | None = None) -> None:
    """Secondary content: how to read the methods, the networks' answers and the technical details."""
    st.markdown("**What the networks think it is**")
    for column, role in zip(st.columns(2), result.roles, strict=False):
        with column:
            st.caption(REGISTRY[result.model(role).card["name"]].title)
            st.dataframe(
                [{"class": name, "probability": p} for name, p in result.top_predictions(role, 5)],
                hide_index=True,
                column_config={"probability": st.column_config.ProgressColumn(format="percent")},
            )
    with st.expander("How to read these pictures"):
        st.markdown("\n".join(f"- **{method.label}**: {method.summary}" for method in result.methods))
        st.markdown("Drag a box over any panel to zoom into that part of the photo; all panels follow, and the zoom "
                    "stays while you change colours, opacity or methods. **Zoom out** goes back.")
    with st.expander("Technical details"):
        height, width = result.image.shape[:2]
        seconds = result.explanation.seconds
        lines = [
            f"- `{method.key}` explains `{result.model(method.role).card['name']}`, reads "
            f"{', '.join(f'`{name}`' for name in method.reads(result.model(method.role).model, layer_of(result)))}"
            f"; native map {native_shape(result, method.key)}; map {seconds[method.key] * 1000:.0f} ms "
            f"({result.model(method.role).card['name']} pass)"
            for method in result.methods
        ]
        for role in result.roles:
            shape = result.input_shape(role)
            how = ("its own aspect ratio, long side rounded to a multiple of 32" if result.model(role).flexible
                   else "the square it takes")
            lines.append(f"- `{result.model(role).card['name']}` saw the photo as {shape[1]}x{shape[0]} pixels "
                         f"({how})")
        lines.append("- " + ", ".join(f"{step} {ms:.0f} ms" for step, ms in timings.items()))
        if decoded.reduced:
            read = decoded.pixels.shape
            lines.append(f"- The photo is {decoded.original[1]}x{decoded.original[0]} pixels; it was read reduced to "
                         f"{read[1]}x{read[0]} (at most {DECODE_MAX_SIDE} on its long side), which is more than the "
                         "networks see and all the page shows. The maps and downloads have this size.")
        if scale > 1:
            lines.append(f"- The page shows a {round(width / scale)}x{round(height / scale)} copy of this "
                         f"{width}x{height} image; the downloads are full resolution.")
        lines.append(f"- Computing on {describe_device()}")
        if verdict is not None:
            lines.append(f"- The verdict: {verdict.detail}")
        st.markdown("\n".join(lines))


def layer_of(result: ImageResult) -> str | None:
    return result.gradcam_model.card["gradcam_layer"] if result.gradcam_model else None


def native_shape(result: ImageResult, key: str) -> str:
    return "x".join(str(n) for n in result.explanation.maps[key][0].shape)


def zoom_in_link(zoom: dict | None) -> tuple[float, float, float, float] | None:
    """The zoom as a link carries it (x0, x1, y0, y1), or None."""
    return None if not zoom else (*zoom["x"], *zoom["y"])


@st.cache_data(show_spinner=False)
def pair_caption(name: str) -> str:
    """What a network pair is, in words, with its accuracy on our test photos, under its name in the sidebar."""
    shares = accuracy_on_photos(MODEL_SETS[name])
    right = f"right on our test photos: {shares}" if shares else ""
    if name == "cifar":  # good on its thumbnails, not on photos: its Grad-CAM map is 2x2 cells
        return ("Trained on 32-pixel thumbnails: less accurate on photos" + (f" ({right})" if right else "")
                + ", and its Grad-CAM map has only 2x2 cells.")
    return right.capitalize() + "." if right else ""


# ------------------------------------------------------------------------------------------------ page
@dataclass
class Settings:
    """What the sidebar chose: methods, look, networks (each may have failed to load), layer and detail."""

    extra: list[str]
    colormap: str
    opacity: float
    raw: bool
    set_name: str
    served: dict[str, Served]
    gradcam_name: str | None
    cam_name: str | None  # None when the set's GAP model did not load
    layer: str | None
    detail: str
    size: int
    class_slot: DeltaGenerator

    @property
    def methods(self) -> tuple[str, ...]:
        return (*STUDY, *self.extra)

    @property
    def model_set(self) -> ModelSet:
        return MODEL_SETS[self.set_name]

    @property
    def gradcam(self) -> LoadedModel | None:
        return self.served[self.gradcam_name].loaded if self.gradcam_name else None

    @property
    def cam_model(self) -> LoadedModel | None:
        return self.served[self.cam_name].loaded if self.cam_name else None


def sidebar() -> Settings:
    """The sidebar, top to bottom: the photo, what to explain, the look, the networks."""
    with st.sidebar:
        st.header("Photo")
        picture_picker()
        st.header("What to explain")
        class_slot = st.container()
        extra = st.multiselect(
            "More methods", [key for key in METHODS if key not in STUDY], format_func=lambda key: METHODS[key].label,
            key="extra_methods", max_selections=MAX_EXTRA_METHODS,
            help="Each adds a panel next to the three above, explaining the same class. Score-CAM takes seconds.",
        )
        st.header("Look")
        colormap = st.selectbox("Colours", render.COLORMAPS, key="colormap",
                                help="viridis and cividis stay readable with colour blindness.")
        st.session_state.setdefault("opacity", DEFAULT_OPACITY)  # defaults as state: a link may have set them
        opacity = st.slider("Heat map opacity", 0.0, 1.0, step=0.05, key="opacity")
        raw = st.toggle("Maps without the photo", key="raw")
        st.header("Networks")
        set_name, served, gradcam_name = pick_networks()
        cam_name = MODEL_SETS[set_name].gap
        gradcam = served[gradcam_name].loaded if gradcam_name else None
        layer = pick_layer(gradcam_name, gradcam)
        pair = (gradcam, served[cam_name].loaded)
        detail, size = pick_detail(trained_size(*pair)) if any(pair) else (DEFAULT_DETAIL, 0)
    return Settings(extra, colormap, opacity, raw, set_name, served, gradcam_name,
                    cam_name if served[cam_name].loaded else None, layer, detail, size, class_slot)


def pick_networks() -> tuple[str, dict[str, Served], str | None]:
    """The network pair and the Grad-CAM network, each with its status; returns the pair's name, every network it
    offers as served, and the Grad-CAM network's name (None when none loaded)."""
    st.session_state.setdefault("model_set", default_set().name)
    set_name = st.radio(
        "Network pair", list(MODEL_SETS), key="model_set",
        format_func=lambda name: MODEL_SETS[name].title, captions=[pair_caption(name) for name in MODEL_SETS],
        help="Photos: networks that see 128x128 pixels. CIFAR: networks that see 32x32 thumbnails.",
    )
    gradcam_models, cam_name = (MODEL_SETS[set_name].gradcam, IMAGENET_MODEL), MODEL_SETS[set_name].gap
    with st.spinner("Loading the networks (once per server)…"):
        served = {name: serve(name) for name in (*gradcam_models, cam_name)}
    available = [name for name in gradcam_models if served[name].loaded is not None]
    gradcam_name = st.radio(
        "Grad-CAM explains", available, format_func=lambda name: REGISTRY[name].title, key="gradcam_model"
    ) if available else None
    for name in (gradcam_name, cam_name):
        if name is not None:
            st.caption(status(served[name]))
    if IMAGENET_MODEL not in available:
        st.caption(f":material/block: {REGISTRY[IMAGENET_MODEL].title} is not offered here: "
                   f"{served[IMAGENET_MODEL].problem}.")
    return set_name, served, gradcam_name


def pick_layer(gradcam_name: str | None, gradcam: LoadedModel | None) -> str | None:
    """Grad-CAM's layer, folded away under "Advanced" (default: the one the network's head reads)."""
    if gradcam is None:
        return None
    with st.expander("Advanced"):
        st.session_state.setdefault(f"layer:{gradcam_name}", gradcam.card["gradcam_layer"])
        return st.selectbox(
            "Grad-CAM layer", feature_layers(gradcam.model), key=f"layer:{gradcam_name}",
            help="The convolution layer whose maps Grad-CAM weighs; the default is the one the head reads.",
        )


def notices(settings: Settings, problems: list[str]) -> bool:
    """The title, then what the visitor must know first: a link's problems, an untrained or missing network, a
    detail the networks are worse at. False when no network works (nothing more to show)."""
    st.markdown("### Where does the network look?")
    st.caption("Three ways of colouring the parts of a photo that made a neural network decide what it shows. "
               "Choose a photo on the left; compare where each map looks and how sharp it is. The networks know only "
               f"{KNOWN}.")
    for problem in problems:
        st.info(problem, icon=":material/link_off:")
    if "gallery_problem" in st.session_state:
        st.warning(st.session_state.pop("gallery_problem"), icon=":material/image_not_supported:")
    served = settings.served
    untrained = [name for name in (settings.gradcam_name, settings.cam_name)
                 if name and not served[name].loaded.trained]
    if untrained:
        st.warning(
            "These networks are untrained (random weights), so their maps and guesses mean nothing yet. Whoever runs "
            "this server can train them: " + " and ".join(f"`python -m cam train {name}`" for name in untrained) + ".",
            icon=":material/warning:",
        )
    for name in (settings.model_set.gradcam, settings.model_set.gap):  # ours should load; ImageNet's only aside
        if served[name].loaded is None:
            st.error(f"{REGISTRY[name].title} could not be loaded, so its maps are missing: {served[name].problem}.")
    models = [loaded for loaded in (settings.gradcam, settings.cam_model) if loaded]
    if not models:
        settings.class_slot.caption("Needs at least one working network.")
        return False
    warning = size_warning(models, settings.size)
    if warning:
        st.warning(warning, icon=":material/warning:")
    return True


def explain_choice(settings: Settings, choice: Choice, timings: dict[str, float],
                   started: float) -> tuple[Decoded, ImageResult, str] | None:
    """Decode the chosen image and explain it (its top prediction, or the class picked for it); returns the decoded
    image, the result and the class picked, or None when the page said why it cannot."""
    gradcam, cam_model = settings.gradcam, settings.cam_model
    try:
        decoded = model_service.decode(choice.key, choice.label, choice.source)
    except ImageError as error:
        pick_class(settings.class_slot, gradcam or cam_model, None)
        st.error(f":material/block: {markdown_literal(str(error))}. The result of the previous photo is hidden so "
                 "that it is not mistaken for this one; choose another photo.")
        return None
    timings["start and decode"] = (time.perf_counter() - started) * 1000
    try:
        with st.spinner("Looking at the photo…"):
            begun = time.perf_counter()
            view = photo_view(decoded.pixels.shape[:2], gradcam, cam_model, settings.size)
            seen = crop(decoded.pixels, view.box)  # the part of the photo the networks see: all of it up to 2:1

            def result_for(class_name: str | None) -> ImageResult:
                explanation = model_service.explained(
                    choice.key, settings.gradcam_name, settings.cam_name, settings.layer, class_name,
                    settings.methods, view, decoded.pixels, slow_map)
                return ImageResult(seen, gradcam, cam_model, explanation, selected(settings.methods), view)

            top = result_for(None)
            wanted = pick_class(settings.class_slot, gradcam or cam_model, top)
            result = top if wanted == TOP else result_for(wanted)
            result.methods = [method for method in result.methods if result.model(method.role) is not None]
            timings["networks"] = (time.perf_counter() - begun) * 1000
            # Of which the passes themselves (when the maps were not in the cache yet; one pass gives several maps).
            timings["passes"] = 1000 * sum(set(result.explanation.seconds.values()))
    except Exception:
        log.exception("explaining %s failed", choice.key)
        st.error("Something went wrong while explaining this photo; the server's log has the details. "
                 "Try another photo or class.")
        return None
    return decoded, result, wanted


@dataclass
class Shown:
    """What ``show_panels`` drew: the panels, a slot under each for its download, the display's downscale (1: full
    resolution), the zoom and the verdict."""

    panels: list[Panel]
    slots: list[DeltaGenerator]
    scale: float
    zoom: dict | None
    verdict: Verdict


def show_panels(settings: Settings, choice: Choice, result: ImageResult, timings: dict[str, float]) -> Shown:
    """The panels in one figure (a box dragged zooms them all), the verdict above them, their captions below."""
    begun = time.perf_counter()
    panels = with_fallback(result, FALLBACK, settings.colormap, settings.opacity, settings.raw)
    zoom = st.session_state.get("zoom", {}).get(choice.key)
    fig, scale = panels_figure(panels, choice.key, zoom)
    timings["panels"] = (time.perf_counter() - begun) * 1000
    st.markdown(f"**{markdown_literal(choice.label)}**")
    if result.view.cropped:
        st.caption(result.view.sentence())
    verdict_slot = st.empty()  # filled once the panels are on their way: the verdict reads the networks again
    begun = time.perf_counter()
    st.plotly_chart(fig, key="panels", config={"displaylogo": False, "displayModeBar": False}, selection_mode="box",
                    on_select=functools.partial(keep_zoom, choice.key))
    if zoom:
        st.button("Zoom out", icon=":material/zoom_out:", on_click=zoom_out, args=(choice.key,), key="zoom_out")
    timings["figure sent"] = (time.perf_counter() - begun) * 1000
    model_service.slow_worker().leave()  # the panels are on their way: another visitor's slow method may go on
    slots = panel_texts(panels, result, settings.colormap)
    STARTUP_NOTICE.empty()
    model_service.warmed().add((settings.gradcam_name, settings.layer, settings.cam_name))
    begun = time.perf_counter()
    verdict = model_service.verdict_on(choice.key, settings.gradcam_name, settings.cam_name, settings.size, result)
    verdict_slot.markdown(f"{VERDICT_ICONS[verdict.kind]} {verdict.sentence}")
    timings["verdict"] = (time.perf_counter() - begun) * 1000
    return Shown(panels, slots, scale, zoom, verdict)


def share_and_download(settings: Settings, choice: Choice, result: ImageResult, wanted: str, shown: Shown,
                       timings: dict[str, float]) -> None:
    """The page's address carries the view; the downloads (each panel, all side by side, the web page)."""
    link = share.View(settings.set_name, None if wanted == TOP else wanted, tuple(settings.extra),
                      settings.colormap if settings.colormap != render.COLORMAPS[0] else None,
                      settings.opacity if settings.opacity != DEFAULT_OPACITY else None, settings.raw,
                      choice.reference, zoom_in_link(shown.zoom), choice.reference is None,
                      None if settings.detail == DEFAULT_DETAIL else settings.detail)
    write_link(link)
    begun = time.perf_counter()
    signature = (choice.key, link, settings.gradcam_name, settings.cam_name, settings.layer)
    files = prepared_files(signature, shown.panels, result, choice, settings.colormap, shown.verdict)
    timings["downloads"] = (time.perf_counter() - begun) * 1000
    downloads(files, shown.panels, shown.slots, choice, result.image.shape[:2])
    if choice.reference is None:
        st.caption(":material/link: A link to this page keeps the settings but cannot carry an uploaded photo; "
                   "to share this result, download it as a web page.")
    else:
        st.caption(":material/link: Copy this page's address to share this view.")


def main() -> None:
    started = time.perf_counter()
    st.markdown(PAGE_STYLE, unsafe_allow_html=True)
    model_service.exit_promptly_on_stop()
    keep_offered_downloads()
    if not model_service.warmed():
        STARTUP_NOTICE.info(STARTING, icon=STARTING_ICON)
    problems = apply_link() if "image" not in st.session_state else []
    settings = sidebar()
    if not notices(settings, problems):
        return
    choice: Choice = st.session_state["image"]
    timings: dict[str, float] = {}
    explained = explain_choice(settings, choice, timings, started)
    if explained is None:
        return
    decoded, result, wanted = explained
    shown = show_panels(settings, choice, result, timings)
    share_and_download(settings, choice, result, wanted, shown, timings)
    details(result, shown.scale, timings, decoded, shown.verdict)
    timings["script"] = (time.perf_counter() - started) * 1000
    log.info("view of %s: %s", choice.key[:24], ", ".join(f"{step} {ms:.0f} ms" for step, ms in timings.items()))


with model_service.slow_worker().view():  # another visitor's slow method pauses until this view's panels are sent
    main()
