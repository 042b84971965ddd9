"""The training stall of a per-epoch BackupAndRestore on a ~10M-parameter program.

    python bench/checkpoint.py

The stall is the time the loop is paused for a backup (the state is copied to host
memory; the file is written in a worker thread while training goes on). It is compared
with the bare time to copy the same state to host memory (the target: <= 1.5x).
"""
import asyncio
import shutil
import tempfile
import time

import common
import keras
import numpy as np

from callbacks import BackupAndRestore
from trainer import Program


def main() -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((1024,))
    h = keras.layers.Dense(2560, activation="relu")(inputs)
    h = keras.layers.Dense(2560, activation="relu")(h)
    outputs = keras.layers.Dense(10)(h)
    program = Program(inputs=inputs, outputs=outputs)
    program.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    params = program.count_params()
    x = np.random.default_rng(0).normal(size=(256, 1024)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, size=256)

    stalls, waits = [], []
    original_snapshot, original_flush = BackupAndRestore._snapshot, BackupAndRestore._backup

    def timed_snapshot(self):
        start = time.perf_counter()
        result = original_snapshot(self)
        stalls.append(time.perf_counter() - start)
        return result

    async def timed_backup(self):
        start = time.perf_counter()
        await original_flush(self)
        waits.append(time.perf_counter() - start)

    BackupAndRestore._snapshot, BackupAndRestore._backup = timed_snapshot, timed_backup
    folder = tempfile.mkdtemp()
    asyncio.run(program.fit(x, y, epochs=6, batch_size=16, verbose=0,
                            callbacks=[BackupAndRestore(folder, delete_checkpoint=True)]))
    shutil.rmtree(folder, ignore_errors=True)
    BackupAndRestore._snapshot, BackupAndRestore._backup = original_snapshot, original_flush

    variables = program.trainable_variables + program.non_trainable_variables + program.optimizer.variables

    def copy_to_host():
        # The anchor: one copy of each variable into a new NumPy array (what a user writes).
        return [np.array(v, copy=True) for v in variables]

    copy_to_host()
    copy = common.best_of(copy_to_host, repeats=5)
    stall = float(np.median(stalls))
    waited = float(np.median(waits))
    rows = [
        ("program parameters", f"{params / 1e6:.1f} M", "~10 M"),
        ("state copied (variables + optimizer)", f"{sum(np.prod(v.shape) for v in variables) * 4 / 2**20:.0f} MiB", ""),
        ("bare copy to host memory", f"{copy * 1000:.1f} ms", ""),
        ("training stall per backup (median)", f"{stall * 1000:.1f} ms", ""),
        ("stall / copy", f"{stall / copy:.2f}", "<= 1.5"),
        ("time in the backup hook (median; includes waiting for the previous file)", f"{waited * 1000:.1f} ms", ""),
    ]
    common.report("checkpoint", rows, notes="6 epochs of 16 steps (batch 16), a backup at each epoch end. The stall "
                  "is the snapshot (each value copied once into a host buffer kept between backups, callback "
                  "state pickled); the bare copy is `np.array(variable, copy=True)` for every variable, best "
                  "of 5; the .npz is written "
                  "by a worker thread while training goes on. A backup first waits for the previous file to be "
                  "written; the last row includes that wait.")


if __name__ == "__main__":
    main()
