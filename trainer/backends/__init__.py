"""Per-backend steps. Each module defines a `Stepper` with the same small surface:

- `compute(batch) -> (loss, grads, grad_norm_or_None, aux)`: loss and gradients, nothing applied.
- `apply(grads, aux) -> logs`: apply the update, update metrics, return running-mean logs.
- `train_step(batch) -> (logs, loss)`: both at once (fused), used when no hook sits between them.
- `metrics_result()`: the running means now (for a run resumed right at an epoch's end).
- `test_step(batch) -> logs`, `predict_step(x) -> y_pred`, `begin_eval()`.
- `push()`: write the loop's state back into the program's variables (JAX keeps it
  outside them); `reset_metrics()`; `signature(batch)` to spot first calls that compile.
- `snapshot()` / `restore()`: non-trainable state, so a rejected attempt leaves no trace.

The loop (`trainer.loop`) is the only caller.
"""
from __future__ import annotations

import keras


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


def batch_signature(batch) -> tuple:
    """Shapes and dtypes of a batch: a new signature means the next call compiles.

    On the hot path (once per step): plain arrays skip the tree walk, and dtypes are
    compared as objects (str(dtype) alone costs microseconds)."""
    if type(batch) is tuple and all(leaf is None or hasattr(leaf, "shape") for leaf in batch):
        leaves = batch
    else:
        leaves = keras.tree.flatten(batch)
    return tuple(None if leaf is None else (leaf.shape, leaf.dtype) for leaf in leaves)


class EagerStepper:
    """What torch and TensorFlow steppers share: their state lives in the Keras variables."""

    supports_chunks = False

    def __init__(self, program):
        self.program = program
        self.seen: set = set()

    def push(self) -> None:
        pass  # nothing lives outside the variables

    def reset_metrics(self) -> None:
        self.program.reset_metrics()

    def begin_eval(self) -> None:
        self.program.reset_metrics()

    def metrics_result(self) -> dict:
        return self.program.get_metrics_result()

    def signature(self, kind: str, batch) -> tuple:
        return (kind, batch_signature(batch))

    def wait(self, value) -> None:
        pass  # eager: computed already

    def is_ready(self, value) -> bool:
        return True
