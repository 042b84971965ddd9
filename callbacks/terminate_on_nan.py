"""`TerminateOnNaN`: stop when a batch gives a NaN or infinite value."""
from __future__ import annotations

import collections

import numpy as np

from callbacks.callback import Callback, StopTraining


class TerminateOnNaN(Callback):
    """Stop training when a batch's value is NaN or infinite.

    The loss is checked per batch (that step's loss, not the epoch's running mean);
    other keys are checked in the batch logs, where a non-finite running mean means a
    non-finite batch value. Training stops gracefully (`on_train_end` runs), and
    BackupAndRestore keeps its last good backup instead of deleting it.

    Checks do not stall the device: each batch's values are read once they are
    computed, so the stop can come a few steps after the bad one (the loop keeps at
    most 8 steps queued); `terminated_at` names the bad step itself. Before any backup
    is written and at every epoch end, everything pending is checked, so no backup,
    checkpoint or CSV row is written from a poisoned state.

    Args:
        monitor: "loss", a list of log keys, or True for every logged key.
        raise_error: as Keras: raise a `RuntimeError` naming the step instead of
            stopping gracefully (`on_train_error` runs instead of `on_train_end`, and
            the backups stay).

    The History has no row for the epoch that a NaN ended (no epoch end ran); Keras'
    History would hold that epoch's running `loss` (nan). `terminated_at` names the step.

    Example:
        ```python
        await program.fit(x, y, epochs=10, callbacks=[TerminateOnNaN(monitor=["loss", "mae"])])
        ```
    """

    callback_order = -10  # a guard: look before anyone writes anything

    def __init__(self, monitor="loss", raise_error: bool = False):
        super().__init__()
        self.raise_error = bool(raise_error)
        if monitor is not True and not isinstance(monitor, (str, list, tuple)):
            raise TypeError(f"monitor={monitor!r}; pass a log key, a list of keys, or True for all keys.")
        self.monitor = monitor
        self.terminated_at: int | None = None
        self._pending: collections.deque = collections.deque()

    def _state_key_args(self) -> str:
        return f"[{self.monitor}]"

    def check_log_keys(self, keys: list[str]) -> None:
        if self.monitor is True:
            return
        wanted = [self.monitor] if isinstance(self.monitor, str) else list(self.monitor)
        missing = [key for key in wanted if key not in keys]
        if missing:
            raise ValueError(f"TerminateOnNaN(monitor={self.monitor!r}): {missing} will not be logged; "
                             f"the keys are: {', '.join(keys)}.")

    def on_train_begin(self, logs=None):
        self._pending.clear()
        run = self.run_state
        if run is not None:
            run.before_backup.append(self.check_pending)
            run.value_watchers.append(self._watch)  # not a batch hook: fused chunks stay on

    def _watch(self, first_step: int, losses, logs) -> None:
        """After each step (or fused chunk): queue its values, check those already computed."""
        logs = logs or {}
        if self.monitor is True:
            values = dict(logs)
        else:
            keys = [self.monitor] if isinstance(self.monitor, str) else self.monitor
            values = {key: logs.get(key) for key in keys}
        if "loss" in values and losses is not None:
            values["loss"] = losses  # this step's loss, or each step's in a chunk
        self._pending.append((first_step, values))
        while self._pending and _ready(self._pending[0][1]):
            self._check(*self._pending.popleft())

    def on_epoch_end(self, epoch, logs=None):
        self.check_pending()

    def _batch_of(self, step: int) -> int:
        """The index within its epoch of global step `step` (for Keras' "at batch N")."""
        run, program = self.run_state, self._program
        if run is None or program is None:
            return step
        return max(0, run.batch - 1 - (program.step_count - step))

    def check_pending(self) -> None:
        """Check every pending batch now, waiting for the device if needed."""
        while self._pending:
            self._check(*self._pending.popleft())

    def _check(self, first_step: int, values: dict) -> None:
        for key, value in values.items():
            if value is None:
                continue
            numbers = np.asarray(value, dtype=np.float64).reshape(-1)
            bad = np.flatnonzero(~np.isfinite(numbers))
            if bad.size:
                self._pending.clear()
                step = first_step + int(bad[0]) if numbers.size > 1 else first_step
                self.terminated_at = step
                if self.raise_error:  # Keras' wording, plus the step
                    what = "loss" if key == "loss" else f"value of {key!r}"
                    raise RuntimeError(f"NaN or Inf {what} encountered at batch {self._batch_of(step)} (step {step}). "
                                       f"Loss value: {numbers[bad[0]]}. Terminating training immediately.")
                raise StopTraining(f"{key} is {numbers[bad[0]]} at step {step}; stopped by TerminateOnNaN",
                                   keep_backup=True)


def _ready(values: dict) -> bool:
    return all(not hasattr(v, "is_ready") or v.is_ready() for v in values.values() if v is not None)
