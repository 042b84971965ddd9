"""Training from files: a PyDataset with workers and a grain pipeline, interrupted and resumed.

Run it:  python guides/04_data_pipelines.py       (writes into ./asyncfit-guide-04/)

1. The digits of scikit-learn's load_digits, upscaled to 32x32, are written as PNG
   files (nothing is downloaded).
2. A `keras.utils.PyDataset` decodes them, with `workers=4`: a pool of 4 threads reads
   up to `max_queue_size` batches ahead, off the event loop's thread, while a 1 ms
   ticker keeps running beside the fit. The same dataset with `workers=1` for
   comparison (one reader thread, still off the loop).
3. A grain pipeline over the same files (`grain.MapDataset.source(...).shuffle().map().batch()`).
4. Both are interrupted by SIGTERM in the middle of an epoch and run again: the PyDataset
   resumes at its batch (its order is drawn from the fit's seed and the epoch), grain from
   the iterator state kept in the backup; each ends with the same variables as a run that
   was never interrupted.
"""
import asyncio
import os
import shutil
import signal
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grain  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from callbacks import BackupAndRestore, Callback, TrainingInterrupted  # noqa: E402
from trainer import Program  # noqa: E402

WORK = os.path.abspath("asyncfit-guide-04")
BATCH = 64


def write_pngs(folder: str) -> list[tuple[str, int]]:
    """load_digits' 8x8 images upscaled to 32x32 grey PNGs; returns (path, label) pairs."""
    os.makedirs(folder, exist_ok=True)
    images, labels = load_digits(return_X_y=True)
    files = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = os.path.join(folder, f"{i:04d}_{label}.png")
        pixels = (image.reshape(8, 8) * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).save(path)
        files.append((path, int(label)))
    return files


def decode(entry: tuple[str, int]) -> tuple[np.ndarray, np.int32]:
    path, label = entry
    with Image.open(path) as image:
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    return pixels.reshape(32, 32, 1), np.int32(label)


class PngDigits(keras.utils.PyDataset):
    """Batches of decoded PNG files; `workers`, `use_multiprocessing` and `max_queue_size`
    go to PyDataset as in Keras."""

    def __init__(self, files, batch_size=BATCH, **kwargs):
        super().__init__(**kwargs)
        self.files, self.batch_size = files, batch_size

    def __len__(self):
        return len(self.files) // self.batch_size

    def __getitem__(self, index):
        rows = [decode(entry) for entry in self.files[index * self.batch_size:(index + 1) * self.batch_size]]
        return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows])


def grain_pipeline(files):
    return grain.MapDataset.source(files).shuffle(seed=0).map(decode).batch(BATCH, drop_remainder=True)


def build_program() -> Program:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 1))
    hidden = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    hidden = keras.layers.Flatten()(hidden)
    outputs = keras.layers.Dense(10, activation="softmax")(hidden)
    program = Program(inputs=inputs, outputs=outputs, name="png_digits")
    program.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    return program


async def fit_with_ticker(program: Program, data, **kwargs):
    """`program.fit(data)` with a task beside it that wants to run every millisecond."""
    gaps, done = [], False

    async def ticker():
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    started = time.perf_counter()
    history = await program.fit(data, verbose=0, **kwargs)
    seconds = time.perf_counter() - started
    done = True
    await tick
    return history, seconds, np.percentile(gaps, 99) * 1e3


class SendSigterm(Callback):
    def __init__(self, at_step: int):
        super().__init__()
        self.at_step = at_step

    def on_train_batch_end(self, batch, logs=None):
        if self._program.step_count == self.at_step:
            os.kill(os.getpid(), signal.SIGTERM)


async def interrupt_and_resume(name: str, make_data, epochs: int, at_step: int, **fit_kwargs) -> None:
    backup_dir = os.path.join(WORK, f"backup-{name}")
    try:
        await build_program().fit(make_data(), epochs=epochs, verbose=0,
                                  callbacks=[BackupAndRestore(backup_dir, save_freq=5), SendSigterm(at_step)],
                                  **fit_kwargs)
    except TrainingInterrupted as interrupted:
        print(f"  {name}: {interrupted}")
    program, backup = build_program(), BackupAndRestore(backup_dir, save_freq=5)
    history = await program.fit(make_data(), epochs=epochs, verbose=0, callbacks=[backup], **fit_kwargs)
    print(f"  {name}: resumed from {os.path.basename(backup.restored_from)}, {program.step_count} steps in all, "
          f"last epoch's accuracy {history.history['accuracy'][-1]:.3f}")
    reference = build_program()
    await reference.fit(make_data(), epochs=epochs, verbose=0, **fit_kwargs)
    same = all(np.allclose(a, b, atol=1e-6) for a, b in zip(program.get_variables(), reference.get_variables()))
    print(f"  {name}: same variables as an uninterrupted run: {same}")
    if not same:
        sys.exit(f"{name}: the resumed run differs from the uninterrupted one")


async def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    print("== 1. PNG files ==")
    files = write_pngs(os.path.join(WORK, "images"))
    print(f"  {len(files)} files like {os.path.relpath(files[0][0], WORK)}")

    print("== 2. PyDataset: workers=1, then workers=4 ==")
    for workers in (1, 4):
        program = build_program()
        await program.fit(PngDigits(files[:BATCH]), epochs=1, verbose=0)  # compiled: what follows is reading
        history, seconds, p99 = await fit_with_ticker(program, PngDigits(files, workers=workers, max_queue_size=8),
                                                      epochs=2, seed=0)
        print(f"  workers={workers}: 2 epochs in {seconds:.2f} s, accuracy {history.history['accuracy'][-1]:.3f}, "
              f"a 1 ms ticker beside it: p99 gap {p99:.1f} ms")

    print("== 3. grain ==")
    history = await build_program().fit(grain_pipeline(files), epochs=3, verbose=0)
    print(f"  3 epochs of {len(grain_pipeline(files))} batches, accuracy {history.history['accuracy'][-1]:.3f}")

    print("== 4. SIGTERM mid-epoch, then resume ==")
    steps = len(files) // BATCH
    await interrupt_and_resume("PyDataset", lambda: PngDigits(files, workers=4), epochs=2, at_step=steps + 8,
                               shuffle=True, seed=1)
    await interrupt_and_resume("grain", lambda: grain_pipeline(files), epochs=2, at_step=steps + 8)


if __name__ == "__main__":
    asyncio.run(main())
