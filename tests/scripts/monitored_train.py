"""Training logged to MLflow with BackupAndRestore every 2 epochs (used by test_monitor.py).

    python monitored_train.py WORKDIR TRACKING_URI

Prints "EPOCH n" after epoch n's metrics reached MLflow, so a test can kill it then;
the backup lags behind (every 2 epochs), so a resumed run re-trains epochs that are
already logged, and Monitor must not log their steps twice.
"""
import asyncio
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from callbacks import BackupAndRestore, Callback, Monitor  # noqa: E402
from trainer import Program  # noqa: E402


class Announce(Callback):
    callback_order = 50

    def __init__(self, monitor):
        super().__init__()
        self.monitor = monitor

    async def on_epoch_end(self, epoch, logs=None):
        await asyncio.to_thread(self.monitor.worker.flush, 30)
        print(f"EPOCH {epoch}", flush=True)


async def main(workdir: str, uri: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    program = Program(inputs=inputs, outputs=keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.Dense(16, activation="relu")(inputs)))
    program.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    monitor = Monitor(experiment_name="resume", tracking_uri=uri, log_program=False)
    await program.fit(x, y, epochs=8, batch_size=32, seed=0, verbose=0, validation_split=0.25, callbacks=[
        BackupAndRestore(os.path.join(workdir, "backup"), save_freq=24), monitor, Announce(monitor)])
    with open(os.path.join(workdir, "run_id"), "w") as handle:
        json.dump({"run_id": monitor.run_id}, handle)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
