"""`EarlyStopping`: stop when a monitored value stops improving."""
from __future__ import annotations

import numpy as np

from callbacks.monitor_base import MonitorCallback


class EarlyStopping(MonitorCallback):
    """Stop training when `monitor` has not improved for `patience` epochs.

    Args:
        monitor: log key to watch (checked before the first step).
        mode: "auto", "min" or "max".
        patience: epochs without improvement before stopping.
        min_delta: smallest change that counts as an improvement.
        baseline: training stops if the value does not beat it within `patience` epochs.
        start_from_epoch: epochs to wait before watching at all (warm-up).
        restore_best_variables: when training ends early, for whatever reason (this
            callback, another one, `StopTraining`), put back the variables of the best
            epoch. A run that completes every epoch keeps its last variables, as in Keras.

    `best`, `wait` and the best variables are in `state_dict`, so patience carries
    over when BackupAndRestore resumes a run.

    Example:
        ```python
        stop = EarlyStopping(monitor="val_accuracy", patience=3, restore_best_variables=True)
        await program.fit(x, y, epochs=50, validation_split=0.2, callbacks=[stop])
        stop.stopped_epoch, stop.best
        ```
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", patience: int = 0, min_delta: float = 0.0,
                 baseline: float | None = None, start_from_epoch: int = 0, restore_best_variables: bool = False):
        super().__init__(monitor=monitor, mode=mode, min_delta=min_delta, baseline=baseline)
        if patience < 0 or start_from_epoch < 0:
            raise ValueError(f"patience={patience} and start_from_epoch={start_from_epoch} must be >= 0.")
        self.patience = patience
        self.start_from_epoch = start_from_epoch
        self.restore_best_variables = restore_best_variables
        self._reset()

    def _reset(self) -> None:
        self.best = None
        self.wait = 0
        self.best_epoch = None
        self.stopped_epoch = None
        self.best_variables = None
        self.last_epoch = None
        self._restored = False

    def on_train_begin(self, logs=None):
        if not self._restored:  # a resumed run keeps what load_state_dict put back
            self._reset()
        self._restored = False

    def on_epoch_end(self, epoch, logs=None):
        self.last_epoch = epoch
        current = (logs or {}).get(self.monitor)
        if current is None or epoch < self.start_from_epoch:
            return
        self.wait += 1
        if self.is_better(current, self.best):
            self.best = float(current)
            self.best_epoch = epoch
            if self.restore_best_variables:
                self.best_variables = [np.array(v, copy=True) for v in self.program.get_variables()]
            if self.beats_baseline(current):
                self.wait = 0
                return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            program = self.program
            program.stop_training = True
            object.__setattr__(program, "stop_reason", f"EarlyStopping: {self.monitor} did not improve for "
                                                       f"{self.wait} epochs (best {self.best:.6g} at epoch "
                                                       f"{self.best_epoch})")

    def on_train_end(self, logs=None):
        ended_early = self.last_epoch is None or self.last_epoch + 1 < self.params.get("epochs", 0)
        if self.restore_best_variables and self.best_variables is not None and ended_early:
            self.program.set_variables(self.best_variables)

    def state_dict(self) -> dict:
        return {
            "best": self.best, "wait": self.wait, "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch, "best_variables": self.best_variables,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("best", "wait", "best_epoch", "stopped_epoch", "best_variables", "last_epoch"):
            setattr(self, key, state.get(key))
        self.wait = self.wait or 0
        self._restored = True
