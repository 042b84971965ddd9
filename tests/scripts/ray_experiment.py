"""A driver running a 2-run experiment on a local Ray; the test signals it mid-run, then runs it again.

    python ray_experiment.py OUTPUT_DIR
"""
import asyncio
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import ray  # noqa: E402

from callbacks import Callback  # noqa: E402
from trainer import Experiment, Program  # noqa: E402


def build(config):
    inputs = keras.Input((8,))
    program = Program(inputs=inputs, outputs=keras.layers.Dense(1, activation="sigmoid")(inputs))
    program.compile(optimizer=keras.optimizers.SGD(config["lr"]), loss="binary_crossentropy")
    return program


class Slow(Callback):
    def on_epoch_end(self, epoch, logs=None):
        time.sleep(0.3)  # so that the signal lands in the middle of the runs


class Print(Callback):
    def on_epoch_end(self, epoch, logs=None):
        print(f"EPOCH {epoch}", flush=True)


async def main(out: str) -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    experiment = Experiment("signal", build, {"a": {"lr": 0.1}, "b": {"lr": 0.05}}, output_dir=out)
    result = await experiment.run(x, y, epochs=10, engine="ray", callbacks=[Print()],
                                  run_callbacks=lambda ctx: [Slow()])
    print("RESUMED" if any(run.resumed_from for run in result.runs) else "FRESH")
    print("DONE", *[run.status for run in result.runs], flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
