"""Experiments: two learning rates x 3 repeats on load_digits, a summary table and a plot.

Run it:  python guides/03_experiment.py        (writes into ./asyncfit-guide-03/)

Each arm is trained 3 times with distinct, recorded seeds; the replicates of an arm
form a group. A logger callback sees the experiment/group/run hierarchy through the
experiment hooks. results.csv gets a row as each run ends, so if this script is
killed, running it again trains only the runs that had not finished.
"""
import asyncio
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from callbacks import Callback  # noqa: E402
from trainer import Experiment, Program  # noqa: E402

OUTPUT = os.path.abspath("asyncfit-guide-03")


def build(config: dict) -> Program:
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    outputs = keras.layers.Dense(10, activation="softmax")(hidden)
    program = Program(inputs=inputs, outputs=outputs)
    program.compile(optimizer=keras.optimizers.SGD(config["learning_rate"], momentum=0.9),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return program


class Narrator(Callback):
    """A logger: files each run under its experiment and group."""

    def on_experiment_begin(self, ctx):
        print(f"experiment {ctx.experiment!r}")

    def on_group_begin(self, ctx, group):
        print(f"  arm {group}")

    def on_run_end(self, ctx, run_result):
        final = run_result.final()
        print(f"    repeat {ctx.repeat} (seed {ctx.seed}): {run_result.status}, "
              f"val_accuracy {final.get('val_accuracy', float('nan')):.4f} in {run_result.wall_time:.1f}s")


async def main() -> None:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    experiment = Experiment(
        "learning-rate", build,
        arms={"lr=0.003": {"learning_rate": 0.003}, "lr=0.03": {"learning_rate": 0.03}},
        n_repeats=3, output_dir=OUTPUT,
    )
    result = await experiment.run(x, y, epochs=10, batch_size=32, validation_split=0.2, callbacks=[Narrator()])
    pd.set_option("display.width", 120)
    print("\nper-arm summary (final val_accuracy):")
    print(result.summary()["final_val_accuracy"])
    print("\nbest arm by val_accuracy:", result.best_arm("val_accuracy"))
    print("plot:", result.plot("val_accuracy"))
    print("results table:", os.path.join(OUTPUT, "results.csv"))


if __name__ == "__main__":
    asyncio.run(main())
