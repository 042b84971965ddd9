"""`ProgressBar`: Keras' progress display, without a host copy per batch."""
from __future__ import annotations

import sys
import time

import keras

from callbacks.callback import Callback


def resolve_verbose(verbose) -> int:
    """"auto" -> 1 on a terminal, 2 otherwise (one line per epoch); ints pass through."""
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose={verbose!r}; use 0 (silent), 1 (a bar per batch), 2 (a line per epoch) or 'auto'.")
    return int(verbose)


class ProgressBar(Callback):
    """Prints progress: a bar with ETA per batch (verbose=1) or a line per epoch (2).

    `fit(verbose=...)` adds one; 0 is silent. The bar redraws at most every
    `interval` seconds, and reads the batch logs (a device-to-host copy) only then.

    Args:
        verbose: 1 or 2 (see above).
        interval: minimum seconds between redraws with verbose=1.

    Example:
        ```python
        await program.fit(x, y, epochs=5, verbose=0, callbacks=[ProgressBar(verbose=2)])
        ```
    """

    callback_order = 20  # after the writers: show what they logged
    chief_only = True  # several processes: written by process 0 alone (callbacks.processes)

    def __init__(self, verbose: int = 1, interval: float = 0.1):
        super().__init__()
        self.verbose = resolve_verbose(verbose)
        self.interval = interval
        self._bar = None
        self._last_draw = 0.0

    def _new_bar(self, target):
        self._bar = keras.utils.Progbar(target=target, verbose=self.verbose, stateful_metrics=None, unit_name="step")
        # Every logged value is already a running mean: show it as is.
        self._bar.stateful_metrics = _AllKeys()
        self._last_draw = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if self.verbose:
            print(f"Epoch {epoch + 1}/{self.params.get('epochs')}")
        self._new_bar(self.params.get("steps"))

    def on_train_batch_end(self, batch, logs=None):
        if self.verbose != 1:
            return
        now = time.monotonic()
        if now - self._last_draw < self.interval:
            return
        self._last_draw = now
        self._bar.update(batch + 1, _floats(logs))

    def on_epoch_end(self, epoch, logs=None):
        if self._bar is not None and self.verbose:
            steps = self.params.get("steps") or self._bar._seen_so_far or 1
            self._bar.update(steps, _floats(logs), finalize=True)

    def on_test_begin(self, logs=None):
        if self._program is not None and self.run_state is not None:
            return  # validation inside fit shows in the epoch line
        self._new_bar(self.params.get("steps"))

    def on_test_end(self, logs=None):
        if self._bar is not None and not self.run_state is not None and self.verbose:
            self._bar.update(self.params.get("steps") or self._bar._seen_so_far or 1, _floats(logs), finalize=True)


class _AllKeys:
    def __contains__(self, key) -> bool:
        return True


def _floats(logs) -> list:
    values = []
    for key, value in (logs or {}).items():
        try:
            values.append((key, float(value)))
        except (TypeError, ValueError):
            continue
    return values
