"""Running work on Ray: joining a cluster or starting one in this process, and sharing the machine's cores among
the workers. Used by the report's parts (``cam.evaluate.parallel``) and the batch job (``cam.serve.batch``)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

from cam.core.catalog import PROJECT_ROOT

CONNECT_SECONDS = 5.0  # how long to wait for a cluster's port before saying it cannot be reached
OBJECT_STORE_BYTES = 1 << 30  # a local Ray's object store; only file names and short rows travel through it


class ClusterError(ValueError):
    """The Ray cluster could not be reached or joined."""


def limit_threads(threads: int) -> None:
    """TensorFlow's thread pools for a worker: ``threads`` per operation, one operation at a time (several
    workers share the machine's cores). Only possible before TensorFlow's first operation in the process; later
    (a worker inside a process that already computed) the process's settings stay."""
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def check_reachable(address: str, timeout: float = CONNECT_SECONDS) -> None:
    """Raise ClusterError unless something answers on the cluster address's port within ``timeout`` seconds (Ray
    itself retries for minutes). ``auto`` (the cluster started on this machine) is left to Ray."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except ValueError as error:
        raise ClusterError(f"the Ray address '{address}' is not of the form HOST:PORT (e.g. 127.0.0.1:6379)") from error
    except OSError as error:
        raise ClusterError(f"no Ray cluster answers at {address} ({error.strerror or error}); start one there with "
                         "`ray start --head`, or leave out --address to run on this machine") from error


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: ``address``, else ``$RAY_ADDRESS``; None: start Ray here."""
    return address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(address: str | None, cpus: int) -> Iterator[None]:
    """Ray for the duration of a run: the session already open in this process if any, else the cluster at
    ``cluster_address(address)`` (checked reachable), else a local Ray in this process with ``cpus`` CPUs and a
    small object store. Workers get this project on their path and its checkpoints folder. Shuts down only what it
    started."""
    import ray

    from cam.core.catalog import CHECKPOINTS

    address = cluster_address(address)
    if address:
        check_reachable(address)
    if ray.is_initialized():
        yield
        return
    paths = [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths), "CAM_CHECKPOINTS": str(CHECKPOINTS.resolve()),
                                "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}}
    if address:
        try:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        except (ConnectionError, ray.exceptions.RayError) as error:
            raise ClusterError(f"could not join the Ray cluster at {address} ({str(error).splitlines()[0]}); a cluster "
                             "with token authentication (Ray's default) needs RAY_AUTH_MODE=token and its token "
                             "here too (~/.ray/auth_token or $RAY_AUTH_TOKEN)") from error
    else:
        # log_to_driver=False: the workers' TensorFlow start-up lines would bury the progress bar; their failures
        # still come back as exceptions.
        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                 runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def worker_threads(workers: int) -> int:
    """TensorFlow threads per worker: this machine's cores shared among the workers."""
    return max(1, (os.cpu_count() or 1) // max(workers, 1))
