"""The built-in callbacks together, a custom one, and the failure modes they handle.

Run it:  python guides/02_callbacks.py       (writes into ./asyncfit-guide-02/)

1. A digit classifier trained with BackupAndRestore, ProgramCheckpoint, EarlyStopping,
   CSVLogger and TerminateOnNaN, plus a custom callback that rejects suspicious updates.
2. A wrong monitor name fails before the first step, naming the right one (Keras
   finds out at the first epoch end, or only warns).
3. CSVLogger(append=True) across two runs: one header (Keras writes a second one).
4. A run interrupted by SIGTERM writes a backup and stops; running it again resumes at
   the next batch of the same epoch, optimizer state, shuffle order and callback state
   included (Keras ignores the saved batch and forgets the callbacks' state).
"""
import asyncio
import os
import shutil
import signal
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from callbacks import (BackupAndRestore, Callback, CSVLogger, EarlyStopping, ProgramCheckpoint,  # noqa: E402
                       TerminateOnNaN, TrainingInterrupted)
from trainer import Program, load_program  # noqa: E402

WORK = os.path.abspath("asyncfit-guide-02")


def build_program() -> Program:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    outputs = keras.layers.Dense(10, activation="softmax")(hidden)
    program = Program(inputs=inputs, outputs=outputs, name="digits")
    program.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    return program


class SkipHugeUpdates(Callback):
    """A custom callback: recompute a step whose gradient norm explodes, at most twice."""

    def __init__(self, limit: float = 50.0):
        super().__init__()
        self.limit = limit
        self.rejected = 0

    def on_compute_update_end(self, step, update) -> bool:
        if update.attempt < 2 and float(update.grad_norm) > self.limit:
            self.rejected += 1
            return True
        return False


def standard_callbacks(tag: str) -> list:
    return [
        BackupAndRestore(os.path.join(WORK, tag, "backup"), save_freq=20),
        ProgramCheckpoint(os.path.join(WORK, tag, "best.program.keras"), monitor="val_accuracy",
                          save_best_only=True),
        EarlyStopping(monitor="val_accuracy", patience=4, restore_best_variables=True),
        CSVLogger(os.path.join(WORK, tag, "run.csv")),
        TerminateOnNaN(),
    ]


async def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")

    print("== 1. the built-ins together ==")
    program = build_program()
    guard = SkipHugeUpdates()
    history = await program.fit(x, y, epochs=30, validation_split=0.2, seed=0, verbose=2,
                                callbacks=[*standard_callbacks("together"), guard])
    frame = pd.read_csv(os.path.join(WORK, "together", "run.csv"))
    best = load_program(os.path.join(WORK, "together", "best.program.keras"))
    best_metrics = await best.evaluate(x[-360:], y[-360:], verbose=0)
    print(f"trained {len(history.epoch)} epochs ({program.stop_reason or 'all of them'}); "
          f"CSV rows: {len(frame)}; rejected updates: {guard.rejected}")
    print(f"best checkpoint: val_accuracy {best_metrics['accuracy']:.4f} "
          f"(best logged {max(history.history['val_accuracy']):.4f})")

    print("\n== 2. a wrong monitor name fails before the first step ==")
    try:
        await build_program().fit(x, y, epochs=5, validation_split=0.2, verbose=0,
                                  callbacks=[EarlyStopping(monitor="val_acc")])
    except ValueError as error:
        print("ValueError:", error)

    print("\n== 3. CSVLogger(append=True) across two runs: one header ==")
    path = os.path.join(WORK, "append.csv")
    for run in range(2):
        await build_program().fit(x, y, epochs=2, verbose=0, callbacks=[CSVLogger(path, append=True)])
    text = open(path).read()
    print(f"{text.count('epoch,')} header line, {len(pd.read_csv(path))} rows:\n{text}")

    print("== 4. SIGTERM mid-epoch, then resume ==")

    class SendSigterm(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self._program.step_count == 100:  # epoch 2, batch 10 (45 batches an epoch)
                os.kill(os.getpid(), signal.SIGTERM)

    try:
        await build_program().fit(x, y, epochs=6, validation_split=0.2, seed=0, verbose=0,
                                  callbacks=[*standard_callbacks("interrupted"), SendSigterm()])
    except TrainingInterrupted as interrupted:
        print("TrainingInterrupted:", interrupted)
    program = build_program()
    backup = standard_callbacks("interrupted")
    history = await program.fit(x, y, epochs=6, validation_split=0.2, seed=0, verbose=0, callbacks=backup)
    print(f"resumed from {os.path.basename(backup[0].restored_from)}; History epochs {history.epoch}; "
          f"{program.step_count} steps in all")
    reference = build_program()  # the same callbacks (EarlyStopping restores its best variables at the end)
    await reference.fit(x, y, epochs=6, validation_split=0.2, seed=0, verbose=0,
                        callbacks=standard_callbacks("reference"))
    same = all(np.allclose(a, b, atol=1e-6) for a, b in zip(program.get_variables(), reference.get_variables()))
    print("same variables as an uninterrupted run:", same)
    if not same:
        sys.exit("the resumed run differs from the uninterrupted one")


if __name__ == "__main__":
    asyncio.run(main())
