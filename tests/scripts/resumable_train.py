"""A training run that can be killed at any moment and restarted (used by test_crash.py).

    python resumable_train.py WORKDIR [EPOCHS]

Trains on load_digits with BackupAndRestore (every 7 steps), ProgramCheckpoint (best
val_accuracy), CSVLogger and EarlyStopping, then writes WORKDIR/final.npz (variables),
WORKDIR/result.json (history, EarlyStopping state, step count). Prints "TRAINING" once
the first step is about to run, so a test knows when a kill lands inside training.
"""
import asyncio
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from callbacks import BackupAndRestore, Callback, CSVLogger, EarlyStopping, ProgramCheckpoint  # noqa: E402
from trainer import Program  # noqa: E402


class Announce(Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if not getattr(self, "said", False):
            print("TRAINING", flush=True)
            self.said = True


async def main(workdir: str, epochs: int) -> None:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    h = keras.layers.Dense(256, activation="relu")(inputs)
    h = keras.layers.Dropout(0.2)(h)  # its RNG state must resume too
    h = keras.layers.Dense(256, activation="relu")(h)
    outputs = keras.layers.Dense(10, activation="softmax")(h)
    program = Program(inputs=inputs, outputs=outputs, name="resumable")
    program.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    stop = EarlyStopping(monitor="val_accuracy", patience=3, min_delta=0.002)
    history = await program.fit(
        x, y, epochs=epochs, batch_size=16, validation_split=0.2, seed=1234, verbose=0,
        callbacks=[
            Announce(),
            BackupAndRestore(os.path.join(workdir, "backup"), save_freq=7),
            ProgramCheckpoint(os.path.join(workdir, "best.keras"), monitor="val_accuracy", save_best_only=True),
            CSVLogger(os.path.join(workdir, "run.csv")),
            stop,
        ],
    )
    np.savez(os.path.join(workdir, "final.npz"), *program.get_variables())
    with open(os.path.join(workdir, "result.json"), "w") as handle:
        json.dump({"history": history.history, "epochs": history.epoch, "step_count": program.step_count,
                   "stopped_epoch": stop.stopped_epoch, "best": stop.best, "wait": stop.wait}, handle)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 12))
