"""Cost per step of hooks: one sync hook, one async hook, ten callbacks on every batch hook.

    python bench/hooks.py

Same MLP and data as step_overhead (c). Any per-batch hook turns fused chunks off, so
the table also shows (c) with chunks off (one dispatch per step): the hook's own cost
is the difference from that row.
"""
import asyncio

import common
import numpy as np

from callbacks import Callback
from step_overhead import mlp
from trainer import Program


class SyncHook(Callback):
    def on_train_batch_end(self, batch, logs=None):
        pass


class AsyncHook(Callback):
    async def on_train_batch_end(self, batch, logs=None):
        pass


class EveryBatchHook(Callback):
    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_compute_update_begin(self, step, update):
        pass

    def on_compute_update_end(self, step, update):
        return False

    def before_parameter_update(self, step, update):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 32)).astype("float32")
    y = x[:, :4].sum(axis=1, keepdims=True).astype("float32")
    epochs, steps = 3, 3 * 625
    program = mlp(Program)
    cases = {
        "(c) no callbacks (fused chunks)": [],
        "(c) chunks off: one dispatch per step": [SyncHook()],
        "one async on_train_batch_end": [AsyncHook()],
        "ten callbacks on every batch hook (staged steps)": [EveryBatchHook() for _ in range(10)],
    }
    times = {}
    for name, callbacks in cases.items():
        asyncio.run(program.fit(x, y, epochs=1, verbose=0, callbacks=callbacks))
        times[name] = common.best_of(lambda: asyncio.run(program.fit(x, y, epochs=epochs, verbose=0, seed=0,
                                                                      callbacks=callbacks))) / steps * 1e6
    base = times["(c) chunks off: one dispatch per step"]
    rows = [(name, f"{value:.1f} us/step", "") for name, value in times.items()]
    rows += [("one sync hook: cost vs (c)", f"+{base - times['(c) no callbacks (fused chunks)']:.1f} us/step",
              "(includes losing fused chunks)"),
             ("one async hook: cost vs one sync hook", f"+{times['one async on_train_batch_end'] - base:.1f} us/step",
              ""),
             ("ten callbacks x 5 batch hooks vs one sync hook",
              f"+{times['ten callbacks on every batch hook (staged steps)'] - base:.1f} us/step",
              "(includes the two-dispatch staged step)")]
    common.report("hooks", rows, notes="MLP 32-64-1, batch 32, 20k samples, 3 epochs, best of 3.")


if __name__ == "__main__":
    main()
