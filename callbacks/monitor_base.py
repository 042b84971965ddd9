"""`MonitorCallback`: the monitor/mode logic shared by EarlyStopping and ProgramCheckpoint."""
from __future__ import annotations

import difflib
import math
import re
import warnings

import keras
import numpy as np

from callbacks.callback import Callback

# Name fragments whose direction is known (matched on the metric's own name, prefixes removed).
LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "mape", "msle", "crossentropy", "hinge", "divergence",
                   "poisson", "logcosh", "huber")
HIGHER_IS_BETTER = ("accuracy", "acc", "auc", "reward", "precision", "recall", "f1", "iou", "r2",
                    "score", "sensitivity", "specificity", "fbeta")


def metric_direction(monitor: str, program=None) -> str | None:
    """'min', 'max' or None (unknown) for a log key such as `val_accuracy` or `val_head_loss`."""
    base = re.sub(r"^val_", "", monitor)
    direction = _direction_of_compiled_metric(base, program)
    if direction is not None:
        return direction
    words = set(re.split(r"[_\W]+", base))
    for fragment in LOWER_IS_BETTER:
        if fragment in words or base.endswith(fragment):
            return "min"
    for fragment in HIGHER_IS_BETTER:
        if fragment in words or base.endswith(fragment):
            return "max"
    return None


def _direction_of_compiled_metric(base: str, program) -> str | None:
    if program is None:
        return None
    for metric in _compiled_metrics(program):
        name = getattr(metric, "name", None)
        if name and (base == name or base.endswith("_" + name)):
            direction = getattr(metric, "_direction", None)
            if direction == "up":
                return "max"
            if direction == "down":
                return "min"
    return None


def _compiled_metrics(program) -> list:
    found = []
    compile_metrics = getattr(program, "_compile_metrics", None)
    stack = list(getattr(compile_metrics, "metrics", []) or [])
    while stack:
        metric = stack.pop()
        found.append(metric)
        stack.extend(getattr(metric, "metrics", []) if hasattr(metric, "_flatten_metrics") else [])
    return found


class MonitorCallback(Callback):
    """Base for callbacks that watch one logged value (`monitor`) for improvement.

    Args:
        monitor: a log key, e.g. "val_loss", "val_accuracy", "reward",
            "val_{evaluator}_{metric}". It is checked before the first step against
            the keys the compiled program will log; a wrong name fails at once.
        mode: "min", "max" or "auto" (from the name: loss/error/mse/mae go down;
            accuracy/auc/reward/precision/recall/f1, and any metric whose Keras
            direction is "up", go up). A mode that contradicts a known direction warns.
        min_delta: how much the value must improve by to count as better.
        baseline: a value to beat before anything counts as an improvement.
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", min_delta: float = 0.0,
                 baseline: float | None = None):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            # As Keras: an unknown mode warns and falls back to "auto".
            name = getattr(self, "keras_name", type(self).__name__)  # Keras' wording, Keras' class name
            warnings.warn(f"{name} mode '{mode}' is unknown, fallback to auto mode ({type(self).__name__}: use "
                          "'auto', 'min' or 'max').", stacklevel=2)
            mode = "auto"
        self.monitor = monitor
        self.mode = mode
        self.min_delta = abs(min_delta)
        self.baseline = baseline
        self.best: float | None = None
        self._direction: str | None = None if mode == "auto" else mode

    def _state_key_args(self) -> str:
        return f"[{self.monitor}]"

    @property
    def direction(self) -> str:
        if self._direction is None:
            direction = metric_direction(self.monitor, self._program)
            if direction is None:
                raise ValueError(
                    f"mode='auto' cannot tell whether {self.monitor!r} should go up or down; "
                    "pass mode='min' or mode='max'."
                )
            self._direction = direction
        return self._direction

    def check_log_keys(self, keys: list[str]) -> None:
        """Called by `fit` before the first step with the keys it will log."""
        if self.monitor not in keys:
            close = difflib.get_close_matches(self.monitor, keys, n=1, cutoff=0.4)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            no_val = "" if any(k.startswith("val_") for k in keys) or not self.monitor.startswith("val_") else (
                " val_* keys exist only when fit has validation_split or validation_data."
            )
            raise ValueError(
                f"{type(self).__name__}(monitor={self.monitor!r}): this fit will not log {self.monitor!r}.{hint}"
                f"{no_val} The keys it logs are: {', '.join(keys)}."
            )
        known = metric_direction(self.monitor, self._program)
        if self.mode != "auto" and known is not None and known != self.mode:
            warnings.warn(
                f"{type(self).__name__}(monitor={self.monitor!r}, mode={self.mode!r}): {self.monitor!r} is "
                f"better when it goes {'down' if known == 'min' else 'up'}, so mode={known!r} is expected.",
                stacklevel=2,
            )
        self.direction  # noqa: B018 - resolve 'auto' now, so an unknown direction fails before a step

    @property
    def monitor_op(self):
        """`keras.ops.less` or `keras.ops.greater`: how a better value compares (Keras'
        attribute). Setting it (those, or NumPy's `less` / `greater`) sets the direction."""
        return keras.ops.less if self.direction == "min" else keras.ops.greater

    @monitor_op.setter
    def monitor_op(self, op) -> None:
        if op in (np.less, keras.ops.less):
            self._direction = "min"
        elif op in (np.greater, keras.ops.greater):
            self._direction = "max"
        else:
            raise ValueError(f"monitor_op={op!r}; use keras.ops.less (lower is better) or keras.ops.greater.")

    # Keras' names, for code written against keras.callbacks.MonitorCallback
    def _set_monitor_op(self) -> None:
        self.direction  # noqa: B018 - resolves 'auto'; an unknown direction raises ValueError

    def _is_improvement(self, current, reference) -> bool:
        return self.is_better(current, reference)

    @staticmethod
    def scalar(value):
        """A monitored value as a float: a one-element vector (an F1Score on one unit)
        counts as its element, as in Keras; None stays None."""
        if value is None:
            return None
        array = np.asarray(value, dtype=np.float64)
        if array.size != 1:
            raise ValueError(f"the monitored value has {array.size} elements; monitor a scalar (or one-element) "
                             "log key.")
        return float(array.reshape(()))

    def is_better(self, current: float, reference: float | None) -> bool:
        """Whether `current` improves on `reference` by more than `min_delta`."""
        current = self.scalar(current)
        if current is None or math.isnan(current):
            return False
        if reference is None:
            return True
        if self.direction == "min":
            return current < reference - self.min_delta
        return current > reference + self.min_delta

    def beats_baseline(self, current: float) -> bool:
        return self.baseline is None or self.is_better(current, self.baseline)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
