"""Experiments on Ray (issue 17): a real local Ray with 2 CPUs, shared by the module."""
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from callbacks import Callback  # noqa: E402
from conftest import BACKEND  # noqa: E402
from trainer import Experiment, Program, RayEngine  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def build(config):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    program = Program(inputs=inputs, outputs=keras.layers.Dense(1, activation="sigmoid")(hidden))
    program.compile(optimizer=keras.optimizers.SGD(config["lr"]), loss="binary_crossentropy", metrics=["accuracy"])
    return program


ARMS = {"fast": {"lr": 0.1}, "slow": {"lr": 0.01}}


class Hooks(Callback):
    """Records the experiment hooks and the epoch logs it is given, in order."""

    def __init__(self):
        super().__init__()
        self.events = []

    def on_experiment_begin(self, ctx):
        self.events.append("experiment_begin")

    def on_group_begin(self, ctx, group):
        self.events.append(f"group_begin {group}")

    def on_run_begin(self, ctx):
        self.events.append(f"run_begin {ctx.arm}-{ctx.repeat}")

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch {epoch} loss={logs['loss']:.6f}")

    def on_run_end(self, ctx, result):
        self.events.append(f"run_end {ctx.arm}-{ctx.repeat} {result.status}")

    def on_group_end(self, ctx, group):
        self.events.append(f"group_end {group}")

    def on_experiment_end(self, ctx, result):
        self.events.append("experiment_end")


def table(result):
    return result.to_dataframe().drop(columns=["wall_time"])


async def test_ray_gives_the_local_table_and_hook_order(toy):
    x, y = toy
    experiment = Experiment("same", build, ARMS, n_repeats=2)
    on_ray, local = Hooks(), Hooks()
    result = await experiment.run(x, y, epochs=3, engine="ray", callbacks=[on_ray])
    reference = await experiment.run(x, y, epochs=3, callbacks=[local])
    import pandas as pd

    pd.testing.assert_frame_equal(table(result), table(reference), rtol=1e-5)
    assert result.best_arm("loss") == reference.best_arm("loss")
    pd.testing.assert_frame_equal(result.summary().drop(columns="wall_time", level=0),
                                  reference.summary().drop(columns="wall_time", level=0), rtol=1e-5)
    # The same hooks in the same order; each run's epoch logs reach the driver's callbacks.
    strip = [e.split(" loss=")[0] for e in on_ray.events]
    assert strip == [e.split(" loss=")[0] for e in local.events]
    assert strip.count("epoch 2") == 4
    assert os.path.exists(result.plot("loss", path=os.path.join(os.getcwd(), "ray-plot.png")))
    os.remove("ray-plot.png")


class DieOnce(Callback):
    """SIGKILLs its own worker process at the end of epoch 1 of run slow-0, the first time."""

    def __init__(self, marker, always=False):
        super().__init__()
        self.marker, self.always = marker, always

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1 and (self.always or not os.path.exists(self.marker)):
            open(self.marker, "a").close()
            time.sleep(1.0)  # the backup of epoch 0 is written in the background meanwhile
            os.kill(os.getpid(), signal.SIGKILL)


async def test_a_killed_worker_is_retried_and_resumes_from_its_backup(toy, tmp_path):
    x, y = toy
    marker = str(tmp_path / "killed")

    def run_callbacks(ctx):
        return [DieOnce(marker)] if (ctx.arm, ctx.repeat) == ("slow", 0) else []

    experiment = Experiment("retry", build, ARMS, n_repeats=1, output_dir=str(tmp_path / "out"))
    result = await experiment.run(x, y, epochs=4, engine=RayEngine(max_retries=1), run_callbacks=run_callbacks)
    assert os.path.exists(marker)
    runs = {run.arm: run for run in result.runs}
    assert [run.status for run in result.runs] == ["ok", "ok"]
    assert runs["slow"].attempts == 2 and runs["fast"].attempts == 1  # the failure and the retry are recorded
    assert list(result.to_dataframe()["attempts"]) == [1, 2]
    assert runs["slow"].resumed_from is not None and "backup" in runs["slow"].resumed_from
    assert len(runs["slow"].history["loss"]) == 4
    reference = await Experiment("retry", build, ARMS, n_repeats=1).run(x, y, epochs=4)
    np.testing.assert_allclose(runs["slow"].history["loss"], reference.runs[1].history["loss"], rtol=1e-5)


async def test_a_run_that_keeps_dying_is_failed_and_the_experiment_goes_on(toy, tmp_path):
    x, y = toy
    marker = str(tmp_path / "killed")

    def run_callbacks(ctx):
        return [DieOnce(marker, always=True)] if ctx.arm == "slow" else []

    experiment = Experiment("dies", build, ARMS, n_repeats=1)
    result = await experiment.run(x, y, epochs=3, engine=RayEngine(max_retries=1), run_callbacks=run_callbacks)
    statuses = {run.arm: run.status for run in result.runs}
    assert statuses == {"fast": "ok", "slow": "failed"}
    failed = result.runs[1]
    assert failed.attempts == 2 and failed.seed == experiment.run_seed("slow", 0)
    assert "died" in failed.error.lower() or "crash" in failed.error.lower(), failed.error
    with pytest.raises(RuntimeError):
        await Experiment("dies", build, {"slow": ARMS["slow"]}, fail_fast=True).run(
            x, y, epochs=3, engine=RayEngine(max_retries=0), run_callbacks=run_callbacks)


def test_bad_engine_and_missing_ray_are_named(monkeypatch):
    from trainer.ray_engine import as_engine, import_ray

    with pytest.raises(ValueError, match="engine='spark'"):
        as_engine("spark")
    with pytest.raises(ValueError, match="max_retries"):
        RayEngine(max_retries=-1)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"asyncfit\[ray\]"):
        import_ray()


@pytest.mark.skipif(BACKEND != "jax", reason="one backend is enough for the driver-signal test")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_driver_signal_stops_the_workers_keeps_backups_and_a_rerun_resumes(tmp_path, signum):
    script = os.path.join(os.path.dirname(__file__), "scripts", "ray_experiment.py")
    out = str(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, script, out], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("EPOCH 3"):  # backups of epochs 0-3 written
            proc.send_signal(signum)
            break
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    backups = [os.path.join(root, f) for root, _, files in os.walk(out) for f in files if f.endswith(".npz")]
    assert backups, "the backups the workers wrote are kept"
    deadline = time.monotonic() + 30
    while _workers_of(out) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _workers_of(out) == []  # the driver's Ray took its workers with it
    rerun = subprocess.run([sys.executable, script, out], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "RESUMED" in rerun.stdout and "DONE ok ok" in rerun.stdout


def _workers_of(out: str) -> list[int]:
    """Ray worker processes still alive (ray::... processes of any session)."""
    found = subprocess.run(["pgrep", "-f", "ray::_train_in_worker"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]
