"""The training stall of a per-epoch BackupAndRestore on a ~10M-parameter program,
and the time of a `.keras` save (what ProgramCheckpoint pauses the loop for).

    python bench/checkpoint.py

The stall is the time the loop is paused for a backup (the state is copied to host
memory; the file is written in a worker thread while training goes on). It is compared
with the bare time to copy the same state to host memory (the target: <= 1.5x).
The saves: `Program.save` against `keras.Model.save` of the same program, as Keras 3.15
ships (its skip sets not cached, see trainer/keras_saving.py), taking turns, median.
"""
import asyncio
import shutil
import tempfile
import time

import common
import keras
import numpy as np

from keras.src.backend.common import global_state

from callbacks import BackupAndRestore
from step_overhead import mlp
from trainer import Program
from trainer.keras_saving import SKIPSET_KEYS


def save_times(program, repeats: int) -> tuple[float, float]:
    """Median seconds of a `.keras` save by Program.save and by keras.Model.save, taking turns."""
    folder = tempfile.mkdtemp()
    ours, theirs = [], []
    program.save(f"{folder}/warm.keras")  # the first save records the program's file layout
    keys = SKIPSET_KEYS.values()
    cached = {key: global_state.get_global_attribute(key) for key in keys}
    for _ in range(repeats):
        start = time.perf_counter()
        program.save(f"{folder}/program.keras")
        ours.append(time.perf_counter() - start)
        for key in keys:
            global_state.set_global_attribute(key, None)  # as Keras leaves them
        start = time.perf_counter()
        keras.Model.save(program, f"{folder}/keras.keras")
        theirs.append(time.perf_counter() - start)
        for key, value in cached.items():
            global_state.set_global_attribute(key, value)  # as Program.save keeps them
    shutil.rmtree(folder, ignore_errors=True)
    return float(np.median(ours)), float(np.median(theirs))


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
    big_ours, big_keras = save_times(program, repeats=5)
    small = mlp(Program)
    asyncio.run(small.fit(x[:, :32], y.astype("float32"), epochs=1, verbose=0))
    small_ours, small_keras = save_times(small, repeats=40)
    stall = float(np.median(stalls))
    waited = float(np.median(waits))
    rows = [
        ("program parameters", f"{params / 1e6:.1f} M", "~10 M"),
        ("state copied (variables + optimizer)", f"{sum(np.prod(v.shape) for v in variables) * 4 / 2**20:.0f} MiB", ""),
        ("bare copy to host memory", f"{copy * 1000:.1f} ms", ""),
        ("training stall per backup (median)", f"{stall * 1000:.1f} ms", ""),
        ("stall / copy", f"{stall / copy:.2f}", "<= 1.5"),
        ("time in the backup hook (median; includes waiting for the previous file)", f"{waited * 1000:.1f} ms", ""),
        (".keras save of this program: keras.Model.save", f"{big_keras * 1000:.0f} ms", ""),
        (".keras save of this program: Program.save", f"{big_ours * 1000:.0f} ms", ""),
        (".keras save of the step_overhead MLP (2.2k parameters + Adam): keras.Model.save",
         f"{small_keras * 1000:.1f} ms", ""),
        (".keras save of the step_overhead MLP: Program.save", f"{small_ours * 1000:.1f} ms", ""),
    ]
    common.report("checkpoint", rows, notes="6 epochs of 16 steps (batch 16), a backup at each epoch end. The stall "
                  "is the snapshot (each value copied once into a host buffer kept between backups, callback "
                  "state pickled); the bare copy is `np.array(variable, copy=True)` for every variable, best "
                  "of 5; the .npz is written "
                  "by a worker thread while training goes on. A backup first waits for the previous file to be "
                  "written; the hook row includes that wait. Saves: median of 5 (this program) and 40 (the MLP), "
                  "the two taking turns, no fsync; keras.Model.save runs with Keras' skip sets uncached, as "
                  "Keras 3.15 leaves them; Program.save writes the same bytes from the layout its first save "
                  "recorded (trainer/keras_saving.py).")


if __name__ == "__main__":
    main()
