"""How reliably the dashboard behaves in a real browser (headless Chromium via Playwright): figures, not asserts.

- Sessions: several visitors (4 by default), each in their own browser, upload a different photo at the same
  moment to ONE server. Each page must show the captions of its own photo: the class and percentage that this
  process computes for that photo with the dashboard's own code (``cam.explain.pipeline``), and the photo's size.
- Memory: one visitor uploads many different 1024x768 photos (50 by default), one after another; after each, the
  resident memory (VmRSS) of the server process and its children is read from /proc. Reported: the RSS after
  uploads 1, 10, 25 and 50, the maximum, and the least-squares slope in MB per upload over uploads 10-50.
- Large photo: one visitor uploads a 7000x7000 JPEG, then three visitors upload it at once and close their
  browsers. The server's RSS is sampled every 0.1 s: idle (one page showing the example), the peak and the RSS
  after each step, and the RSS for ``--settle`` seconds (default 150) after the three sessions closed.
- Bad files: a corpus of broken, odd and extreme files (empty, not a picture, cut short, decompression bomb,
  16-bit, CMYK, animated GIF, transparency, EXIF rotation, TIFF, 1x1, 4000x40, MPO, AVIF, ICO), uploaded one at a
  time. For each:
  what the page shows (the message, or the captions), whether the page leaks a traceback, an exception class or a
  server path, and whether that matches what ``cam.core.images.load_image`` says of the file. At the end: whether the
  server's log holds a traceback.

All three run against one ``streamlit run dashboard.py`` with the checkpoints and settings of the environment.
Photos come from ``--data`` (one folder per class; default ../shared/data/photos4/test) or, without it, from the
built-in gallery, cropped to distinct sizes with a seeded bit of noise so that no two uploads are the same.

Run: ``python -m benchmarks.bench_reliability [--sessions 4] [--uploads 50] [--skip sessions,memory,large,bad]``;
``--server-root`` serves another checkout's dashboard (e.g. an export of the previous commit, for a before/after).
Prints tables and writes them as JSON to ``--out`` (default test-output/reliability.json), with the server's log
beside it. Exit code 1 when a session showed another photo's results or a bad file leaked a traceback, an exception
class or a server path onto the page; else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cam.core.images import DECODE_MAX_SIDE, IMAGE_SUFFIXES, ImageError, load_image  # noqa: E402
from cam.serve.examples import EXAMPLES, EXAMPLES_DIR, example_photo  # noqa: E402
from tests.test_browser import (  # noqa: E402
    ANY_CAPTION,
    PANEL_METHODS,
    PANEL_SOURCES,
    ROOT,
    SCRIPT_IDLE,
    TIMEOUT_MS,
    UPLOAD_INPUT,
    WATCH_FOR_PANELS,
    browser_page,
    captions,
    chromium,
    open_app,
    streamlit_server,
    upload_and_wait,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

PARTS = ("sessions", "memory", "large", "bad")
SESSION_SIZES = [(640, 480), (600, 600), (480, 640), (800, 450), (720, 540), (500, 700), (900, 600), (560, 420)]
MEMORY_SIZE = (1024, 768)
MEMORY_MARKS = (1, 10, 25, 50)
SLOPE_FROM = 10  # the slope is fitted from this upload on: the first ones fill caches
CAPTION = re.compile(r"^(?P<method>.+?) on [\w-]+: (?P<name>\w+), (?P<percent>\d+)% — map of \S+ cells, "
                     r"shown at (?P<size>\d+x\d+)$")
# What must never reach the page: a traceback, an exception's class, a path on the server.
LEAKS = re.compile(r"Traceback|\b[A-Z]\w*(?:Error|Exception|Warning)\b|\bError\b|/work/|/tmp/|/root|/home/|"
                   r"site-packages|\.py\b")
TRIES = 12  # candidate photos per session when looking for one whose top class differs from the others'
LARGE_SIZE = (7000, 7000)
LARGE_SESSIONS = 3
SAMPLE_S = 0.1  # how often the large-photo check reads the server's RSS
CAPTION_WAIT_MS = 120_000  # once the script is idle the captions are drawn within moments
FAILED = "Something went wrong"  # the start of the dashboard's message when explaining a photo fails


# ------------------------------------------------------------------------------------------------ photos
def sources(data: Path) -> list[Path]:
    """Pictures to upload: the data folder's, taking each class folder in turn (so neighbours differ in class),
    or the built-in gallery's when the folder is missing or empty."""
    if data.is_dir():
        folders = sorted(folder for folder in data.iterdir() if folder.is_dir()) or [data]
        lists = [sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for folder in folders]
        longest = max((len(files) for files in lists), default=0)
        mixed = [files[i] for i in range(longest) for files in lists if i < len(files)]
        if mixed:
            return mixed
    return [EXAMPLES_DIR / name for name in EXAMPLES]


def variant(source: Path, path: Path, size: tuple[int, int], seed: int) -> Path:
    """``source`` cropped to fill ``size`` (width, height), the crop's centre and a little noise drawn from
    ``seed``, saved as a JPEG at ``path``: different seeds give different bytes and a slightly different view."""
    rng = np.random.default_rng(seed)
    with Image.open(source) as opened:
        upright = ImageOps.exif_transpose(opened).convert("RGB")
    centre = tuple(float(c) for c in rng.uniform(0.4, 0.6, 2))
    framed = ImageOps.fit(upright, size, Image.Resampling.BICUBIC, centering=centre)
    noisy = np.asarray(framed, np.int16) + rng.integers(-5, 6, (size[1], size[0], 3))
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def session_sizes(count: int) -> list[tuple[int, int]]:
    """``count`` different photo sizes, so that every session's captions differ by size too."""
    extra = [(512 + 16 * i, 384 + 8 * i) for i in range(max(0, count - len(SESSION_SIZES)))]
    return (SESSION_SIZES + extra)[:count]


def label(path: Path) -> str:
    """The words the dashboard puts above an upload's results (and at the start of a refusal)."""
    return f"Uploaded photo “{path.name}”"


# ------------------------------------------------------------------------------------------------ expected
def caption_maker() -> Callable[[Path], list[str]]:
    """A function giving the three captions a photo's panels should have, computed here with the dashboard's
    defaults (the default model pair, the Grad-CAM model's own layer, the study's methods) and its code."""
    from cam.core.catalog import default_set
    from cam.explain.methods import Explainer
    from cam.explain.pipeline import explain_image, render_panels
    from cam.explain.registry import selected
    from cam.models.checkpoints import load_model

    pair = default_set()
    gradcam, gap = load_model(pair.gradcam), load_model(pair.gap)
    explainer = Explainer(gradcam.model, gradcam.card["gradcam_layer"], gap.model)

    def describe(path: Path) -> list[str]:
        image = load_image(path.read_bytes(), name=label(path))
        return [panel.caption for panel in render_panels(explain_image(image, explainer, gradcam, gap, None,
                                                                       selected()))]

    return describe


def pick_visitors(pictures: list[Path], folder: Path, count: int) -> tuple[list[Path], dict[str, list[str]]]:
    """One photo per session, each at its own size, preferring photos whose top class no other session's has
    (up to TRIES candidates each); returns them and their expected captions by file name."""
    describe = caption_maker()
    chosen, expected, answers, index = [], {}, set(), 0
    for number, size in enumerate(session_sizes(count), start=1):
        for attempt in range(TRIES):
            path = variant(pictures[index % len(pictures)], folder / f"session{number}.jpg", size, seed=100 + index)
            index += 1
            texts = describe(path)
            answer = top_class(texts)
            if answer not in answers or attempt == TRIES - 1:
                break
        answers.add(answer)
        chosen.append(path)
        expected[path.name] = texts
    return chosen, expected


def top_class(texts: list[str]) -> str:
    """The class named by the first caption ('' when there is none)."""
    found = CAPTION.match(texts[0]) if texts else None
    return found["name"] if found else ""


def brief(texts: list[str]) -> str:
    """Captions in short: 'cat 72% | cat 72% | cat 60% @ 640x480'."""
    parts = [CAPTION.match(text) for text in texts]
    if not texts or not all(parts):
        return " | ".join(texts) or "(no captions)"
    return " | ".join(f"{p['name']} {p['percent']}%" for p in parts) + f" @ {parts[0]['size']}"


# ------------------------------------------------------------------------------------------------ sessions
@dataclass
class Session:
    """One visitor of the simultaneous-sessions check."""

    photo: str
    expected: list[str]
    shown: list[str] = field(default_factory=list)
    shown_after_all: list[str] = field(default_factory=list)  # read again once every session had its panels
    seconds: float | None = None  # from the common start to this page's panels
    error: str = ""

    @property
    def correct(self) -> bool:
        return not self.error and self.shown == self.expected and self.shown_after_all in ([], self.expected)


def visit(executable: str, url: str, photo: Path, session: Session, start: threading.Barrier,
          done: threading.Barrier) -> None:
    """One visitor, in its own thread with its own Playwright (its sync API must not cross threads). A visitor that
    fails keeps what its page showed, and releases the others from their waits."""
    try:
        with browser_page(executable) as page:
            try:
                upload_together(page, url, photo, session, start, done)
            except Exception:
                with contextlib.suppress(Exception):
                    session.shown = captions(page)
                raise
    except Exception as error:  # a failed visitor is a finding to report
        session.error = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        start.abort()
        done.abort()


def upload_together(page: Page, url: str, photo: Path, session: Session, start: threading.Barrier,
                    done: threading.Barrier) -> None:
    """Open the page, upload at the common start, read the captions, and read them again once every visitor has
    theirs (a result sent to the wrong session could replace them late)."""
    open_app(page, url)
    start.wait()
    began = time.perf_counter()
    upload_and_wait(page, photo)
    session.seconds = time.perf_counter() - began
    page.wait_for_selector(SCRIPT_IDLE, timeout=TIMEOUT_MS)
    session.shown = captions(page)
    with contextlib.suppress(threading.BrokenBarrierError):
        done.wait()
        session.shown_after_all = captions(page)


def run_sessions(executable: str, url: str, photos: list[Path], expected: dict[str, list[str]]) -> list[Session]:
    """All visitors at once, one thread each."""
    sessions = [Session(photo.name, expected[photo.name]) for photo in photos]
    start, done = threading.Barrier(len(photos)), threading.Barrier(len(photos))
    threads = [threading.Thread(target=visit, args=(executable, url, photo, session, start, done))
               for photo, session in zip(photos, sessions, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sessions


# ------------------------------------------------------------------------------------------------ memory
def server_pid(port: int) -> int:
    """The process id of the ``streamlit run`` serving ``port`` (found in /proc by its command line)."""
    for entry in Path("/proc").iterdir():
        try:
            words = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "--server.port" in words[:-1] and words[words.index("--server.port") + 1] == str(port) and any(
            "streamlit" in word for word in words
        ):
            return int(entry.name)
    raise RuntimeError(f"no streamlit process serves port {port}")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    family, added = {pid}, True
    while added:
        children = {child for child, parent in parents.items() if parent in family} - family
        family |= children
        added = bool(children)
    return sorted(family)


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children in MB (VmRSS from /proc)."""
    total = 0
    for member in descendants(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(found[1]) if found else 0
    return total / 1024


def slope(uploads: list[int], values: list[float]) -> float | None:
    """Least-squares slope (MB per upload); None with fewer than two points."""
    if len(uploads) < 2:
        return None
    return float(np.polyfit(uploads, values, 1)[0])


def run_memory(executable: str, url: str, photos: list[Path], pid: int) -> dict:
    """Upload ``photos`` one after another in one page, reading the server's RSS after each."""
    rows = []
    with browser_page(executable) as page:
        open_app(page, url)
        before = rss_mb(pid)
        for number, photo in enumerate(photos, start=1):
            began = time.perf_counter()
            upload_and_wait(page, photo)
            page.wait_for_selector(SCRIPT_IDLE, timeout=TIMEOUT_MS)  # the downloads are made after the panels
            rows.append({"upload": number, "rss_mb": rss_mb(pid), "seconds": time.perf_counter() - began})
            print(f"  memory: upload {number}/{len(photos)}: {rows[-1]['rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    tail = rows[SLOPE_FROM - 1 :] if len(rows) > SLOPE_FROM else rows  # short runs: over all uploads
    if not rows:
        return {"rss_mb_before": before, "rss_mb_after": {}, "rss_mb_max": before, "slope_mb_per_upload": None,
                "slope_over_uploads": "-", "uploads": rows}
    return {
        "rss_mb_before": before,
        "rss_mb_after": {str(mark): rows[mark - 1]["rss_mb"] for mark in MEMORY_MARKS if mark <= len(rows)},
        "rss_mb_max": max(row["rss_mb"] for row in rows),
        "slope_mb_per_upload": slope([row["upload"] for row in tail], [row["rss_mb"] for row in tail]),
        "slope_over_uploads": f"{tail[0]['upload']}-{tail[-1]['upload']}",
        "uploads": rows,
    }


# ------------------------------------------------------------------------------------------------ large photo
class Sampler:
    """Reads a process tree's RSS every SAMPLE_S seconds in a thread while in use; ``peak`` is the largest."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pid))


def large_photo(path: Path, size: tuple[int, int] = LARGE_SIZE) -> Path:
    """The built-in cat enlarged to ``size`` with a little noise, as a JPEG (about 2 MB at 7000x7000)."""
    big = np.asarray(cat(size), np.int16) + np.random.default_rng(7).integers(-3, 4, (size[1], size[0], 3))
    Image.fromarray(big.clip(0, 255).astype(np.uint8)).save(path, quality=75)
    return path


def upload_any_size(page: Page, photo: Path) -> None:
    """Upload ``photo`` and wait until three fresh panels are captioned (whatever size the page shows) and the
    run is over."""
    page.evaluate(WATCH_FOR_PANELS, [label(photo), page.evaluate(PANEL_SOURCES), [ANY_CAPTION.pattern],
                                     len(PANEL_METHODS), TIMEOUT_MS])
    page.locator(UPLOAD_INPUT).set_input_files(photo)
    page.evaluate("() => window.panelsDrawn")
    page.wait_for_selector(SCRIPT_IDLE, timeout=TIMEOUT_MS)


def large_visitor(executable: str, url: str, photo: Path, start: threading.Barrier, done: threading.Barrier,
                  errors: list[str]) -> None:
    """One of the visitors who upload the large photo at the same moment; closes its browser once all have it."""
    try:
        with browser_page(executable) as page:
            open_app(page, url)
            start.wait()
            upload_any_size(page, photo)
            done.wait()
    except Exception as error:  # a failed visitor is a finding to report
        errors.append(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
        start.abort()
        done.abort()


def run_large(executable: str, url: str, pid: int, photo: Path, settle: float) -> dict:
    """RSS idle, peak and after one upload of ``photo``, then peak and after LARGE_SESSIONS visitors at once, then
    every 5 s for ``settle`` seconds after they closed."""
    report: dict = {"photo": f"{LARGE_SIZE[0]}x{LARGE_SIZE[1]} JPEG, {photo.stat().st_size / 1e6:.1f} MB"}
    with browser_page(executable) as page:
        open_app(page, url)
        time.sleep(2)
        report["idle_mb"] = rss_mb(pid)
        with Sampler(pid) as one:
            began = time.perf_counter()
            upload_any_size(page, photo)
            report["one_seconds"] = time.perf_counter() - began
        report["one_peak_mb"], report["one_after_mb"] = one.peak, rss_mb(pid)
        report["one_captions"] = captions(page)
    print(f"  large: one upload {report['one_seconds']:.0f} s, peak {one.peak:.0f} MB", file=sys.stderr, flush=True)
    errors: list[str] = []
    start, done = threading.Barrier(LARGE_SESSIONS), threading.Barrier(LARGE_SESSIONS)
    threads = [threading.Thread(target=large_visitor, args=(executable, url, photo, start, done, errors))
               for _ in range(LARGE_SESSIONS)]
    with Sampler(pid) as three:
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        report["three_seconds"] = time.perf_counter() - began
    closed = time.perf_counter()
    report["three_peak_mb"], report["three_errors"] = three.peak, errors
    settled = []
    while (waited := time.perf_counter() - closed) < settle:
        settled.append({"seconds": round(waited, 1), "rss_mb": rss_mb(pid)})
        time.sleep(5)
    settled.append({"seconds": round(time.perf_counter() - closed, 1), "rss_mb": rss_mb(pid)})
    report["settled"] = settled
    report["settled_mb"] = settled[-1]["rss_mb"]
    return report


# ------------------------------------------------------------------------------------------------ bad files
def cat(size: tuple[int, int]) -> Image.Image:
    """The built-in cat at ``size`` (width, height), RGB."""
    with Image.open(example_photo()) as opened:
        return ImageOps.fit(opened.convert("RGB"), size, Image.Resampling.BICUBIC)


def cut(data: bytes, fraction: float) -> bytes:
    """The first ``fraction`` of ``data``."""
    return data[: int(len(data) * fraction)]


def encoded(image: Image.Image, kind: str, **options) -> bytes:
    """``image`` saved as ``kind`` (a Pillow format name) in memory."""
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def noisy_png(size: tuple[int, int]) -> bytes:
    """A PNG of the cat with noise (so that the pixel data is large and a cut lands inside it)."""
    pixels = np.asarray(cat(size), np.int16) + np.random.default_rng(0).integers(-20, 21, (size[1], size[0], 3))
    return encoded(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), "PNG")


def with_alpha(image: Image.Image) -> Image.Image:
    """``image`` with an alpha channel fading from opaque (left) to transparent (right)."""
    fade = np.linspace(255, 0, image.width).astype(np.uint8)
    image = image.copy()
    image.putalpha(Image.fromarray(np.tile(fade, (image.height, 1))))
    return image


def frames_gif(size: tuple[int, int]) -> bytes:
    """A palette GIF of three frames (the cat, then colour-shifted copies)."""
    first = np.asarray(cat(size), np.int16)
    frames = [Image.fromarray(np.roll(first, shift, axis=2).astype(np.uint8)).convert("P") for shift in range(3)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)


def rotated_jpeg(size: tuple[int, int]) -> bytes:
    """A JPEG of ``size`` whose EXIF orientation (6) says: turn 90 degrees clockwise to show it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(cat(size), "JPEG", exif=exif.tobytes())


def sixteen_bit(size: tuple[int, int]) -> bytes:
    """A 16-bit greyscale PNG (mode I;16) of the cat."""
    grey = np.asarray(cat(size).convert("L"), np.uint16) * 257
    return encoded(Image.fromarray(grey), "PNG")


def two_frame_mpo(size: tuple[int, int]) -> bytes:
    """An MPO (as some cameras write): the cat, then the cat mirrored as a second frame."""
    first = cat(size)
    return encoded(first, "MPO", save_all=True, append_images=[first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])


# File name -> (what it is, how to make its bytes). Accepted pictures get distinct sizes: their captions tell them
# apart. No underscores in names: the page's Markdown could take them for emphasis.
BAD_FILES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "empty.jpg": ("zero bytes", lambda: b""),
    "words.jpg": ("a text file named .jpg", lambda: b"Not a picture at all, only a few words of text.\n" * 40),
    "cut-short.png": ("a PNG cut short inside its pixel data", lambda: cut(noisy_png((640, 480)), 0.5)),
    "cut-short.jpg": ("a JPEG cut short", lambda: cut(encoded(cat((640, 480)), "JPEG", quality=92), 0.5)),
    "bomb.png": ("20000x20000 one-colour PNG (400 megapixels)",
                 lambda: encoded(Image.new("1", (20000, 20000), 1), "PNG", optimize=True)),
    "too-many-pixels.png": ("10000x8000 one-colour PNG (80 megapixels, under Pillow's own limit)",
                            lambda: encoded(Image.new("1", (10000, 8000), 1), "PNG", optimize=True)),
    "grey16.png": ("16-bit greyscale PNG (I;16), 600x450", lambda: sixteen_bit((600, 450))),
    "cmyk.jpg": ("CMYK JPEG, 620x465", lambda: encoded(cat((620, 465)).convert("CMYK"), "JPEG")),
    "frames.gif": ("palette GIF with 3 frames, 500x375", lambda: frames_gif((500, 375))),
    "rgba.png": ("RGBA PNG, 560x420", lambda: encoded(with_alpha(cat((560, 420))), "PNG")),
    "la.png": ("LA (grey + alpha) PNG, 540x405", lambda: encoded(with_alpha(cat((540, 405)).convert("L")), "PNG")),
    "grey.jpg": ("greyscale JPEG, 580x435", lambda: encoded(cat((580, 435)).convert("L"), "JPEG")),
    "rotated.jpg": ("JPEG 640x400 with EXIF orientation 6 (shows as 400x640)", lambda: rotated_jpeg((640, 400))),
    "photo.tif": ("TIFF, 520x390", lambda: encoded(cat((520, 390)), "TIFF", compression="tiff_lzw")),
    "one-pixel.png": ("1x1 PNG", lambda: encoded(Image.new("RGB", (1, 1), (200, 40, 40)), "PNG")),
    "wide.jpg": ("very wide JPEG, 4000x40 (read at 2048x20)", lambda: encoded(cat((4000, 40)), "JPEG")),
    "camera.jpg": ("MPO (a camera's JPEG with 2 frames), 600x400", lambda: two_frame_mpo((600, 400))),
    "picture.avif": ("AVIF, 300x200 (refused: an AVIF)", lambda: encoded(cat((300, 200)), "AVIF")),
    "icon.ico": ("ICO, 64x64 (refused: an ICO)", lambda: encoded(cat((64, 64)), "ICO")),
}


def expectation(path: Path) -> str:
    """What the dashboard should do with ``path``, from ``load_image``: 'shown at WxH' or 'refused: <why>'."""
    try:
        image = load_image(path.read_bytes(), name=label(path), max_side=DECODE_MAX_SIDE)
    except ImageError as error:
        return f"refused: {error}"
    return f"shown at {image.shape[1]}x{image.shape[0]}"


def outcome(page: Page, path: Path) -> tuple[str, list[str], str]:
    """What the page shows for ``path`` once its run is over: ('shown at WxH' | 'refused: <message>' | 'nothing
    shown', the captions, the page's text)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    page.get_by_text(label(path)).or_(page.get_by_text(FAILED)).first.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_selector(SCRIPT_IDLE, timeout=TIMEOUT_MS)
    lines = [line.strip() for line in page.inner_text("body").splitlines()]
    if label(path) not in lines:  # refused: the label only starts the message; or the explanation failed
        message = next((line for line in lines if label(path) in line or FAILED in line), "")
        return f"refused: {message}" if message else "nothing shown", [], page.inner_text("body")
    with contextlib.suppress(PlaywrightTimeoutError):  # accepted: the label stands alone above the panels
        page.get_by_text(ANY_CAPTION).nth(len(PANEL_METHODS) - 1).wait_for(timeout=CAPTION_WAIT_MS)
    shown = captions(page)
    sizes = sorted({found["size"] for found in map(CAPTION.match, shown) if found})
    return (f"shown at {', '.join(sizes)}" if sizes else "label but no captions"), shown, page.inner_text("body")


def agrees(expected: str, shown: str) -> bool:
    """Whether the page did what ``load_image`` says: showed the picture at its size, or refused it with the
    same words."""
    if expected.startswith("shown"):
        return shown == expected
    return shown.startswith("refused") and expected.removeprefix("refused: ") in shown


def run_bad_files(executable: str, url: str, folder: Path, log: Path) -> list[dict]:
    """Upload every file of ``BAD_FILES`` in one page, one after another, and note what the page shows."""
    rows = []
    with browser_page(executable) as page:
        open_app(page, url)
        for name, (what, make) in BAD_FILES.items():
            path = folder / name
            path.write_bytes(make())
            expected = expectation(path)
            log_before = log.read_text(errors="replace").count("Traceback")
            began = time.perf_counter()
            page.locator(UPLOAD_INPUT).set_input_files(path)
            shown, texts, body = outcome(page, path)
            leaks = sorted(set(LEAKS.findall(body)))
            rows.append({
                "file": name, "what": what, "bytes": path.stat().st_size, "expected": expected, "page": shown,
                "captions": texts, "as_expected": agrees(expected, shown), "leaks": leaks,
                "log_tracebacks": log.read_text(errors="replace").count("Traceback") - log_before,
                "seconds": time.perf_counter() - began,
            })
            print(f"  bad file {name}: {shown[:90]}", file=sys.stderr, flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ report
def print_sessions(sessions: list[Session]) -> None:
    print(f"\n{len(sessions)} simultaneous sessions, one server")
    print(f"{'photo':<14}{'expected':<47}{'shown':<47}{'correct':<9}{'wall s':>7}")
    for s in sessions:
        shown = s.error or brief(s.shown)
        if s.shown_after_all not in ([], s.shown):
            shown += f" (later: {brief(s.shown_after_all)})"
        seconds = f"{s.seconds:.1f}" if s.seconds is not None else "-"
        print(f"{s.photo:<14}{brief(s.expected):<47}{shown:<47}{'yes' if s.correct else 'NO':<9}{seconds:>7}")
    classes = {top_class(s.expected) for s in sessions}
    print(f"distinct expected top classes: {len(classes)} ({', '.join(sorted(classes))}) in {len(sessions)} "
          "sessions; the sizes always differ")


def print_memory(memory: dict) -> None:
    after = ", ".join(f"#{mark}: {mb:.0f} MB" for mark, mb in memory["rss_mb_after"].items())
    slope_text = "n/a" if memory["slope_mb_per_upload"] is None else f"{memory['slope_mb_per_upload']:+.2f} MB/upload"
    print(f"\nserver memory (RSS, server and children) over {len(memory['uploads'])} uploads")
    print(f"before the first upload: {memory['rss_mb_before']:.0f} MB; after upload {after}; "
          f"max {memory['rss_mb_max']:.0f} MB")
    print(f"least-squares slope over uploads {memory['slope_over_uploads']}: {slope_text}")


def print_large(large: dict) -> None:
    idle = large["idle_mb"]
    print(f"\nlarge photo ({large['photo']}), server RSS; idle {idle:.0f} MB")
    print(f"one upload: {large['one_seconds']:.0f} s, peak {large['one_peak_mb']:.0f} MB "
          f"(+{large['one_peak_mb'] - idle:.0f} above idle), after {large['one_after_mb']:.0f} MB")
    errors = "; errors: " + "; ".join(large["three_errors"]) if large["three_errors"] else ""
    print(f"{LARGE_SESSIONS} sessions at once: {large['three_seconds']:.0f} s, peak {large['three_peak_mb']:.0f} MB "
          f"(+{large['three_peak_mb'] - idle:.0f}){errors}")
    marks = ", ".join(f"+{row['seconds']:.0f} s: {row['rss_mb']:.0f} MB" for row in large["settled"][::6])
    print(f"after they closed: {marks}; last {large['settled_mb']:.0f} MB "
          f"({(large['settled_mb'] - idle) / idle:+.1%} of idle)")


def print_bad_files(rows: list[dict]) -> None:
    print(f"\nbad-file corpus, {len(rows)} files, one session")
    print(f"{'file':<21}{'what':<60}{'as expected':<13}{'leaks':<10}{'log tb':>7}")
    for row in rows:
        print(f"{row['file']:<21}{row['what'][:58]:<60}{'yes' if row['as_expected'] else 'NO':<13}"
              f"{','.join(row['leaks']) or 'none':<10}{row['log_tracebacks']:>7}")
        print(f"{'':<21}page: {brief(row['captions']) if row['captions'] else row['page']}")
        if not row["as_expected"]:
            print(f"{'':<21}expected: {row['expected']}")


def measure(parts: set[str], executable: str, pictures: list[Path], sessions: int, uploads: int, out: Path,
            server_root: Path = ROOT, settle: float = 150) -> dict:
    """Run the chosen ``parts`` against one server of ``server_root``; returns the report (the server's log is
    copied beside ``out``)."""
    report: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        series = [variant(pictures[(-1 - i) % len(pictures)], folder / f"upload{i + 1:02d}.jpg", MEMORY_SIZE, i + 1)
                  for i in range(uploads if "memory" in parts else 0)]  # from the end of the list: not the sessions'
        visitors, expected = [], {}
        if "sessions" in parts:
            print("choosing the sessions' photos and computing their captions here...", file=sys.stderr, flush=True)
            visitors, expected = pick_visitors(pictures, folder, sessions)
        log = folder / "streamlit.log"
        started = time.perf_counter()
        with streamlit_server(log, root=server_root) as url:
            print(f"server healthy after {time.perf_counter() - started:.0f} s at {url}", file=sys.stderr, flush=True)
            if "sessions" in parts:
                done = run_sessions(executable, url, visitors, expected)
                report["sessions"] = [{**asdict(s), "correct": s.correct} for s in done]
                print_sessions(done)
            if "memory" in parts:
                report["memory"] = run_memory(executable, url, series, server_pid(int(url.rsplit(":", 1)[1])))
                print_memory(report["memory"])
            if "large" in parts:
                report["large"] = run_large(executable, url, server_pid(int(url.rsplit(":", 1)[1])),
                                            large_photo(folder / "large.jpg"), settle)
                print_large(report["large"])
            if "bad" in parts:
                (folder / "bad").mkdir()
                report["bad_files"] = run_bad_files(executable, url, folder / "bad", log)
                print_bad_files(report["bad_files"])
        report["server_log_tracebacks"] = log.read_text(errors="replace").count("Traceback")
        shutil.copyfile(log, out.with_suffix(".server.log"))
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4, help="simultaneous visitors (default 4)")
    parser.add_argument("--uploads", type=int, default=50, help="uploads of the memory check (default 50)")
    parser.add_argument("--data", default="../shared/data/photos4/test",
                        help="folder of photos, one subfolder per class; relative to the repository's root "
                             "(default ../shared/data/photos4/test; missing: the built-in pictures)")
    parser.add_argument("--out", default="test-output/reliability.json", help="where to write the JSON")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {', '.join(PARTS)}")
    parser.add_argument("--settle", type=float, default=150,
                        help="seconds to follow the server's memory after the large photo's sessions closed")
    parser.add_argument("--server-root", default=str(ROOT),
                        help="the checkout whose dashboard is served (default: this one)")
    args = parser.parse_args()
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    if skip - set(PARTS):
        parser.error(f"--skip takes {', '.join(PARTS)}, not {', '.join(sorted(skip - set(PARTS)))}")
    executable = chromium()
    if executable is None:
        print("needs a chromium binary on PATH or at /usr/bin/chromium", file=sys.stderr)
        return 1
    data = (Path(args.data) if Path(args.data).is_absolute() else ROOT / args.data).resolve()
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    pictures = sources(data)
    report = {"photos_from": "built-in gallery" if pictures[0].parent == EXAMPLES_DIR else str(data),
              "server_root": args.server_root, "skipped": sorted(skip),
              **measure(set(PARTS) - skip, executable, pictures, args.sessions, args.uploads, out,
                        Path(args.server_root).resolve(), args.settle)}
    wrong = [s["photo"] for s in report.get("sessions", []) if not s["correct"]]
    leaking = [row["file"] for row in report.get("bad_files", []) if row["leaks"]]
    report["ok"] = not wrong and not leaking
    print(f"\nserver log: {report['server_log_tracebacks']} traceback(s); see {out.with_suffix('.server.log')}")
    print(f"sessions wrong: {', '.join(wrong) or 'none'}; "
          f"bad files leaking onto the page: {', '.join(leaking) or 'none'}")
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"written to {out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
