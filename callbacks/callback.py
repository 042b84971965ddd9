"""The callback base class, the step `Update`, and the control-flow exceptions."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import keras


class StopTraining(Exception):
    """Raise from any hook to end `fit` cleanly: `on_train_end` still runs.

    Example:
        ```python
        class StopAtStep(Callback):
            def on_train_batch_end(self, batch, logs=None):
                if self.program.step_count >= 100:
                    raise StopTraining("reached 100 steps")
        ```

    Args:
        reason: why training stopped (kept in `program.stop_reason`).
        keep_backup: the run did not end well (TerminateOnNaN uses it):
            BackupAndRestore keeps its last good backup instead of deleting it.
    """

    def __init__(self, reason: str = "", keep_backup: bool = False):
        super().__init__(reason)
        self.keep_backup = keep_backup


class TrainingInterrupted(Exception):
    """Raised by `fit` when a signal (SIGTERM, SIGINT) ended the run after a backup."""


@dataclasses.dataclass
class ManifestRow:
    """One written checkpoint or backup, as passed to `on_checkpoint`."""

    path: str
    kind: str
    epoch: int
    step: int
    monitor: str | None = None
    value: float | None = None
    time: float = dataclasses.field(default_factory=time.time)
    seconds: float | None = None  # how long the write took


class Update:
    """The update being computed for one optimizer step.

    Hooks `on_compute_update_begin`, `on_compute_update_end` and
    `before_parameter_update` receive it. `batch` is `(x, y, sample_weight)` and
    may be replaced in `on_compute_update_begin`; `grads` may be replaced before
    the update is applied. `loss` and `grad_norm` are backend scalars: reading
    them as floats costs a device-to-host copy, so only do it when you need it.
    Keys added to `logs` reach that batch's logs.
    """

    __slots__ = ("batch", "attempt", "loss", "grads", "_grad_norm", "_grad_norm_fn", "logs", "aux")

    def __init__(self, batch: tuple, attempt: int = 0):
        self.batch = batch
        self.attempt = attempt
        self.loss = None
        self.grads = None
        self._grad_norm = None
        self._grad_norm_fn = None
        self.logs: dict[str, Any] = {}
        self.aux = None

    @property
    def grad_norm(self):
        """Global L2 norm of `grads` (computed lazily, once per attempt)."""
        if self._grad_norm is None and self._grad_norm_fn is not None and self.grads is not None:
            self._grad_norm = self._grad_norm_fn(self.grads)
        return self._grad_norm

    def __repr__(self) -> str:
        return f"Update(attempt={self.attempt}, loss={self.loss!r})"


# Hook names, in the order the loop fires them. A hook that no callback overrides
# is never called (CallbackList builds its dispatch table from this list).
TRAIN_HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_compute_update_begin",
    "on_compute_update_end",
    "before_parameter_update",
    "on_train_batch_end",
    "on_epoch_end",
    "on_train_end",
    "on_train_error",
    "on_checkpoint",
    "on_eval",
)
TEST_HOOKS = ("on_test_begin", "on_test_batch_begin", "on_test_batch_end", "on_test_end")
# Evaluation results: a digest preview or final (evaluate(digest_every=N) / return_digest),
# a benchmark scored (in the loop, or after a run in an experiment).
EVAL_HOOKS = ("on_digest", "on_benchmark_eval")
PREDICT_HOOKS = ("on_predict_begin", "on_predict_batch_begin", "on_predict_batch_end", "on_predict_end")
EXPERIMENT_HOOKS = (
    "on_experiment_begin",
    "on_group_begin",
    "on_run_begin",
    "on_run_end",
    "on_group_end",
    "on_experiment_end",
)
ALL_HOOKS = TRAIN_HOOKS + TEST_HOOKS + EVAL_HOOKS + PREDICT_HOOKS + EXPERIMENT_HOOKS
# The subset that keras.callbacks.Callback also defines (same names, same arguments).
KERAS_HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_epoch_end",
    "on_train_end",
) + TEST_HOOKS + PREDICT_HOOKS


class Callback:
    """Base class for asyncfit callbacks.

    Override only the hooks you need; a hook may be `def` or `async def`
    (awaited in order). Hooks that are not overridden cost nothing: the
    callback list never calls them.

    Attributes:
        program: the `Program` being trained (on JAX, reading it first writes the
            loop's current variables back into the program).
        params: dict with `epochs`, `steps`, `batch_size`, `verbose`, ...
        callback_order: int, default 0. Callbacks run sorted by it (stable, so
            ties keep list order). Built-in writers use 10, so user callbacks can
            fill `logs` before they are written.
        chief_only: bool, default False. When several processes train together
            (`keras.distribution.initialize`), a callback with `chief_only = True`
            runs on process 0 alone (the built-in writers: CSVLogger, Monitor,
            ProgramCheckpoint, PredictionsWriter, the progress bar).

    Example:
        ```python
        class PrintLoss(Callback):
            async def on_epoch_end(self, epoch, logs=None):
                print(epoch, logs["loss"])

        await program.fit(x, y, epochs=3, callbacks=[PrintLoss()])
        ```
    """

    callback_order: int = 0
    chief_only: bool = False
    # Per-hook exceptions to callback_order, e.g. {"on_train_begin": -100} to restore
    # state before anyone else starts while still saving after everyone else.
    hook_order: dict = {}

    def __init__(self):
        self._program = None
        self._callback_list = None
        self.params: dict = {}

    # -- wiring -----------------------------------------------------------------
    def set_program(self, program) -> None:
        self._program = program

    def set_params(self, params: dict) -> None:
        self.params = params

    @property
    def program(self):
        program = self._program
        sync = getattr(program, "jax_state_sync", None)
        if sync is not None:
            # JAX keeps variables in the loop's state mid-epoch; write them back first.
            sync()
        return program

    # Keras habit: `self.model` is the same object, `set_model` the same wiring.
    model = program

    def set_model(self, model) -> None:
        self.set_program(model)

    @property
    def run_state(self):
        """The running fit's `trainer.loop.RunState` (position, seed, data), or None."""
        return None if self._program is None else self._program.__dict__.get("_asyncfit_run")

    async def notify_checkpoint(self, row: ManifestRow) -> None:
        """Fire `on_checkpoint(row)` on every callback of the running fit (writers call this)."""
        if self._callback_list is not None and self._callback_list.wants("on_checkpoint"):
            await self._callback_list.fire("on_checkpoint", row)

    # -- state across a crash ------------------------------------------------------
    @property
    def state_key(self) -> str:
        """Key under which BackupAndRestore stores this callback's `state_dict`.

        Two instances of one class get distinct keys when they differ in their
        constructor arguments (`_state_key_args`), as Lightning does.
        """
        args = self._state_key_args()
        name = type(self).__qualname__
        return f"{name}{args}" if args else name

    def _state_key_args(self) -> str:
        return ""

    def state_dict(self) -> dict:
        """What this callback must remember across a crash (default: nothing)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

    # -- hooks: training -----------------------------------------------------------
    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_compute_update_begin(self, step, update):
        """Before the loss and gradients are computed; may replace `update.batch`."""

    def on_compute_update_end(self, step, update) -> bool:
        """After the loss and gradients; return True to reject and recompute."""
        return False

    def before_parameter_update(self, step, update):
        """Just before the update is applied: variables and `step_count` still old."""

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_train_error(self, error):
        """Instead of `on_train_end`, when `fit` fails; the error is re-raised after."""

    def on_checkpoint(self, row: ManifestRow):
        """Whenever a checkpoint or backup is written."""

    def on_eval(self, epoch, name, metrics):
        """After each named evaluator's validation pass."""

    # -- hooks: evaluate / predict ---------------------------------------------------
    def on_test_begin(self, logs=None):
        pass

    def on_test_batch_begin(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass

    def on_test_end(self, logs=None):
        pass

    # -- hooks: evaluation results -----------------------------------------------------
    def on_digest(self, digest):
        """`evaluate(digest_every=N)`: the running `trainer.Digest` every N batches
        (`digest.final` False) and once at the end (True); also with `return_digest=True`."""

    def on_benchmark_eval(self, ctx, result, predictions, step=None):
        """A `trainer.Benchmark` was scored: `ctx` the ExperimentContext or None, `result`
        (`name`, `metrics`, `tags`, `step`), `predictions` a DataFrame (`index`, `y_true`,
        `y_pred`) or None, `step` the program's step_count in the loop, None after training."""

    def on_predict_begin(self, logs=None):
        pass

    def on_predict_batch_begin(self, batch, logs=None):
        pass

    def on_predict_batch_end(self, batch, logs=None):
        pass

    def on_predict_end(self, logs=None):
        pass

    # -- hooks: experiments ------------------------------------------------------------
    def on_experiment_begin(self, ctx):
        pass

    def on_group_begin(self, ctx, group):
        pass

    def on_run_begin(self, ctx):
        pass

    def on_run_end(self, ctx, run_result):
        pass

    def on_group_end(self, ctx, group):
        pass

    def on_experiment_end(self, ctx, result):
        pass


def overrides(callback: Any, hook: str) -> bool:
    """Whether `callback` defines `hook` itself rather than inheriting the no-op."""
    instance = getattr(callback, "__dict__", {})
    if hook in instance:
        # Set on the instance, as keras.callbacks.LambdaCallback does; None opts out
        # (a built-in that does not need a per-batch hook in this configuration).
        return instance[hook] is not None
    method = getattr(type(callback), hook, None)
    if method is None:
        return False
    if isinstance(callback, Callback):
        return method is not getattr(Callback, hook, None)
    if isinstance(callback, keras.callbacks.Callback):
        base = getattr(keras.callbacks.Callback, hook, None)
        return method is not base
    return False
