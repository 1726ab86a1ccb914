"""The page's model service: the networks, their explainers and the maps, loaded or computed once per server process
and shared by every visitor's session (Streamlit's caches), a lock per model, the garbage collector kept off the
models' objects, and a prompt exit when the server stops. ``pages/compare.py`` calls these; layout stays there.

A pass of one model runs one at a time (its lock), whichever session asks; slow methods (Score-CAM) run apart at low
priority (``cam.serve.slow_work``); what a visitor sees of them (a progress bar, a cancel button) is the page's
``slow_map``, handed to ``explained``.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import streamlit as st
from streamlit.logger import get_logger
from streamlit.runtime import Runtime
from streamlit.runtime.runtime import RuntimeState

from cam.core.catalog import FALLBACK, Role
from cam.core.images import DECODE_MAX_SIDE, Decoded, decode_image
from cam.explain.methods import Explainer, Explanation
from cam.explain.pipeline import ImageResult, PhotoView, add_fallback, explain_image, model_inputs
from cam.explain.registry import METHODS, Method, selected
from cam.explain.verdict import Judge, Verdict
from cam.models.checkpoints import LoadedModel, load_model, problem_in_words
from cam.models.imagenet_net import Screen
from cam.serve import server
from cam.serve.slow_work import SlowWorker

log = get_logger(__name__)
# Score-CAM's masked photos per batch here (256 in the library): its progress bar moves, and a cancel takes effect,
# after each batch (about a second for the photo VGG16 on 2 CPU cores). It runs apart at low priority
# (cam.serve.slow_work), so the batch size no longer decides how long other visitors wait.
SLOW_BATCH = 16
SLOW_CACHE_MB = 64


@dataclass
class Served:
    """A registry model as this server process holds it, or why it could not be loaded (in words)."""

    name: str
    loaded: LoadedModel | None
    problem: str
    # TensorFlow calls on one model run one at a time, whichever session makes them (slow methods run apart).
    lock: threading.Lock


SlowMap = Callable[[Method, Served, str | None, np.ndarray, np.ndarray], tuple[np.ndarray, float]]


@st.cache_resource(show_spinner=False)
def serve(name: str) -> Served:
    """Load a model once per server process. Failures are cached too: retrying an offline download on every
    rerun would stall the page; a fixed checkpoint needs a restart. The reason goes to the log in full."""
    try:
        loaded = load_model(name)
    except Exception as error:  # any failure removes this model's panels only
        log.warning("model %s could not be loaded: %s: %s", name, type(error).__name__, error)
        return Served(name, None, problem_in_words(error), threading.Lock())
    settle_heap()
    return Served(name, loaded, "", threading.Lock())


def settle_heap() -> None:
    """Collect garbage, then exempt every object alive now (the models and TensorFlow's traced graphs, kept for the
    server's life) from later collections. Streamlit collects after every run and Python on its own; each full
    collection walked all of them, 0.45 s measured, two or three times per upload. Called after each load, so
    what was frozen and has become garbage since (an explainer dropped from its cache) is collected then."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def locks(*names: str | None) -> Iterator[None]:
    """Hold the locks of the named models (None: no model) for a pass."""
    with contextlib.ExitStack() as stack:
        for name in names:
            if name:
                stack.enter_context(serve(name).lock)
        yield


@st.cache_resource(show_spinner=False, max_entries=8)
def explainer_for(gradcam_name: str | None, layer: str | None, cam_name: str | None) -> Explainer:
    """The compiled explainer of the models that loaded (either may be missing), shared by all sessions."""
    gradcam = serve(gradcam_name).loaded if gradcam_name else None
    cam = serve(cam_name).loaded if cam_name else None
    explainer = Explainer(gradcam and gradcam.model, layer, cam and cam.model)
    # Trace and compile now, so that a photo's timing shows the pass itself, not the one-off compilation.
    blank = {loaded.input_size: np.zeros((1, loaded.input_size, loaded.input_size, 3), np.float32)
             for loaded in (gradcam, cam) if loaded}
    with locks(gradcam_name, cam_name):
        explainer(gradcam and blank[gradcam.input_size], cam_images=cam and blank[cam.input_size])
    settle_heap()
    return explainer


@st.cache_resource(show_spinner=False)
def exit_promptly_on_stop() -> bool:
    """Once per server process: end it within seconds of Streamlit's stop (SIGTERM), even while a map computes,
    and return freed memory to the system now and then; see ``cam.serve.server`` for why. Not under AppTest, whose
    runtime is a stand-in (its state is no RuntimeState) and whose process is pytest's."""
    if not Runtime.exists() or not isinstance(Runtime.instance().state, RuntimeState):
        return False
    server.return_free_memory_every()
    return server.exit_promptly_when_stopped(
        lambda: Runtime.instance().state in (RuntimeState.STOPPING, RuntimeState.STOPPED))


@st.cache_data(show_spinner=False, max_entries=4)
def decode(key: str, label: str, _source: bytes | str) -> Decoded:
    """The image as RGB uint8, at most DECODE_MAX_SIDE pixels on its long side (so at most 12 MB an entry), with
    its size as stored (raises ImageError with a message for the user naming ``label``, not a server path);
    cached by ``key``."""
    return decode_image(_source, name=label, max_side=DECODE_MAX_SIDE)


@st.cache_data(show_spinner=False, max_entries=64)
def explanation_of(
    key: str, gradcam_name: str | None, cam_name: str | None, layer: str | None, class_name: str | None,
    methods: tuple[str, ...], short_side: int, _image: np.ndarray,
) -> Explanation:
    """The maps of one image, keyed by its key, the models, the layer, the class, the methods and the input's short
    side. Returns plain arrays rather than an ImageResult, which holds Keras models that must not be pickled."""
    explainer = explainer_for(gradcam_name, layer, cam_name)
    gradcam = serve(gradcam_name).loaded if gradcam_name else None
    cam = serve(cam_name).loaded if cam_name else None
    with locks(gradcam_name, cam_name):
        result = explain_image(_image, explainer, gradcam, cam, class_name, selected(methods), short_side)
        if FALLBACK not in methods:
            add_fallback(result, FALLBACK, layer)
        return result.explanation


@st.cache_resource(show_spinner=False)
def slow_maps() -> server.BoundedCache:
    """The maps of slow methods (Score-CAM), shared by all sessions: at most SLOW_CACHE_MB and 64 views."""
    return server.BoundedCache(SLOW_CACHE_MB << 20, 64)


@st.cache_resource(show_spinner=False)
def slow_worker() -> SlowWorker:
    """The process that computes slow methods at low priority, one visitor's at a time (cam.serve.slow_work)."""
    return SlowWorker(SLOW_BATCH)


def explained(
    key: str, gradcam_name: str | None, cam_name: str | None, layer: str | None, class_name: str | None,
    methods: tuple[str, ...], view: PhotoView, image: np.ndarray, slow_map: SlowMap,
) -> Explanation:
    """``explanation_of`` the fast methods, plus the maps of the slow ones (registry ``slow``), each computed by
    ``slow_map`` (the page's: with a progress bar and a cancel button) unless another session already did."""
    explanation = explanation_of(key, gradcam_name, cam_name, layer, class_name,
                                 tuple(k for k in methods if not METHODS[k].slow), view.short_side, image)
    names = {Role.GRADCAM: gradcam_name, Role.GAP: cam_name}
    for method in selected(methods):
        name = names[method.role]
        if not method.slow or name is None:
            continue
        method_layer = layer if method.role == Role.GRADCAM else None
        found = (key, name, method_layer, int(explanation.classes[method.role][0]), method.key, view.short_side)
        kept = slow_maps().get(found)
        if kept is None:
            x = model_inputs(image, view)[method.role]
            kept = slow_map(method, serve(name), method_layer, explanation.classes[method.role], x)
            slow_maps().put(found, kept)
        explanation.maps[method.key], explanation.seconds[method.key] = kept
    return explanation


@st.cache_resource(show_spinner=False)
def screen() -> Screen | None:
    """The verdict's 1000-class network (cam.models.imagenet_net), one for every pair and session."""
    return Screen.load()


@st.cache_resource(show_spinner=False, max_entries=8)
def judge_for(gradcam_name: str | None, cam_name: str | None) -> Judge:
    """The verdict's reader of both models' features and their statistics (cam.explain.verdict), shared by all
    sessions."""
    return Judge([serve(name).loaded for name in (gradcam_name, cam_name) if name], screen())


@st.cache_data(show_spinner=False, max_entries=64)
def verdict_on(key: str, gradcam_name: str | None, cam_name: str | None, short_side: int,
               _result: ImageResult) -> Verdict:
    """The verdict on the image ``key`` by the two models at detail ``short_side`` (one pass of each through its
    convolutions)."""
    judge = judge_for(gradcam_name, cam_name)
    with locks(gradcam_name, cam_name):
        return judge(_result)


@st.cache_resource(show_spinner=False)
def warmed() -> set[tuple]:
    """The (Grad-CAM model, layer, CAM model) triples that have shown panels in this server process."""
    return set()
