"""Which device TensorFlow computes on, in words a user understands."""

from __future__ import annotations

import functools
import platform

import tensorflow as tf

from cam.core.catalog import PRECISIONS


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


@functools.cache
def fast_bfloat16() -> bool:
    """Whether bfloat16 is faster than float32 here: on a GPU, or a CPU with AMX or AVX512-BF16 (elsewhere
    TensorFlow emulates it, and a VGG16 training step ran 12x slower than in float32)."""
    if tf.config.list_physical_devices("GPU"):
        return True
    try:
        with open("/proc/cpuinfo") as info:
            flags = info.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def chosen_precision(precision: str) -> str:
    """"bfloat16" or "float32" for a ``--precision`` (one of cam.core.catalog.PRECISIONS): "auto" is bfloat16 where it
    is fast here (``fast_bfloat16``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bfloat16" if fast_bfloat16() else "float32"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
