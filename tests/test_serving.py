"""cam.serving: fast passes never wait behind slow work's whole run, a cache bounded in bytes, a prompt exit."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cam.serving import BoundedCache, ModelGate, Views, nbytes

ROOT = Path(__file__).resolve().parent.parent


def wait_until(condition) -> None:
    while not condition():
        time.sleep(0.005)


def test_a_fast_pass_goes_between_two_batches_of_slow_work() -> None:
    gate, order = ModelGate(), []

    def fast() -> None:
        with gate.fast():
            order.append("fast")

    with gate.slow() as step_aside:
        for batch in range(4):
            order.append(f"slow {batch}")
            if batch == 1:
                visitor = threading.Thread(target=fast)
                visitor.start()
                wait_until(lambda: gate.fast_waiting == 1)
            step_aside()
    visitor.join()
    assert order == ["slow 0", "slow 1", "fast", "slow 2", "slow 3"]


def test_slow_work_waits_its_turn_and_can_give_up_while_waiting() -> None:
    gate, ticks = ModelGate(), []

    class Cancelled(Exception):
        pass

    def waiting() -> None:
        ticks.append(1)
        raise Cancelled

    with gate.slow():
        with pytest.raises(Cancelled):
            with gate.slow(waiting=waiting):
                pass  # never reached: the first slow work holds the turn
    assert ticks == [1]
    with gate.fast():  # nothing was left held
        pass
    with gate.slow():
        pass


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
    script = ("import threading, cam.serving as s\n"
              "s.exit_promptly_when_stopped(lambda: True, grace_s=0.5)\n"
              "threading.Event().wait()  # the main thread never returns, as in a hang\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60, capture_output=True)
    assert done.returncode == 0


def test_slow_work_pauses_while_another_visitors_view_is_under_way() -> None:
    views = Views()
    gate, order = ModelGate(views), []
    started, finish = threading.Event(), threading.Event()

    def visitor() -> None:  # a view: under way until its panels are sent, whether or not it uses this model
        with views.view():
            started.set()
            finish.wait()
            order.append("view's panels sent")
            views.leave()
            order.append("view's last steps")

    with views.view():  # the slow work's own view does not hold it back
        with gate.slow() as step_aside:
            order.append("slow 0")
            thread = threading.Thread(target=visitor, daemon=True)
            thread.start()
            started.wait()
            threading.Timer(0.3, finish.set).start()
            assert views.under_way == 1
            step_aside()  # waits for the visitor's panels
            order.append("slow 1")
    thread.join(5)
    assert order.index("slow 1") > order.index("view's panels sent") and views.under_way == 0
