"""cam.serve.slow_work: slow methods computed in a child process at the lowest priority give the same maps as in this
process, report progress, can be cancelled, and survive the child's death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from cam.explain.methods import in_steps
from cam.explain.registry import METHODS
from cam.models.checkpoints import LoadedModel
from cam.serve.slow_work import NICENESS, SlowWorker, SlowWorkError

BATCH = 2
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # each child imports TensorFlow


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    """A 16x16 conv net whose 6-channel layer ``conv`` feeds GAP -> softmax: Score-CAM takes 1 + 6 passes per image
    (no channel is constant on the noise images below), so in batches of 2 it reports progress 4 times."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv", bias_initializer="ones")(inputs)
    outputs = layers.Dense(4, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    card = {"name": "tiny", "classes": ["bird", "cat", "dog", "horse"], "input_size": 16, "gradcam_layer": "conv"}
    return LoadedModel(keras.Model(inputs, outputs), card)


@pytest.fixture(scope="module")
def worker():
    worker = SlowWorker(BATCH)
    yield worker
    worker.close()


IMAGES = np.random.default_rng(1).uniform(0, 1, (1, 16, 12, 3)).astype(np.float32)
CLASSES = np.array([2])


def here(tiny: LoadedModel) -> np.ndarray:
    with in_steps(lambda done, total: None, BATCH):
        return METHODS["score_cam"].compute(tiny.model, IMAGES, CLASSES, "conv")


def test_maps_equal_this_process_and_progress_is_reported(worker: SlowWorker, tiny: LoadedModel) -> None:
    calls = []
    maps = worker.compute("score_cam", "tiny", tiny, "conv", CLASSES, IMAGES, lambda *call: calls.append(call))
    np.testing.assert_allclose(maps, here(tiny), rtol=1e-6, atol=1e-7)
    assert maps.shape == (1, 16, 12) and maps.max() > 0
    done = [call for call in calls if call[1]]  # (0, 0): waiting for the child to start
    assert sorted(set(done)) == [(3, 7), (5, 7), (7, 7)]  # 1 + 6 passes: after the masked batches 2-3, 4-5, 6-7
    assert done == sorted(done)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the child's priority the Linux way")
def test_the_child_runs_at_the_lowest_priority(worker: SlowWorker, tiny: LoadedModel) -> None:
    worker.compute("score_cam", "tiny", tiny, "conv", CLASSES, IMAGES, lambda *call: None)
    assert os.getpriority(os.PRIO_PROCESS, worker.pid) == NICENESS == 19


def test_a_cancelled_job_stops_and_the_next_one_is_right(worker: SlowWorker, tiny: LoadedModel) -> None:
    class Gone(Exception):
        pass

    def cancel(done: int, total: int) -> None:
        if done:
            raise Gone

    with pytest.raises(Gone):
        worker.compute("score_cam", "tiny", tiny, "conv", CLASSES, IMAGES, cancel)
    maps = worker.compute("score_cam", "tiny", tiny, "conv", CLASSES, IMAGES[:, ::-1], lambda *call: None)
    with in_steps(lambda done, total: None, BATCH):
        expected = METHODS["score_cam"].compute(tiny.model, IMAGES[:, ::-1], CLASSES, "conv")
    np.testing.assert_allclose(maps, expected, rtol=1e-6, atol=1e-7)


def test_a_failing_method_is_a_clear_error_and_the_child_goes_on(worker: SlowWorker, tiny: LoadedModel) -> None:
    with pytest.raises(SlowWorkError, match="score_cam failed in the slow-work process: .*no_such_layer"):
        worker.compute("score_cam", "tiny", tiny, "no_such_layer", CLASSES, IMAGES, lambda *call: None)
    pid = worker.pid
    worker.compute("score_cam", "tiny", tiny, "conv", CLASSES, IMAGES, lambda *call: None)
    assert worker.pid == pid


def test_a_killed_child_is_an_error_then_replaced(worker: SlowWorker, tiny: LoadedModel) -> None:
    def kill_once(done: int, total: int) -> None:
        if done and not killed:
            killed.append(worker.pid)
            os.kill(worker.pid, signal.SIGKILL)

    killed = []
    with pytest.raises(SlowWorkError, match="the slow-work process stopped"):
        worker.compute("score_cam", "tiny", tiny, "conv", CLASSES, IMAGES, kill_once)
    maps = worker.compute("score_cam", "tiny", tiny, "conv", CLASSES, IMAGES, lambda *call: None)
    assert worker.pid != killed[0]
    np.testing.assert_allclose(maps, here(tiny), rtol=1e-6, atol=1e-7)


def test_two_visitors_at_once_each_get_their_own_maps(worker: SlowWorker, tiny: LoadedModel) -> None:
    results = {}

    def visitor(name: str, images: np.ndarray) -> None:
        results[name] = worker.compute("score_cam", "tiny", tiny, "conv", CLASSES, images, lambda *call: None)

    threads = [threading.Thread(target=visitor, args=(name, images))
               for name, images in (("a", IMAGES), ("b", IMAGES[:, :, ::-1]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    np.testing.assert_allclose(results["a"], here(tiny), rtol=1e-6, atol=1e-7)
    assert results["b"].shape == (1, 16, 12) and not np.allclose(results["a"], results["b"])


def test_close_ends_the_child(tiny: LoadedModel) -> None:
    worker = SlowWorker(BATCH)
    worker.compute("score_cam", "tiny", tiny, "conv", CLASSES, IMAGES, lambda *call: None)
    child = worker._child.process
    worker.close()
    assert not child.is_alive() and child.exitcode == 0


def state(pid: int, hoped: str) -> str:
    """The process's state letter (Linux: T when stopped), once it is ``hoped`` or after a second (a signal takes
    effect when the process next runs)."""
    for _ in range(100):
        try:
            letter = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:  # ended and reaped
            return "gone"
        if letter == hoped or (hoped != "T" and letter != "T"):
            break
        time.sleep(0.01)
    return letter


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the child's state the Linux way")
def test_the_child_pauses_while_another_visitors_view_is_under_way(worker: SlowWorker, tiny: LoadedModel) -> None:
    worker.compute("score_cam", "tiny", tiny, "conv", CLASSES, IMAGES, lambda *call: None)  # started
    with worker.view():
        assert state(worker.pid, "T") == "T"
        result, progress = {}, []

        def visitor() -> None:  # B's own view (in its thread) does not hold back its job; A's (here) does
            with worker.view():
                result["maps"] = worker.compute("score_cam", "tiny", tiny, "conv", CLASSES, IMAGES,
                                                lambda *call: progress.append(call))

        other = threading.Thread(target=visitor)
        other.start()
        other.join(timeout=3)
        assert other.is_alive() and not [call for call in progress if call[1]]  # no batch done while paused
    other.join()
    assert state(worker.pid, "R") != "T"
    np.testing.assert_allclose(result["maps"], here(tiny), rtol=1e-6, atol=1e-7)


ORPHAN = """
import os, time
import keras, numpy as np
from cam.models.checkpoints import LoadedModel
from cam.serve.slow_work import SlowWorker
inputs = keras.Input((None, None, 3))
x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inputs)
model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
worker = SlowWorker(2)
worker.compute("score_cam", "tiny", LoadedModel(model, {"name": "tiny"}), "conv", np.array([1]),
               np.ones((1, 8, 8, 3), np.float32), lambda *call: None)
paused = worker.view()
paused.__enter__()
time.sleep(0.5)
print(open(f"/proc/{worker.pid}/stat").read().rsplit(")", 1)[1].split()[0], worker.pid, flush=True)
os._exit(0)  # as the server ends at a stop: no clean-up
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the child's state the Linux way")
@pytest.mark.parametrize("hangup", [signal.SIG_DFL, signal.SIG_IGN], ids=["plain", "under nohup"])
def test_a_paused_child_ends_when_the_server_dies(tmp_path: Path, hangup: signal.Handlers) -> None:
    with open(tmp_path / "out", "w") as out:  # not a pipe: a child left behind would hold it open
        subprocess.run([sys.executable, "-c", ORPHAN], cwd=ROOT, stdout=out, stderr=subprocess.DEVNULL, timeout=300,
                       preexec_fn=lambda: signal.signal(signal.SIGHUP, hangup))  # nohup: the server ignores SIGHUP
    letter, pid = (tmp_path / "out").read_text().split()[-2:]
    pid = int(pid)
    assert letter == "T"  # paused when its server died
    # Ended (gone, or a zombie not yet reaped) within 60 s: the child runs at the lowest priority, so on cores busy
    # with other work its many threads can take several seconds to be torn down (seen: over 10 s beside a report).
    deadline = time.monotonic() + 60  # state() returns at once for a running child: the wait keeps its own clock
    while state(pid, "Z") not in ("Z", "gone"):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the paused child {pid} outlived its server")
        time.sleep(0.1)


def test_an_idle_child_ends_and_the_next_job_starts_another(tiny: LoadedModel) -> None:
    worker = SlowWorker(BATCH, idle_s=1.0)
    worker.compute("score_cam", "tiny", tiny, "conv", CLASSES, IMAGES, lambda *call: None)
    first = worker._child.process
    first.join(timeout=30)  # ends by itself, a second after its job
    for _ in range(200):  # and the worker lets go of it (the timer's thread, just after the exit)
        if worker.pid is None:
            break
        time.sleep(0.05)
    assert first.exitcode == 0 and worker.pid is None
    maps = worker.compute("score_cam", "tiny", tiny, "conv", CLASSES, IMAGES, lambda *call: None)
    np.testing.assert_allclose(maps, here(tiny), rtol=1e-6, atol=1e-7)
    worker.close()
