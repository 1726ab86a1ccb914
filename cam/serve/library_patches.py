"""The three changes the dashboard server makes to libraries' private parts and default behaviour, each applied only on
the version it was tested with, said in the log when active (and why), and checked by
``tests/test_library_patches.py``, which fails when a library changes under it.

1. Streamlit cleans up after every run of the script by calling ``keras.backend.clear_session()``
   (``script_runner._clean_problem_modules``). Our models are built once, cached and shared by every session;
   clearing drops TensorFlow's kernel cache and runs a full garbage collection after each click, which doubled the
   networks' time of the next view (0.45 s -> 0.9 s measured for the photo pair) and can happen while another
   session's model is computing. The replacement still closes Matplotlib's figures.
2. Streamlit's uploader sends the file's name twice in one multipart header line (as the form field's name and as
   the file name), and python-multipart refuses a header line over 4,224 bytes. So a photo whose name is longer than
   about 2,000 characters was refused by the server with "Invalid multipart data", and the visitor saw only
   "AxiosError: Request failed with status code 400" in the uploader. The line limit is raised to
   ``UPLOAD_HEADER_LIMIT`` (a 3,000-character name of four-byte characters, twice, fits); the number of header lines
   stays limited, and the page shortens long names for display (``cam.core.names``).
3. Half a second into every rerun, Streamlit's page fades its elements out over a second (a CSS opacity transition
   on stale elements). Drawing those frames took 40% of a core from the networks' pass on a small machine (Chrome
   trace). ``NO_FADE_CSS`` turns the page faded in one step instead; the page adds it to its style.
"""

from __future__ import annotations

import functools
import logging
import sys
from importlib import metadata

log = logging.getLogger(__name__)
TESTED = {"streamlit": "1.67.0", "python-multipart": "0.0.34"}
UPLOAD_HEADER_LIMIT = 32 * 1024  # bytes of one multipart header line (python-multipart's default: 4,224)
NO_FADE_CSS = "*{transition-duration:0s!important}"


def _tested(package: str, why: str) -> bool:
    """True when the installed ``package`` is the version the patch was tested with; else logged, not applied."""
    installed = metadata.version(package)
    if installed != TESTED[package]:
        log.warning("%s %s is not the tested %s: not patched, so %s", package, installed, TESTED[package], why)
        return False
    return True


def close_figures_only() -> None:
    """Streamlit's clean-up after every run of the script without its ``keras.backend.clear_session()``."""
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@functools.cache
def keep_models_between_runs() -> bool:
    """Patch 1 above; returns whether it is active."""
    from streamlit.runtime.scriptrunner import script_runner

    if not _tested("streamlit", "TensorFlow's state is cleared after every run (slower views)"):
        return False
    script_runner._clean_problem_modules = close_figures_only
    log.info("patch active: Streamlit no longer clears Keras after each run (our models are shared and cached)")
    return True


@functools.cache
def accept_long_upload_names() -> bool:
    """Patch 2 above; returns whether it is active."""
    import python_multipart

    if not _tested("python-multipart", "uploads with names over about 2,000 characters are refused"):
        return False
    original = python_multipart.MultipartParser

    class LongHeaderParser(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.setdefault("max_header_size", UPLOAD_HEADER_LIMIT)
            super().__init__(*args, **kwargs)

    # Starlette's form parser looks MultipartParser up on the package at each request.
    python_multipart.MultipartParser = LongHeaderParser
    log.info("patch active: multipart header lines up to %d bytes, so uploads with long names are accepted",
             UPLOAD_HEADER_LIMIT)
    return True


@functools.cache
def no_fade_on_rerun() -> str:
    """Change 3 above: the CSS rule to add to the page's style ("" on another Streamlit version)."""
    if not _tested("streamlit", "the page fades out over a second at every rerun (frames drawn beside the networks)"):
        return ""
    log.info("workaround active: the page's elements turn faded in one step, not over a second, during a rerun")
    return NO_FADE_CSS


def apply_all() -> None:
    """Patches 1 and 2 (each once per process); change 3 is CSS the page adds (``no_fade_on_rerun``)."""
    keep_models_between_runs()
    accept_long_upload_names()
