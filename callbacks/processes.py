"""Several processes training together (`keras.distribution.initialize` on JAX).

Every process runs the same script; process 0, the chief, writes what is written once
(CSV rows, MLflow records, `.keras` files, progress). Decisions that end a loop early are
taken together, so that no process is left waiting in a step the others never run.
Without several processes each helper is a plain pass-through.
"""
from __future__ import annotations

import keras
import numpy as np


def process_count() -> int:
    """How many processes train together (1 without `keras.distribution.initialize`)."""
    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def process_index() -> int:
    """This process's index among those training together (0 alone)."""
    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def is_chief() -> bool:
    """Whether this process writes for all of them (process 0; always True alone)."""
    return process_index() == 0


def agree(value: int) -> int:
    """Process 0's `value` on every process (a seed drawn in each, for instance)."""
    if process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, dtype=np.int64)))


def any_process(*flags: bool) -> tuple[bool, ...]:
    """For each flag, whether it is True on any process (one collective for all)."""
    if process_count() == 1:
        return tuple(bool(flag) for flag in flags)
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(np.asarray(flags, dtype=np.int32)))
    return tuple(bool(v) for v in gathered.reshape(-1, len(flags)).any(axis=0))


__all__ = ["agree", "any_process", "is_chief", "process_count", "process_index"]
