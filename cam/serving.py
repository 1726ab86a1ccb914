"""What a public dashboard server needs beyond the page itself, with nothing of Streamlit in it: a model lock under
which the study's fast pass never waits behind a slow method of another visitor (and slow work pauses while other
visitors' views are under way), a cache bounded in bytes, and a prompt exit when the server is told to stop."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator

import numpy as np

log = logging.getLogger(__name__)
WAIT_TICK_S = 0.5  # how often a slow method waiting for its turn reports that it is still waiting
VIEW_TICK_S = 0.05  # how often slow work that waits for visitors' views checks whether they are done


class Views:
    """Visitors' views under way: each from the start of a run of the page's script (``view``) until its panels are
    sent or it turns to slow work (``leave``), counted per thread (Streamlit runs each script run in a thread of its
    own). Slow work waits between its batches while any is under way, so that another visitor's view has the
    processor to itself, not only the models: on a small machine the slow work's batches otherwise take half of it
    from that view's decoding and drawing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: set[int] = set()

    @contextlib.contextmanager
    def view(self) -> Iterator[None]:
        """This thread's view is under way within the block (unless it ``leave``s earlier)."""
        with self._lock:
            self._threads.add(threading.get_ident())
        try:
            yield
        finally:
            self.leave()

    def leave(self) -> None:
        """This thread's view no longer goes first (its panels are sent, or it starts slow work)."""
        with self._lock:
            self._threads.discard(threading.get_ident())

    @property
    def under_way(self) -> int:
        with self._lock:
            return len(self._threads)


class ModelGate:
    """The lock of one model shared by every session, where fast work goes first.

    Fast work (the fused pass of the study's three methods, about a second) holds the model for its whole pass.
    Slow work (Score-CAM: hundreds of passes, a minute and more on a CPU) runs one at a time, takes the model only
    when no fast work waits and no visitor's view is under way (``views``, shared by the gates of all models), and
    between its batches calls ``step_aside``, which lets every fast pass and view waiting go first. So one
    visitor's slow method delays another's three panels by at most one batch, never by its whole run.
    """

    def __init__(self, views: Views | None = None) -> None:
        self._state = threading.Condition()
        self._busy = False
        self._fast_waiting = 0
        self._slow_turn = threading.Lock()  # slow work queues here, one at a time
        self._views = views

    @contextlib.contextmanager
    def fast(self) -> Iterator[None]:
        """Hold the model for one fast pass, ahead of any slow work that waits."""
        with self._state:
            self._fast_waiting += 1
            try:
                self._state.wait_for(lambda: not self._busy)
            finally:
                self._fast_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextlib.contextmanager
    def slow(self, waiting: Callable[[], None] | None = None) -> Iterator[Callable[[], None]]:
        """Hold the model for slow work; yields ``step_aside``, to be called between its batches. While the turn of
        another slow work or a fast pass lasts, ``waiting()`` is called every WAIT_TICK_S seconds (it may raise to
        give up, e.g. when the visitor cancels)."""
        if self._views is not None:
            self._views.leave()  # this thread's own view must not hold its slow work back
        while not self._slow_turn.acquire(timeout=WAIT_TICK_S):
            if waiting:
                waiting()
        try:
            self._take_when_free(waiting)
            try:
                yield self.step_aside
            finally:
                self._release()
        finally:
            self._slow_turn.release()

    @property
    def fast_waiting(self) -> int:
        """How many fast passes wait for the model now."""
        with self._state:
            return self._fast_waiting

    def step_aside(self) -> None:
        """Called by slow work between batches: when fast passes wait or views are under way, let them all finish,
        then go on."""
        with self._state:
            if not self._fast_waiting and not self._views_under_way():
                return
            self._busy = False
            self._state.notify_all()
        self._take_when_free(None)

    def _views_under_way(self) -> bool:
        return self._views is not None and self._views.under_way > 0

    def _take_when_free(self, waiting: Callable[[], None] | None) -> None:
        """Take the model once it is free, no fast pass waits and no view is under way; ``waiting()`` is called
        every WAIT_TICK_S seconds meanwhile. Views are polled (every VIEW_TICK_S): they end without a signal here."""
        def free() -> bool:
            return not self._busy and not self._fast_waiting and not self._views_under_way()

        since = time.monotonic()
        while True:
            with self._state:
                if self._state.wait_for(free, timeout=VIEW_TICK_S):
                    self._busy = True
                    return
            if waiting and time.monotonic() - since >= WAIT_TICK_S:
                waiting()
                since = time.monotonic()

    def _release(self) -> None:
        with self._state:
            self._busy = False
            self._state.notify_all()


def nbytes(value: object) -> int:
    """The bytes of the arrays in ``value`` (an array, or a dict, list or tuple of them, or an object with a
    ``__dict__`` holding them), plus a little for everything else."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(nbytes(item) for item in value.values()) + 64
    if isinstance(value, (list, tuple)):
        return sum(nbytes(item) for item in value) + 64
    if hasattr(value, "__dict__"):
        return nbytes(vars(value))
    return 64


class BoundedCache:
    """A least-recently-used cache bounded in bytes (``nbytes``) and in entries; safe to share between threads.
    A value larger than the whole budget is not kept."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._items: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> object | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: Hashable, value: object) -> None:
        size = nbytes(value)
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            if size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes or len(self._items) > self.max_entries:
                self._bytes -= self._items.popitem(last=False)[1][1]

    @property
    def size(self) -> tuple[int, int]:
        """(entries, bytes) held now."""
        with self._lock:
            return len(self._items), self._bytes


_trim_started = threading.Event()


def return_free_memory_every(seconds: float) -> bool:
    """Start (once per process) a daemon thread that hands the C heap's free pages back to the system every
    ``seconds`` (glibc's ``malloc_trim(0)``); returns whether it started one now (False elsewhere than glibc).

    Why: a photo's view allocates and frees a few hundred MB of arrays (decoding, panels, PNGs); glibc keeps the
    freed pages of its heaps for reuse, so after three visitors of a large photo had left, the server stayed 12%
    above its idle size for good. A trim costs milliseconds and frees nothing in use."""
    if _trim_started.is_set() or not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False
    _trim_started.set()
    log.info("returning the C heap's free memory to the system every %.0f s (malloc_trim)", seconds)

    def run() -> None:
        while True:
            time.sleep(seconds)
            trim(0)

    threading.Thread(target=run, name="malloc-trim", daemon=True).start()
    return True


_exit_installed = threading.Event()


def exit_promptly_when_stopped(stopping: Callable[[], bool], grace_s: float = 5.0) -> bool:
    """Make a server process that has been told to stop (SIGTERM) end within seconds; once per process, returns
    whether it installed anything now.

    Why: at interpreter exit TensorFlow's BLAS/oneDNN thread pools shut down in C++ exit handlers; with a map still
    computing in Streamlit's script thread (a daemon) that shutdown hung for good in 2 of 5 tries, so a supervisor
    would need SIGKILL. Two measures, both after Streamlit's own stop has closed every session and the port:
    - at exit (``atexit``, which runs once Python has joined its non-daemon threads and before those C++ handlers),
      the logs are flushed and the process ends with ``os._exit(0)``, skipping the handlers that hang;
    - a watchdog thread does the same ``grace_s`` seconds after ``stopping()`` turned true, should the main thread
      hang before reaching its exit.
    Nothing is lost by skipping them: the server keeps no files open for writing, and its state lives in memory.
    """
    if _exit_installed.is_set():
        return False
    _exit_installed.set()
    atexit.register(_end_now, "the process exits")

    def watch() -> None:
        while not stopping():
            time.sleep(0.2)
        time.sleep(grace_s)
        _end_now(f"the server stopped {grace_s:.0f} s ago and the process is still here")

    threading.Thread(target=watch, name="exit-when-stopped", daemon=True).start()
    return True


def _end_now(why: str) -> None:
    log.info("ending the process with os._exit(0): %s (TensorFlow's exit handlers can hang)", why)
    for handler in logging.getLogger().handlers + logging.getLogger("streamlit").handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)
