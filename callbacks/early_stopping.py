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
        restore_best_variables: (Keras: `restore_best_weights`, also accepted) at the end of the run, put back the variables of the best
            epoch, as Keras 3 does: whether this callback stopped it, another one did, or
            it ran every epoch.

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
                 baseline: float | None = None, start_from_epoch: int = 0, restore_best_variables: bool = False,
                 restore_best_weights: bool | None = None):
        super().__init__(monitor=monitor, mode=mode, min_delta=min_delta, baseline=baseline)
        if restore_best_weights is not None:  # Keras' name for it
            restore_best_variables = restore_best_weights
        if patience < 0 or start_from_epoch < 0:
            raise ValueError(f"patience={patience} and start_from_epoch={start_from_epoch} must be >= 0.")
        self.patience = patience
        self.start_from_epoch = start_from_epoch
        self.restore_best_variables = restore_best_variables
        self._reset()

    def _reset(self) -> None:
        self.best = None
        self.wait = 0
        self.best_epoch = 0  # as Keras: 0 until set, so `stopped_epoch > 0` works after any run
        self.stopped_epoch = 0
        self.best_variables = None
        self.last_epoch = None
        self._restored = False

    # Keras' names
    @property
    def restore_best_weights(self) -> bool:
        return self.restore_best_variables

    @property
    def best_weights(self):
        return self.best_variables

    @best_weights.setter
    def best_weights(self, value) -> None:
        self.best_variables = value

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
        current = self.scalar(current)
        if self.is_better(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_variables:
                self.best_variables = _get_variables(self.program)
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
        # As Keras 3: the best variables come back at the end of every run, stopped or not.
        if self.restore_best_variables and self.best_variables is not None:
            _set_variables(self.program, self.best_variables)

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
        self.best_epoch = self.best_epoch or 0
        self.stopped_epoch = self.stopped_epoch or 0
        self._restored = True


def _get_variables(program):
    """A copy of the program's variables (`get_weights` for any Keras-like model)."""
    getter = getattr(program, "get_variables", None) or program.get_weights
    values = getter()
    return [np.array(v, copy=True) for v in values] if isinstance(values, list) else values


def _set_variables(program, values) -> None:
    setter = getattr(program, "set_variables", None) or program.set_weights
    setter(values)
