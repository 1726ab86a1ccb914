"""What a public dashboard server needs beyond the page itself, with nothing of Streamlit in it: a cache bounded in
bytes, the C heap's free memory handed back, and a prompt exit when the server is told to stop. (Slow methods run
apart, at low priority: ``cam.serve.slow_work``.)"""

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
from collections.abc import Callable, Hashable

import numpy as np

log = logging.getLogger(__name__)
TRIM_EVERY_S = 20  # how often freed C-heap memory goes back to the system (return_free_memory_every)


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


def return_free_memory_every(seconds: float = TRIM_EVERY_S) -> bool:
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
