"""cam.serve.server: a cache bounded in bytes, a prompt exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from cam.serve.server import BoundedCache, nbytes

ROOT = Path(__file__).resolve().parent.parent


def test_the_cache_is_bounded_in_bytes_and_entries() -> None:
    cache = BoundedCache(max_bytes=3_500, max_entries=10)  # three of the entries below
    for key in "abc":
        cache.put(key, (np.zeros(1000, np.uint8), 1.0))
    assert cache.get("a") is not None  # now the most recently used
    cache.put("d", np.zeros(1000, np.uint8))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("d") is not None
    cache.put("huge", np.zeros(10_000, np.uint8))
    assert cache.get("huge") is None
    entries, held = cache.size
    assert entries == 3 and held <= 3_500
    assert nbytes({"maps": [np.zeros((2, 3), np.float32)]}) == 24 + 64 + 64


def test_a_stopped_process_whose_main_thread_hangs_ends_by_itself() -> None:
    script = ("import threading, cam.serve.server as s\n"
              "s.exit_promptly_when_stopped(lambda: True, grace_s=0.5)\n"
              "threading.Event().wait()  # the main thread never returns, as in a hang\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60, capture_output=True)
    assert done.returncode == 0


