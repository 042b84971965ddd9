"""Quickstart: train a digit classifier with `await program.fit(...)`.

Run it:  python guides/01_quickstart.py        (KERAS_BACKEND=jax by default)

It trains a small network on scikit-learn's `load_digits` (it ships with the
package: nothing is downloaded), validates on the last 20% of the samples, shows
the progress bar, then evaluates, predicts, saves and reloads the program.
"""
import asyncio
import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from trainer import Program, load_program  # noqa: E402


def build_program() -> Program:
    inputs = keras.Input((64,), name="pixels")
    hidden = keras.layers.Dense(64, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(10, activation="softmax", name="digit")(hidden)
    program = Program(inputs=inputs, outputs=outputs, name="digits")
    program.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return program


async def main(epochs: int = 20) -> dict:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    keras.utils.set_random_seed(0)
    program = build_program()

    # The event loop stays free while training: this ticker keeps ticking.
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    history = await program.fit(x, y, epochs=epochs, batch_size=32, validation_split=0.2, seed=0)
    ticking.cancel()

    final = {key: values[-1] for key, values in history.history.items()}
    print(f"\nafter {program.step_count} steps: " + ", ".join(f"{k}={v:.4f}" for k, v in final.items()))
    print(f"a concurrent task ticked {ticks} times during fit")

    metrics = await program.evaluate(x, y, verbose=0)
    predictions = await program.predict(x[:5], verbose=0)
    print("evaluate on all digits:", {k: round(v, 4) for k, v in metrics.items()})
    print("predicted", predictions.argmax(axis=1), "true", y[:5])

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "digits.keras")
        program.save(path)
        restored = load_program(path)
        same = np.allclose(await restored.predict(x[:5], verbose=0), predictions, atol=1e-6)
        print("saved and reloaded; same predictions:", same)
    return final


if __name__ == "__main__":
    result = asyncio.run(main())
    if result["val_accuracy"] < 0.85:
        sys.exit(f"val_accuracy {result['val_accuracy']:.3f} is below 0.85")
