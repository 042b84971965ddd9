"""`TerminateOnNaN`: stop as soon as a batch gives a NaN or infinite value."""
from __future__ import annotations

import math

import numpy as np

from callbacks.callback import Callback, StopTraining


class TerminateOnNaN(Callback):
    """Stop training at the first batch whose value is NaN or infinite.

    The loss is checked per batch (this step's loss, not the epoch's running mean);
    other keys are checked in the batch logs, where a non-finite running mean means a
    non-finite batch value. Training stops gracefully (`on_train_end` runs) and
    BackupAndRestore keeps its last good backup instead of deleting it.
    Each check copies the value to the host: one small copy per step.

    Args:
        monitor: "loss", a list of log keys, or True for every logged key.

    Example:
        ```python
        await program.fit(x, y, epochs=10, callbacks=[TerminateOnNaN(monitor=["loss", "mae"])])
        ```
    """

    def __init__(self, monitor="loss"):
        super().__init__()
        if monitor is not True and not isinstance(monitor, (str, list, tuple)):
            raise TypeError(f"monitor={monitor!r}; pass a log key, a list of keys, or True for all keys.")
        self.monitor = monitor
        self.terminated_at: int | None = None

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

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        values = {}
        run = self.run_state
        if self.monitor is True:
            values.update(logs)
        else:
            for key in [self.monitor] if isinstance(self.monitor, str) else self.monitor:
                values[key] = logs.get(key)
        if "loss" in values and run is not None and run.batch_loss is not None:
            values["loss"] = run.batch_loss
        for key, value in values.items():
            if value is None:
                continue
            number = float(np.asarray(value))
            if not math.isfinite(number):
                step = self._program.step_count
                self.terminated_at = step
                raise StopTraining(f"{key} is {number} at step {step} (batch {batch}); stopped by TerminateOnNaN",
                                   keep_backup=True)
