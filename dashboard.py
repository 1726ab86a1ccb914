"""The dashboard: give a photo, see where Grad-CAM, Guided Grad-CAM (on VGG16) and NoPool-GAP CAM say the
network looks, side by side at the photo's full resolution, plus any other method of ``cam.registry`` the user
adds. Run with ``streamlit run dashboard.py``.

Layout and widgets only: the maps, panels and captions come from ``cam``.
"""

from __future__ import annotations

import base64
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots
from streamlit.delta_generator import DeltaGenerator

from cam import render
from cam.data import DataError, data_root, list_classes, list_images
from cam.device import describe_device
from cam.examples import EXAMPLE_DESCRIPTION, example_photo
from cam.images import ImageError, load_image, resize
from cam.methods import GAP_MODEL, GRADCAM_MODEL, Explainer, Explanation, ExplanationError, feature_layers
from cam.models import MODEL_SETS, REGISTRY, CheckpointError, LoadedModel, WeightsUnavailable, default_set
from cam.pipeline import ImageResult, Panel, explain_image, render_panels, side_by_side
from cam.registry import METHODS, STUDY, selected

IMAGENET_MODEL = "vgg16_imagenet"  # offered as the Grad-CAM model of every set (downloaded on first use)
TOP = "Top prediction"
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp"]
SPLITS = ("test", "train")
THUMBNAILS = 12  # per gallery page
THUMBNAIL_COLUMNS = 6
# Larger images go to the browser as a downscaled copy (the page would choke on tens of megapixels);
# downloads always keep the full resolution.
MAX_DISPLAY_SIDE = 2048
PANEL_WIDTH = 380  # pixels a panel is expected to get in the wide layout; sets the figure's height
PANELS_PER_ROW = 3
MAX_EXTRA_METHODS = 3  # at most six panels: two rows of three stay readable


@dataclass(frozen=True)
class Choice:
    """The image being explained: raw bytes (upload) or a file path (dataset, example), and how to name it."""

    source: bytes | str
    label: str  # shown above the results
    stem: str  # start of the download file names


@dataclass
class Served:
    """A registry model as this server process holds it, or why it could not be loaded."""

    name: str
    loaded: LoadedModel | None
    problem: str
    # TensorFlow calls on one model run one at a time, whichever session makes them.
    lock: threading.Lock


# ------------------------------------------------------------------------------------------------ caches
@st.cache_resource(show_spinner=False)
def serve(name: str) -> Served:
    """Load a model once per server process. Failures are cached too: retrying an offline download on every
    rerun would stall the page; a fixed checkpoint needs a restart."""
    try:
        return Served(name, REGISTRY[name].load(), "", threading.Lock())
    except (WeightsUnavailable, CheckpointError) as error:
        return Served(name, None, str(error), threading.Lock())


@st.cache_resource(show_spinner=False, max_entries=8)
def explainer_for(gradcam_name: str, layer: str, cam_name: str) -> Explainer:
    """The compiled explainer of a model pair and layer, shared by all sessions."""
    gradcam, cam = serve(gradcam_name), serve(cam_name)
    with gradcam.lock, cam.lock:
        explainer = Explainer(gradcam.loaded.model, layer, cam.loaded.model)
        # Trace and compile now, so that a photo's timing shows the pass itself, not the one-off compilation.
        explainer(np.zeros((1, *gradcam.loaded.model.input_shape[1:]), np.float32))
    return explainer


@st.cache_data(show_spinner=False, max_entries=4)
def decode(source: bytes | str) -> np.ndarray:
    """The image as RGB uint8 at full resolution (raises ImageError with a message for the user)."""
    return load_image(source)


@st.cache_data(show_spinner=False, max_entries=64)
def explanation_of(
    source: bytes | str, gradcam_name: str, cam_name: str, layer: str, class_name: str | None,
    methods: tuple[str, ...], _image: np.ndarray,
) -> Explanation:
    """The maps of one image, keyed by its bytes (or path), the models, the layer, the class and the methods.
    Returns plain arrays rather than an ImageResult, which holds Keras models that must not be pickled."""
    gradcam, cam = serve(gradcam_name), serve(cam_name)
    explainer = explainer_for(gradcam_name, layer, cam_name)
    with gradcam.lock, cam.lock:
        return explain_image(_image, explainer, gradcam.loaded, cam.loaded, class_name, selected(methods)).explanation


# ------------------------------------------------------------------------------------------------ inputs
def choose(choice: Choice) -> None:
    """Make ``choice`` the image the page explains (widget callback)."""
    st.session_state["image"] = choice


def use_upload() -> None:
    """The file uploader's callback: a newly uploaded file becomes the image; removing it keeps the results."""
    upload = st.session_state["upload"]
    if upload is not None:
        choose(Choice(upload.getvalue(), f"Uploaded photo “{upload.name}”", Path(upload.name).stem))


def dataset_choice(split: str, class_name: str, path: Path) -> Choice:
    return Choice(str(path), f"Dataset image {split}/{class_name}/{path.name} (true class: {class_name})",
                  f"{class_name}_{path.stem}")


def pick_random(root: str, split: str, classes: list[str]) -> None:
    """Choose a random image of any class of the split (button callback)."""
    paths, labels = list_images(root, split, classes)
    if paths:
        index = random.randrange(len(paths))
        choose(dataset_choice(split, classes[labels[index]], paths[index]))


def gallery(root: str) -> None:
    """Thumbnails of a dataset split and class, each with a button that picks it."""
    split_column, class_column, page_column = st.columns(3)
    split = split_column.selectbox("Split", SPLITS, key="split")
    try:
        classes = list_classes(root, split)
    except DataError as error:
        st.info(
            f"No dataset here: {error}.\n\n"
            f"A dataset is a folder with one sub-folder per class, e.g. `{root}/test/cat/0001.jpg`. "
            "Get the four-class CIFAR images with `python -m cam data cifar4`, or point the app at your own folder: "
            "type it under **Dataset folder** in the sidebar, or start the app with `CAM_DATA=/path/to/folder`."
        )
        return
    class_name = class_column.selectbox("Class", classes, key="gallery_class")
    paths, _ = list_images(root, split, [class_name])
    pages = max(1, -(-len(paths) // THUMBNAILS))
    page = page_column.number_input(f"Page (of {pages})", 1, pages, key=f"page:{split}:{class_name}")
    st.button(f"Random {split} image", icon=":material/casino:", on_click=pick_random, args=(root, split, classes))
    if not paths:
        st.info(f"No images in {Path(root) / split / class_name}")
        return
    shown = paths[(page - 1) * THUMBNAILS : page * THUMBNAILS]
    for row in range(0, len(shown), THUMBNAIL_COLUMNS):
        for column, path in zip(st.columns(THUMBNAIL_COLUMNS), shown[row : row + THUMBNAIL_COLUMNS], strict=False):
            try:
                column.image(str(path), width=96)
            except OSError:  # Pillow could not read it; picking it shows why
                column.caption(":material/broken_image: unreadable")
            picked = dataset_choice(split, class_name, path)
            column.button(path.name, key=f"pick:{path}", on_click=choose, args=(picked,))


def example() -> None:
    """The built-in example photo, so that a fresh install without a dataset can be tried at once."""
    photo = example_photo()
    if not photo.is_file():
        st.info(f"The example photo is missing here ({photo}); upload a photo instead.")
        return
    st.image(str(photo), width=160)
    st.caption(f"{EXAMPLE_DESCRIPTION}. The models know only bird, cat, dog and horse, so expect a guess.")
    st.button("Explain the example photo", on_click=choose, args=(Choice(str(photo), "Example photo", photo.stem),))


# ------------------------------------------------------------------------------------------------ sidebar
def status(served: Served) -> str:
    """One line on a model: trained (with its test accuracy), untrained, or unavailable and why."""
    spec = REGISTRY[served.name]
    if served.loaded is None:
        return f":material/error: **{spec.title}**: unavailable. {served.problem}"
    if not served.loaded.trained:
        return f":material/warning: **{spec.title}**: {served.loaded.note}"
    card = served.loaded.card
    accuracy = card["metrics"].get("test", {}).get("accuracy")
    score = f"test accuracy {accuracy:.1%}" if accuracy is not None else card["training"].get("source", "")
    return f":material/check_circle: **{spec.title}**: trained checkpoint, {score}"


def pick_class(slot: DeltaGenerator, loaded: LoadedModel, top: ImageResult | None) -> str:
    """The class selectbox: all of a small model's classes; for ImageNet, our four names plus the image's top 5."""
    groups = loaded.card.get("class_groups")
    best = [name for name, _ in top.top_predictions(GRADCAM_MODEL, 5)] if top else []
    options = [TOP, *loaded.classes] if groups is None else list(dict.fromkeys([TOP, *groups, *best]))
    return slot.selectbox(
        "Class", options, key="class", help="The class the maps explain; by default the top prediction of VGG16."
    )


# ------------------------------------------------------------------------------------------------ results
def data_uri(image: np.ndarray) -> str:
    """The image as a JPEG data URI for the figure: the browser gets a tenth of a PNG's bytes and decodes it
    faster; this runs on every rerun. Downloads stay full-resolution PNG."""
    return "data:image/jpeg;base64," + base64.b64encode(render.to_jpeg(image)).decode("ascii")


def figure(panels: list[Panel], revision: str) -> tuple[go.Figure, float]:
    """One figure with every panel, PANELS_PER_ROW to a row, whose axes are matched, so zooming or panning one
    moves them all. Returns it and the display downscale factor (1 = full resolution)."""
    height, width = panels[0].image.shape[:2]
    scale = max(1.0, max(height, width) / MAX_DISPLAY_SIDE)
    shown = (round(height / scale), round(width / scale))
    rows = -(-len(panels) // PANELS_PER_ROW)
    fig = make_subplots(
        rows=rows, cols=PANELS_PER_ROW, shared_xaxes="all", shared_yaxes="all", horizontal_spacing=0.01,
        vertical_spacing=0.06 if rows > 1 else 0.0, subplot_titles=[panel.title for panel in panels],
    )
    for index, panel in enumerate(panels):
        # dx, dy: a displayed pixel covers `scale` original pixels, so axes and hover stay in original pixels.
        fig.add_trace(
            go.Image(
                source=data_uri(resize(panel.image, shown)), dx=scale, dy=scale, zsmooth=False, name=panel.title,
                hovertemplate="x %{x:.0f}, y %{y:.0f}<extra>" + panel.title + "</extra>",
            ),
            row=index // PANELS_PER_ROW + 1, col=index % PANELS_PER_ROW + 1,
        )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    # One aspect constraint on the first subplot: the other axes match it (matched axes ignore scaleanchor).
    fig.update_layout(
        yaxis_scaleanchor="x", uirevision=revision, margin={"l": 0, "r": 0, "t": 28, "b": 0},
        height=rows * (int(np.clip(PANEL_WIDTH * height / width, 160, 720)) + 28), dragmode="zoom",
    )
    return fig, scale


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def show_results(result: ImageResult, choice: Choice, colormap: str, opacity: float, raw: bool) -> None:
    """The panels at full resolution with captions, timings and downloads, then both models' predictions."""
    started = time.perf_counter()
    panels = render_panels(result, colormap, opacity, raw)
    fig, scale = figure(panels, choice.label)
    render_ms = (time.perf_counter() - started) * 1000
    st.plotly_chart(fig, key="panels", config={"displaylogo": False, "scrollZoom": True})
    height, width = result.image.shape[:2]
    note = "Drag over any panel to zoom (all panels follow), scroll to zoom, double-click to reset."
    if scale > 1:
        note += (f" The page shows a {round(width / scale)}x{round(height / scale)} copy of this {width}x{height} "
                 "image; the downloads are full resolution.")
    st.caption(note)
    legend, _ = st.columns([1, 2])
    legend.image(
        render.colour_bar(colormap, 512, 16), width="stretch",
        caption=f"Heat map colours ({colormap}): the map's lowest value on the left, its highest on the right. "
        "Guided Grad-CAM has no colour scale: grey is its average gradient.",
    )
    seconds = result.explanation.seconds
    for start in range(0, len(panels), PANELS_PER_ROW):
        row = panels[start : start + PANELS_PER_ROW]
        for column, panel in zip(st.columns(PANELS_PER_ROW), row, strict=False):
            method = METHODS[panel.key]
            with column:
                st.markdown(f"**{panel.caption}**")
                st.caption(
                    f":material/timer: map {seconds[panel.key] * 1000:.0f} ms "
                    f"({result.model(method.role).card['name']} pass) · render {render_ms:.0f} ms (all panels)"
                )
                st.download_button(
                    f"Download {panel.title} (PNG, {width}x{height})",
                    data=lambda image=panel.image: render.to_png(image), file_name=f"{choice.stem}_{panel.key}.png",
                    mime="image/png", on_click="ignore", key=f"download:{panel.key}",
                )
    st.download_button(
        "Download all side by side (PNG)", file_name=f"{choice.stem}_side_by_side.png", mime="image/png",
        data=lambda: render.to_png(side_by_side(panels)),
        on_click="ignore", key="download:all",
    )
    with st.expander("How to read these pictures"):
        st.markdown("\n".join(f"- **{method.label}**: {method.summary}" for method in result.methods))
    with st.expander("Technical details"):
        layer = result.gradcam_model.card["gradcam_layer"]
        st.markdown("\n".join(
            f"- `{method.key}` explains {result.model(method.role).card['name']} and reads "
            f"{', '.join(f'`{name}`' for name in method.reads(result.model(method.role).model, layer))}"
            for method in result.methods
        ))
    st.subheader("What the networks think it is")
    for column, role in zip(st.columns(2), (GRADCAM_MODEL, GAP_MODEL), strict=True):
        with column:
            st.markdown(f"**{REGISTRY[result.model(role).card['name']].title}**")
            st.dataframe(
                [{"class": name, "probability": p} for name, p in result.top_predictions(role, 5)],
                hide_index=True,
                column_config={"probability": st.column_config.ProgressColumn(format="percent")},
            )


# ------------------------------------------------------------------------------------------------ page
def main() -> None:
    st.set_page_config(page_title="Where does the network look?", page_icon=":material/search:", layout="wide")
    st.title("Where does the network look?")
    st.markdown(
        "Give a photo. Three methods colour the parts that made a neural network decide what it shows: "
        "**Grad-CAM** and **Guided Grad-CAM** explain VGG16, **NoPool-GAP CAM** explains a network built to give "
        "sharp maps. Compare where they look and how sharp each answer is; add more methods in the sidebar."
    )

    with st.sidebar:
        st.header("Models")
        names = list(MODEL_SETS)
        set_name = st.radio(
            "Model pair", names, index=names.index(default_set().name), key="model_set",
            format_func=lambda name: MODEL_SETS[name].title,
            help="Photos: models that see 128x128 pixels. CIFAR: models that see 32x32 thumbnails.",
        )
        model_set = MODEL_SETS[set_name]
        gradcam_models, cam_name = (model_set.gradcam, IMAGENET_MODEL), model_set.gap
        with st.spinner("Loading the models (once per server)…"):
            served = {name: serve(name) for name in (*gradcam_models, cam_name)}
        available = [name for name in gradcam_models if served[name].loaded is not None]
        gradcam_name = st.radio(
            "Explain with Grad-CAM on", available, format_func=lambda name: REGISTRY[name].title, key="gradcam_model"
        ) if available else None
        for name in gradcam_models:
            if name not in available:
                st.caption(f":material/block: {REGISTRY[name].title} is not offered here.")
                with st.expander("Why not?"):
                    st.caption(served[name].problem)
        for name in (gradcam_name, cam_name):
            if name is not None:
                st.caption(status(served[name]))
        st.header("What to explain")
        class_slot = st.container()
        gradcam = served[gradcam_name].loaded if gradcam_name else None
        if gradcam is not None:
            layers = feature_layers(gradcam.model)
            layer = st.selectbox(
                "Grad-CAM layer", layers, index=layers.index(gradcam.card["gradcam_layer"]),
                key=f"layer:{gradcam_name}",
                help="The convolution layer whose maps Grad-CAM weighs; the default is the last one.",
            )
        extra = st.multiselect(
            "More methods", [key for key in METHODS if key not in STUDY], format_func=lambda key: METHODS[key].label,
            key="extra_methods", max_selections=MAX_EXTRA_METHODS,
            help="Each adds a panel next to the three above, explaining the same class. Score-CAM takes seconds.",
        )
        methods = (*STUDY, *extra)
        st.header("Look")
        colormap = st.selectbox("Colours", render.COLORMAPS, key="colormap")
        opacity = st.slider("Heat map opacity", 0.0, 1.0, 0.5, 0.05, key="opacity")
        raw = st.toggle("Raw maps without the photo", key="raw")
        st.header("Dataset")
        root = st.text_input("Dataset folder", str(data_root()), key="data_root",
                             help="Defaults to $CAM_DATA, or data/ in the project.")
        st.caption(f"Computing on {describe_device()}")

    used = [served[name] for name in (gradcam_name, cam_name) if name is not None]
    untrained = [model.name for model in used if model.loaded is not None and not model.loaded.trained]
    if untrained:
        st.warning(
            "No trained checkpoint — showing UNTRAINED models (random weights), so the maps and predictions mean "
            "nothing yet. Train with " + " and ".join(f"`python -m cam train {name}`" for name in untrained) + "."
        )
    for name in (model_set.gradcam, cam_name):  # ours should load; ImageNet's absence is only noted in the sidebar
        if served[name].loaded is None:
            st.error(f"{REGISTRY[name].title} could not be loaded: {served[name].problem}")

    upload_tab, gallery_tab, example_tab = st.tabs(
        [":material/upload: Upload a photo", ":material/photo_library: Dataset gallery",
         ":material/image: Example photo"]
    )
    with upload_tab:
        st.file_uploader(
            "A photo (JPEG, PNG, WebP or BMP)", type=UPLOAD_TYPES, key="upload", on_change=use_upload
        )
    with gallery_tab:
        gallery(root)
    with example_tab:
        example()

    choice: Choice | None = st.session_state.get("image")
    if gradcam is None or served[cam_name].loaded is None:
        class_slot.caption("Needs a working Grad-CAM model and NoPool-GAP model.")
        return
    if choice is None:
        pick_class(class_slot, gradcam, None)
        st.info(":material/arrow_upward: Upload a photo, pick one from the dataset gallery, or try the example photo.")
        return

    st.subheader(choice.label)
    try:
        image = decode(choice.source)
        with st.spinner("Looking at the photo…"):
            cam_model, chosen = served[cam_name].loaded, selected(methods)
            top = ImageResult(image, gradcam, cam_model,
                              explanation_of(choice.source, gradcam_name, cam_name, layer, None, methods, image),
                              chosen)
            wanted = pick_class(class_slot, gradcam, top)
            result = top if wanted == TOP else ImageResult(
                image, gradcam, cam_model,
                explanation_of(choice.source, gradcam_name, cam_name, layer, wanted, methods, image), chosen,
            )
    except (ImageError, ExplanationError) as error:
        st.error(f"Cannot explain this: {error}")
        return
    show_results(result, choice, colormap, opacity, raw)


main()
