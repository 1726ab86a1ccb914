"""Which device TensorFlow computes on, in words a user understands."""

from __future__ import annotations

import functools
import platform

import tensorflow as tf


@functools.cache
def describe_device() -> str:
    """'GPU: <name>' when TensorFlow sees a GPU (it then places work there by itself), else 'CPU: <name>'."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)}" + (
            f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else ""
        )
    return f"CPU: {cpu_name()} ({tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads)"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
