"""Streamed input pipelines: Program.fit against keras.Model.fit on the same sources.

    python bench/pipelines.py        (KERAS_BACKEND=jax by default; torch and tensorflow too)

1. A `keras.utils.PyDataset(workers=4)` whose `__getitem__` sleeps 4 ms (a disk read)
   and returns 32 rows of the step_overhead MLP's data; 2 epochs of 150 batches.
2. A generator that blocks 15 ms per batch (time.sleep): the ticker's gaps beside Program.fit.
3. PNG files (load_digits upscaled to 32x32, written at run time) decoded by a grain
   pipeline, and (tensorflow backend) by tf.data; a small CNN; 2 epochs.

Every fit is warm (two first fits of each contender compiled its steps); the contenders take
turns, 5 rounds; the ratio is the median of one round's Program.fit time / keras.fit time
(<= 1.0: at least keras.fit's throughput). Then 5 more Program.fits with a 1 ms ticker
beside them (keras.fit cannot share the loop); the p99 gap is over all of them.
"""
import asyncio
import os
import tempfile
import time

import common
import keras
import numpy as np

ROUNDS = 5


class SleepyRows(keras.utils.PyDataset):
    def __init__(self, x, y, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x) // 32

    def __getitem__(self, index):
        time.sleep(0.004)
        rows = slice(index * 32, (index + 1) * 32)
        return self.x[rows], self.y[rows]


def png_files(folder: str, count: int = 1024) -> list[tuple[str, int]]:
    from PIL import Image
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    files = []
    for i in range(count):
        path = os.path.join(folder, f"{i:04d}.png")
        pixels = (images[i].reshape(8, 8) * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).save(path)
        files.append((path, int(labels[i])))
    return files


def decode(entry):
    from PIL import Image

    path, label = entry
    with Image.open(path) as image:
        return (np.asarray(image, dtype=np.float32) / 255.0).reshape(32, 32, 1), np.int32(label)


def small_cnn(cls):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 1))
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(h))
    model = cls(inputs=inputs, outputs=outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


async def with_ticker(coro, gaps: list) -> None:
    """Await `coro` with the 1 ms ticker of bench/event_loop.py beside it; its gaps (ms) go to `gaps`."""
    from event_loop import gaps_during

    gaps.extend((await gaps_during(coro)).tolist())


def compare(name: str, build, make_data, epochs: int = 2) -> list[tuple[str, str, str]]:
    from trainer import Program

    program, model = build(Program), build(keras.Model)
    for _ in range(2):  # compiles, and warms the data library's own threads and caches
        asyncio.run(program.fit(make_data(), epochs=1, verbose=0))
        model.fit(make_data(), epochs=1, verbose=0)
    times = common.times_of_each({
        "program": lambda: asyncio.run(program.fit(make_data(), epochs=epochs, verbose=0)),
        "keras": lambda: model.fit(make_data(), epochs=epochs, verbose=0),
    }, repeats=ROUNDS)
    gaps: list = []  # the ticker in runs of their own: it costs the loop's thread a wake-up every ms
    for _ in range(ROUNDS):
        asyncio.run(with_ticker(program.fit(make_data(), epochs=epochs, verbose=0), gaps))
    ratio = common.paired_ratio(times, "program", "keras")
    return [
        (f"{name}: Program.fit / keras.fit time", f"{ratio:.2f} (best {min(times['program']):.2f} s / "
         f"{min(times['keras']):.2f} s)", "<= 1.0"),
        (f"{name}: ticker p99 gap during Program.fit", f"{np.percentile(gaps, 99):.2f} ms",
         "<= 5 ms" if "PyDataset" in name else ""),
    ]


def blocking_generator(build, x, y) -> list[tuple[str, str, str]]:
    """Ticker gaps beside a warm Program.fit on a generator that blocks 15 ms per batch."""
    from trainer import Program

    def batches():
        for i in range(60):
            time.sleep(0.015)
            yield x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]

    program = build(Program)
    asyncio.run(program.fit(x, y, epochs=1, verbose=0))
    gaps: list = []
    for _ in range(ROUNDS):
        asyncio.run(with_ticker(program.fit(batches(), epochs=1, verbose=0), gaps))
    return [("generator blocking 15 ms a batch: ticker p99 / max gap beside Program.fit",
             f"{np.percentile(gaps, 99):.2f} / {max(gaps):.2f} ms", "<= 5 / 20 ms")]


def main() -> None:
    from step_overhead import mlp

    rng = np.random.default_rng(0)
    x = rng.normal(size=(150 * 32, 32)).astype("float32")
    y = x[:, :4].sum(axis=1, keepdims=True).astype("float32")
    rows = compare("PyDataset(workers=4), 4 ms a batch", mlp, lambda: SleepyRows(x, y, workers=4))
    rows += blocking_generator(mlp, x, y)
    with tempfile.TemporaryDirectory() as folder:
        files = png_files(folder)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            paths = [f for f, _ in files]
            labels = np.array([label for _, label in files], dtype=np.int32)

            def tf_decode(path, label):
                image = tf.cast(tf.io.decode_png(tf.io.read_file(path), channels=1), tf.float32) / 255.0
                return tf.reshape(image, (32, 32, 1)), label

            rows += compare("PNG files, tf.data", small_cnn, lambda: tf.data.Dataset.from_tensor_slices(
                (paths, labels)).map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE).batch(64).prefetch(2))
        # tf.data before grain: run after the grain rows, both contenders' tf.data fits were slower.
        try:
            import grain
        except ImportError:
            grain = None
        if grain is not None:
            rows += compare("PNG files, grain", small_cnn,
                            lambda: grain.MapDataset.source(files).map(decode).batch(64, drop_remainder=True))
    common.report("pipelines", rows, notes=(
        f"Warm fits, the two contenders taking turns, {ROUNDS} rounds; ratio: median over rounds of "
        "Program.fit time / keras.fit time. The ticker (sleeping 1 ms) runs beside 5 more Program.fits."))


if __name__ == "__main__":
    main()
