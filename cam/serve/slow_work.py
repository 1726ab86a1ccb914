"""Slow methods (Score-CAM: hundreds of passes, a minute and more on a CPU) in a child process at the lowest
scheduling priority, so that one visitor's slow method does not slow down another visitor's three panels: the
operating system gives the server's own threads the processor whenever they want it, and the child what is left.
Nothing of Streamlit in it.

Why a process: within the server, slow work and the fast passes share TensorFlow's thread pool, so pausing the slow
work between its batches (the earlier design) still left another visitor's upload 1.7 times slower than alone on 2
cores (the batch under way, and every step that does not pause). A thread's priority cannot be lowered for work that
runs on a shared pool; a process's can (``nice`` 19), and it can be paused outright while another visitor's page is
being drawn (``SlowWorker.view``). Measured: ``benchmarks/bench_fairness.py``, figures in the README.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # for the hint only: this module itself needs no TensorFlow (cam.models loads it)
    from cam.models.checkpoints import LoadedModel

log = logging.getLogger(__name__)
NICENESS = 19  # the lowest priority: the child runs on what the server leaves
TICK_S = 0.5  # how often a caller that waits (its turn, the child's start, a long batch) is called back
PAUSE, RESUME = getattr(signal, "SIGSTOP", None), getattr(signal, "SIGCONT", None)  # neither on Windows
# A child idle this long ends, handing back its memory (about 1.3 GB after a Score-CAM of the photo VGG16: TensorFlow,
# the model, buffers of its passes); the next slow method starts another (about 10 s).
IDLE_S = 120.0


class SlowWorkError(RuntimeError):
    """The slow work's process stopped or its method failed."""


class _Cancelled(Exception):
    """Raised in the child between batches when the caller gave up."""


def _child(connection: Connection, cancel: Event, niceness: int, batch: int) -> None:
    """The child's loop: ("model", name, LoadedModel) messages keep a model by name; ("job", method key, name,
    layer, classes, x) messages compute a map, answered by ("progress", done, total) after each batch and then
    ("done", maps), ("cancelled",) or ("error", sentence). Ends when the server's end of the pipe closes."""
    with contextlib.suppress(AttributeError, OSError):  # no priorities on Windows: the child runs at normal ones
        os.setpriority(os.PRIO_PROCESS, 0, niceness)  # as the parent set it (os.nice would add to it)
    with contextlib.suppress(AttributeError, OSError):
        # A process group of its own in the server's session: should the server die while this child is paused
        # (SIGSTOP), the group becomes orphaned and the system sends it SIGHUP, which ends it.
        os.setpgid(0, 0)
    if hasattr(signal, "SIGHUP"):  # a server started under nohup ignores SIGHUP, and a child inherits that
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    import cam.models.checkpoints  # noqa: F401  (the models' custom layers, before a model arrives)
    from cam.explain.methods import in_steps
    from cam.explain.registry import METHODS
    from cam.serve.server import return_free_memory_every

    return_free_memory_every()  # a job's passes free hundreds of MB the C heap would otherwise keep

    models = {}
    with contextlib.suppress(EOFError, OSError, KeyboardInterrupt):  # the server went away: end quietly
        while True:
            message = connection.recv()
            if message[0] == "model":
                models[message[1]] = message[2]
                continue
            _, key, name, layer, classes, x = message

            def between_batches(done: int, total: int) -> None:
                connection.send(("progress", done, total))
                if cancel.is_set():
                    raise _Cancelled

            try:
                with in_steps(between_batches, batch):
                    reply = ("done", METHODS[key].compute(models[name].model, x, classes, layer))
            except _Cancelled:
                reply = ("cancelled",)
            except (EOFError, OSError):
                return
            except Exception as error:  # the method's own failure goes back to the server's log
                reply = ("error", f"{type(error).__name__}: {error}")
            connection.send(reply)


class _Child:
    """The child process, its pipe and its cancel flag; ``close`` ends it (also when its SlowWorker is dropped)."""

    def __init__(self, niceness: int, batch: int) -> None:
        context = multiprocessing.get_context("spawn")  # forking a process that runs TensorFlow's threads is unsafe
        self.connection, child_end = context.Pipe()
        self.cancel = context.Event()
        self.process = context.Process(target=_child, args=(child_end, self.cancel, niceness, batch),
                                       name="cam-slow-work", daemon=True)
        self.process.start()
        # At once from here too: the child's own setpriority comes only after Python's start-up and the unpickling
        # of its arguments (seconds of importing, at normal priority, measured competing with other visitors).
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, self.process.pid, niceness)
        child_end.close()
        self.models: set[str] = set()
        self.pending = False  # a cancelled job whose last answer has not been read yet
        log.info("started process %d for slow methods at niceness %d", self.process.pid, niceness)

    def send_signal(self, number: int) -> None:
        with contextlib.suppress(OSError):  # ended meanwhile
            os.kill(self.process.pid, number)

    def close(self) -> None:
        self.resume()
        self.connection.close()  # the child reads EOF and ends
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()

    def pause(self) -> None:
        if PAUSE is not None:
            self.send_signal(PAUSE)

    def resume(self) -> None:
        if RESUME is not None:
            self.send_signal(RESUME)


class SlowWorker:
    """Computes slow methods' maps in one child process at ``niceness``, one job at a time, in batches of
    ``batch`` passes. Started on first use; a child that died is replaced on the next job.

    The child is also paused (SIGSTOP, where the system has it) while any visitor's view is under way (``view``),
    from the start of its page's run until its panels are sent (``leave``): even at the lowest priority it took
    about a third of another visitor's upload time on 2 cores (the caches and memory it shares), paused it takes
    none. A child idle for ``idle_s`` seconds ends (its memory goes back to the system)."""

    def __init__(self, batch: int, niceness: int = NICENESS, idle_s: float = IDLE_S) -> None:
        self.batch, self.niceness, self.idle_s = batch, niceness, idle_s
        self._turn = threading.Lock()
        self._idle_timer: threading.Timer | None = None
        self._child: _Child | None = None
        self._finalizer: weakref.finalize | None = None
        self._views: set[int] = set()  # the threads whose view is under way
        self._views_lock = threading.Lock()

    @contextlib.contextmanager
    def view(self) -> Iterator[None]:
        """This thread's view is under way within the block (unless it ``leave``s earlier): the child pauses."""
        with self._views_lock:
            self._views.add(threading.get_ident())
            if len(self._views) == 1 and self._child is not None:
                self._child.pause()
        try:
            yield
        finally:
            self.leave()

    def leave(self) -> None:
        """This thread's view is over (its panels are sent, or it turns to slow work of its own)."""
        with self._views_lock:
            if threading.get_ident() in self._views:
                self._views.discard(threading.get_ident())
                if not self._views and self._child is not None:
                    self._child.resume()

    @property
    def pid(self) -> int | None:
        """The child's process id, None before it started."""
        return self._child.process.pid if self._child else None

    def compute(
        self, key: str, name: str, loaded: LoadedModel, layer: str | None, classes: np.ndarray, x: np.ndarray,
        progress: Callable[[int, int], None],
    ) -> np.ndarray:
        """The maps of registry method ``key`` on ``loaded`` (a LoadedModel, sent to the child once under ``name``)
        for model input ``x`` and ``classes``. ``progress(done, total)`` is called after each batch, and as (0, 0)
        every TICK_S before the first (while the job waits its turn or the child starts); an exception it raises (the
        visitor cancelled) gives the job up and goes through. Not more often: on a page each call redraws the
        visitor's progress bar, work that competes with other visitors'. Raises SlowWorkError if the child stops or
        the method fails."""
        last = (0, 0)

        def tick() -> None:
            if not last[1]:
                progress(0, 0)

        self.leave()  # this visitor's own view must not hold back its slow work
        while not self._turn.acquire(timeout=TICK_S):
            tick()
        try:
            child = self._started()
            if child.pending:  # the answer of a job given up before: the child stops it at its next batch
                while self._receive(child, tick)[0] == "progress":
                    pass
                child.cancel.clear()
                child.pending = False
            if name not in child.models:
                child.connection.send(("model", name, loaded))
                child.models.add(name)
            child.connection.send(("job", key, name, layer, classes, x))
            child.pending = True
            while True:
                message = self._receive(child, tick)
                if message[0] != "progress":
                    break
                last = message[1:]
                progress(*last)
            child.pending = False
            if message[0] == "done":
                return message[1]
            raise SlowWorkError(f"{key} failed in the slow-work process: {message[1]}")
        except BaseException:
            if self._child is not None and self._child.pending:
                self._child.cancel.set()  # the child stops at its next batch; the next job reads its answer
            raise
        finally:
            self._end_when_idle()
            self._turn.release()

    def _end_when_idle(self) -> None:
        """(Re)start the countdown after which an idle child ends; called holding the turn."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = threading.Timer(self.idle_s, self._end_if_idle)
        self._idle_timer.daemon = True
        self._idle_timer.start()

    def _end_if_idle(self) -> None:
        if not self._turn.acquire(blocking=False):  # a job runs; it restarts the countdown when done
            return
        try:
            if self._child is not None:
                log.info("ending the slow-work process %d: idle for %.0f s", self._child.process.pid, self.idle_s)
                self._end_child()
        finally:
            self._turn.release()

    def _started(self) -> _Child:
        if self._child is None or not self._child.process.is_alive():
            if self._child is not None:
                log.warning("the slow-work process %d had stopped (exit code %s); starting another",
                            self._child.process.pid, self._child.process.exitcode)
                self._end_child()
            with self._views_lock:
                self._child = _Child(self.niceness, self.batch)
                if self._views:
                    self._child.pause()
            self._finalizer = weakref.finalize(self, self._child.close)
        return self._child

    def _receive(self, child: _Child, tick: Callable[[], None]) -> tuple:
        """The child's next message; ``tick()`` every TICK_S until it comes."""
        try:
            while not child.connection.poll(TICK_S):
                if not child.process.is_alive():
                    raise SlowWorkError(f"the slow-work process stopped (exit code {child.process.exitcode})")
                tick()
            return child.connection.recv()
        except (EOFError, OSError) as error:
            # Its pipe closes while it dies, before is_alive() turns False: end it here, so the next job starts
            # another instead of finding this one "alive".
            self._end_child()
            raise SlowWorkError(f"the slow-work process stopped ({type(error).__name__})") from error

    def _end_child(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # the child's close, once
        self._child = None

    def close(self) -> None:
        """End the child (a later job starts another)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        with self._turn:
            self._end_child()
