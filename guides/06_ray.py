"""An experiment's runs on Ray: the same table as the local engine, and a killed worker retried.

Run it:  python guides/06_ray.py       (needs `pip install 'asyncfit[ray]'`; writes ./asyncfit-guide-06/)

1. A local Ray with 2 CPUs (`ray.init(num_cpus=2)`; with a cluster, pass its address to
   `trainer.RayEngine(address=...)`).
2. 2 arms x 2 repeats of a digit classifier, `engine="ray"`: every run trains in a Ray
   worker; the driver's callback gets the experiment hooks in the local order and each
   run's epoch logs as they come. The table equals the local engine's.
3. `output_dir` on storage the workers share: a worker killed (SIGKILL) in the middle of
   a run is started again (`max_retries`) and resumes from the run's backup; the retry
   is recorded (`attempts`, `resumed_from`).
"""
import asyncio
import os
import shutil
import signal
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from callbacks import Callback  # noqa: E402
from trainer import Experiment, Program, RayEngine  # noqa: E402

WORK = os.path.abspath("asyncfit-guide-06")


def build(config: dict) -> Program:
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(config["width"], activation="relu")(inputs)
    program = Program(inputs=inputs, outputs=keras.layers.Dense(10, activation="softmax")(hidden))
    program.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    return program


class Follow(Callback):
    """In the driver: experiment hooks, and the runs' epoch logs streamed back from Ray."""

    def on_run_begin(self, ctx):
        print(f"  run {ctx.arm}-{ctx.repeat} (seed {ctx.seed})", end="", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        print(f"  e{epoch}: val_accuracy {logs['val_accuracy']:.3f}", end="", flush=True)

    def on_run_end(self, ctx, result):
        print(f"  -> {result.status}")


class KillMyWorkerOnce(Callback):
    """In the worker: the first time, SIGKILL this process at the end of epoch 2."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            time.sleep(1.0)  # let the epoch-1 backup reach the disk (it is written in the background)
            os.kill(os.getpid(), signal.SIGKILL)


async def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    arms = {"narrow": {"width": 16}, "wide": {"width": 64}}

    print("== 1. a local Ray ==")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"  {ray.cluster_resources().get('CPU', 0):.0f} CPUs")

    print("== 2. 2 arms x 2 repeats on Ray, then locally ==")
    experiment = Experiment("digits-width", build, arms, n_repeats=2)
    started = time.perf_counter()
    on_ray = await experiment.run(x, y, epochs=4, validation_split=0.2, engine="ray", callbacks=[Follow()])
    ray_seconds = time.perf_counter() - started
    started = time.perf_counter()
    local = await experiment.run(x, y, epochs=4, validation_split=0.2)
    local_seconds = time.perf_counter() - started
    columns = ["arm", "repeat", "seed", "final_val_accuracy", "best_val_loss"]
    print(on_ray.to_dataframe()[columns].to_string(index=False))
    same = (on_ray.to_dataframe()[columns].round(5).equals(local.to_dataframe()[columns].round(5)))
    print(f"  same table as the local engine: {same}; best arm {on_ray.best_arm('val_loss')}; "
          f"{ray_seconds:.1f} s on Ray (worker start-up and imports included), {local_seconds:.1f} s locally")
    if not same:
        sys.exit("the Ray engine's table differs from the local one")

    print("== 3. a worker killed mid-run is retried and resumes ==")
    marker = os.path.join(WORK, "killed-once")
    experiment = Experiment("digits-retry", build, {"wide": arms["wide"]}, n_repeats=1,
                            output_dir=os.path.join(WORK, "retry"))
    result = await experiment.run(x, y, epochs=5, validation_split=0.2, engine=RayEngine(max_retries=2),
                                  run_callbacks=lambda ctx: [KillMyWorkerOnce(marker)])
    run = result.runs[0]
    print(f"  status {run.status}, attempts {run.attempts}, resumed from "
          f"{os.path.relpath(run.resumed_from, WORK) if run.resumed_from else None}, {run.epochs} epochs")
    print(pd.read_csv(os.path.join(WORK, "retry", "results.csv"))[["arm", "status", "epochs"]].to_string(index=False))
    if run.status != "ok" or run.attempts != 2 or not run.resumed_from:
        sys.exit("the killed run was not retried from its backup")
    ray.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
