"""Per-backend steps. Each module defines a `Stepper` with the same small surface:

- `compute(batch) -> (loss, grads, grad_norm_or_None, aux)`: loss and gradients, nothing applied.
- `apply(grads, aux) -> logs`: apply the update, update metrics, return running-mean logs.
- `train_step(batch) -> (logs, loss)`: both at once (fused), used when no hook sits between them.
- `metrics_result()`: the running means now (for a run resumed right at an epoch's end).
- `test_step(batch) -> logs`, `predict_step(x) -> y_pred`, `begin_eval()`.
- `push()`: write the loop's state back into the program's variables (JAX keeps it
  outside them); `reset_metrics()`; JAX: `signature(batch)` to spot first calls that compile.
- `snapshot()` / `restore()`: non-trainable state, so a rejected attempt leaves no trace.
- `off_loop`: True where every call above must run on `call()`'s thread (torch and
  TensorFlow run eagerly, so a step holds its thread for as long as it computes).

The loop (`trainer.loop`) is the only caller.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from typing import Callable

import keras
from keras.src.backend.common import global_state

from callbacks.threads import FAST_GIL_HANDOFF, await_to_the_end, in_worker_thread


def make_stepper(program):
    backend = keras.backend.backend()
    if backend == "jax":
        from trainer.backends.jax_step import Stepper
    elif backend == "torch":
        from trainer.backends.torch_step import Stepper
    elif backend == "tensorflow":
        from trainer.backends.tensorflow_step import Stepper
    else:
        raise RuntimeError(
            f"KERAS_BACKEND={backend!r} is not supported by asyncfit; use 'jax' (default), 'torch' or 'tensorflow'."
        )
    return Stepper(program)


def first_dim(x) -> int:
    """The number of samples in `x` (any structure of arrays; None leaves are skipped)."""
    return int(next(leaf for leaf in keras.tree.flatten(x) if leaf is not None).shape[0])


def batch_signature(batch) -> tuple:
    """Shapes and dtypes of a batch: a new signature means the next call compiles.

    On the hot path (once per step): plain arrays skip the tree walk, and dtypes are
    compared as objects (str(dtype) alone costs microseconds)."""
    if type(batch) is tuple and all(leaf is None or hasattr(leaf, "shape") for leaf in batch):
        leaves = batch
    else:
        leaves = keras.tree.flatten(batch)
    return tuple(None if leaf is None else (leaf.shape, leaf.dtype) for leaf in leaves)


# One long-lived thread does all torch and TensorFlow work of every fit in the process:
# the event loop only awaits it. One thread, not one per fit, because each thread that
# runs torch ops gets an OpenMP team of its own, and two teams on the same cores slowed
# every step by about 30% (README, Performance).
_BACKEND_THREAD = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncfit-backend")


# Keras keeps its settings per thread (global_state): the backend thread takes the caller's.
# Settings only: scopes and the list of variables awaiting initialisation stay per thread.
KERAS_SETTINGS = ("dtype_policy", "distribution", "nnx_enabled", "torch_device", "flash_attention",
                  "global_seed_generator", "global_random_seed")


def keras_settings() -> dict:
    """The calling thread's Keras settings that a backend thread must share (None for one
    not set, so a pool thread does not keep a setting from an earlier caller)."""
    tracker = global_state.GLOBAL_STATE_TRACKER.__dict__
    return {key: tracker.get(key) for key in KERAS_SETTINGS}


def with_keras_settings(fn: Callable) -> Callable:
    """`fn`, to be called in another thread with the calling thread's Keras settings
    (a distribution decides how variables are created and laid out while tracing)."""
    keras_state = keras_settings()
    return functools.partial(_with_keras_state, keras_state, fn)


def _with_keras_state(keras_state: dict, fn, *args):
    tracker = global_state.GLOBAL_STATE_TRACKER.__dict__
    before = {key: tracker.get(key) for key in keras_state}
    tracker.update(keras_state)
    try:
        return fn(*args)
    finally:  # a pool thread's next job must not inherit these settings
        tracker.update(before)


async def in_backend_thread(fn, *args, keras_state: dict | None = None):
    """`fn(*args)` on the backend thread, with the caller's Keras settings; the event loop
    awaits it. A cancelled caller still waits for the call to end, so the program is
    never left half-updated."""
    if keras_state is None:
        keras_state = keras_settings()
    future = asyncio.get_running_loop().run_in_executor(_BACKEND_THREAD, _with_keras_state, keras_state, fn, *args)
    with FAST_GIL_HANDOFF.held():
        return await await_to_the_end(future)


async def on_backend_thread(fn, *args):
    """`fn(*args)` where this backend's work runs off the event loop: the backend thread
    for torch and TensorFlow, a worker thread for JAX (where it compiles)."""
    if keras.backend.backend() in ("torch", "tensorflow"):
        return await in_backend_thread(fn, *args)
    return await in_worker_thread(with_keras_settings(fn), *args)


class EagerStepper:
    """What torch and TensorFlow steppers share: their state lives in the Keras variables,
    and every call runs on the backend thread."""

    supports_chunks = False
    off_loop = True
    STEPS_PER_CALL = 16  # at most this many steps per hand-off when no hook needs each one
    SECONDS_PER_CALL = 0.05  # ... and no more than this long, so a signal or a stop is seen soon

    def __init__(self, program):
        self.program = program
        self._keras_state = keras_settings()

    async def call(self, fn, *args):
        """`fn(*args)` on the backend thread (`in_backend_thread`)."""
        return await in_backend_thread(fn, *args, keras_state=self._keras_state)

    def train_steps(self, next_batch, should_stop) -> tuple:
        """Fused steps on batches from `next_batch()` (None when the epoch is over), until
        STEPS_PER_CALL, SECONDS_PER_CALL or `should_stop()`; returns
        (logs after the last step or None, the per-step losses stacked or None, steps)."""
        start = time.perf_counter()
        logs, losses = None, []
        while len(losses) < self.STEPS_PER_CALL:
            batch = next_batch()
            if batch is None:
                break
            logs, loss = self.train_step(batch)
            losses.append(loss)
            if should_stop() or time.perf_counter() - start >= self.SECONDS_PER_CALL:
                break
        return logs, (keras.ops.stack(losses) if losses else None), len(losses)

    def push(self) -> None:
        pass  # nothing lives outside the variables

    def reset_metrics(self) -> None:
        self.program.reset_metrics()

    def begin_eval(self) -> None:
        self.program.reset_metrics()

    def metrics_result(self) -> dict:
        return self.program.get_metrics_result()


    def wait(self, value) -> None:
        pass  # eager: computed already

    def is_ready(self, value) -> bool:
        return True
