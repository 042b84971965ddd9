"""Experiments: arms x repeats, hooks in order, seeds, failures, concurrency, re-runs, plots."""

import keras
import numpy as np
import pytest

from callbacks import Callback
from conftest import weights_of
from trainer import Experiment, ExperimentResult, Program

ARMS = {"slow": {"lr": 0.01}, "fast": {"lr": 0.3}}


class Killed(BaseException):
    """The process dying mid-run (not an Exception, so not recorded as a failed run)."""


def build(config):
    """Builds under the seed the experiment set (make_program would reseed)."""
    if config.get("explode"):
        raise RuntimeError("this arm cannot be built")
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    program = Program(inputs=inputs, outputs=keras.layers.Dense(1, activation="sigmoid")(hidden))
    program.compile(optimizer=keras.optimizers.SGD(config["lr"]), loss="binary_crossentropy", metrics=["accuracy"])
    return program


class Recorder(Callback):
    def __init__(self):
        super().__init__()
        self.log = []

    def on_experiment_begin(self, ctx):
        ctx.ids["experiment"] = "E1"
        self.log.append("experiment_begin")

    def on_group_begin(self, ctx, group):
        assert ctx.ids["experiment"] == "E1"
        ctx.ids["group"] = group
        self.log.append(f"group_begin:{group}")

    def on_run_begin(self, ctx):
        assert ctx.ids == {"experiment": "E1", "group": ctx.arm}
        self.log.append(f"run_begin:{ctx.arm}:{ctx.repeat}")

    def on_train_begin(self, logs=None):
        self.log.append("train_begin")

    def on_train_end(self, logs=None):
        self.log.append("train_end")

    def on_run_end(self, ctx, run_result):
        self.log.append(f"run_end:{ctx.arm}:{ctx.repeat}:{run_result.status}")

    def on_group_end(self, ctx, group):
        self.log.append(f"group_end:{group}")

    def on_experiment_end(self, ctx, result):
        assert isinstance(result, ExperimentResult)
        self.log.append("experiment_end")


async def test_hook_order_for_two_arms_two_repeats(toy):
    recorder = Recorder()
    experiment = Experiment("order", build, ARMS, n_repeats=2)
    result = await experiment.run(*toy, epochs=1, callbacks=[recorder])
    run = lambda arm, r: [f"run_begin:{arm}:{r}", "train_begin", "train_end", f"run_end:{arm}:{r}:ok"]  # noqa: E731
    assert recorder.log == ["experiment_begin",
                            "group_begin:slow", *run("slow", 0), *run("slow", 1), "group_end:slow",
                            "group_begin:fast", *run("fast", 0), *run("fast", 1), "group_end:fast",
                            "experiment_end"]
    frame = result.to_dataframe()
    assert list(frame["arm"]) == ["slow", "slow", "fast", "fast"] and set(frame["status"]) == {"ok"}
    assert {"final_loss", "best_accuracy", "epochs", "wall_time", "seed"} <= set(frame.columns)


async def test_seeds_are_distinct_recorded_and_reproducible(toy):
    starts = []

    class FirstWeights(Callback):
        def on_train_begin(self, logs=None):
            starts.append(weights_of(self.program)[0].copy())

    experiment = Experiment("seeds", build, ARMS, n_repeats=3)
    first = await experiment.run(*toy, epochs=1, callbacks=[FirstWeights()])
    seeds = list(first.to_dataframe()["seed"])
    assert len(set(seeds)) == 6
    again = await Experiment("seeds", build, ARMS, n_repeats=3).run(*toy, epochs=1, callbacks=[FirstWeights()])
    assert list(again.to_dataframe()["seed"]) == seeds
    for a, b in zip(starts[:6], starts[6:]):
        np.testing.assert_array_equal(a, b)  # same seed, same initial variables
    assert not np.array_equal(starts[0], starts[1])  # another repeat, other variables
    np.testing.assert_allclose(first.to_dataframe()["final_loss"], again.to_dataframe()["final_loss"], rtol=1e-6)


async def test_a_failing_arm_is_recorded_and_the_experiment_goes_on(toy, tmp_path):
    arms = {"good": {"lr": 0.1}, "bad": {"lr": 0.1, "explode": True}, "also_good": {"lr": 0.05}}
    result = await Experiment("fail", build, arms, output_dir=str(tmp_path)).run(*toy, epochs=1)
    frame = result.to_dataframe().set_index("arm")
    assert frame.loc["bad", "status"] == "failed"
    assert "RuntimeError: this arm cannot be built" in frame.loc["bad", "error"]
    assert frame.loc["good", "status"] == frame.loc["also_good", "status"] == "ok"
    assert list(result.summary().index) == ["also_good", "good"]
    with pytest.raises(RuntimeError, match="cannot be built"):
        await Experiment("fail", build, arms, fail_fast=True).run(*toy, epochs=1)


async def test_concurrent_runs_equal_sequential_runs(toy):
    experiment = Experiment("concurrency", build, ARMS, n_repeats=2)
    sequential = (await experiment.run(*toy, epochs=2, validation_split=0.25)).to_dataframe()
    concurrent = (await experiment.run(*toy, epochs=2, validation_split=0.25, max_concurrency=4)).to_dataframe()
    for column in ("seed", "final_loss", "final_val_loss", "best_val_accuracy"):
        np.testing.assert_allclose(sequential[column], concurrent[column], rtol=1e-6)


async def test_concurrency_refuses_shared_fit_callbacks(toy):
    with pytest.raises(ValueError, match="run_callbacks"):
        await Experiment("c", build, ARMS).run(*toy, epochs=1, max_concurrency=2, callbacks=[Recorder()])


async def test_a_killed_experiment_rerun_skips_finished_runs(toy, tmp_path):
    built = []

    def counting_build(config):
        built.append(config["lr"])
        return build(config)

    class Kill(Callback):
        def on_train_begin(self, logs=None):
            if len(built) == 3:
                raise Killed  # the process dies in the third run

    experiment = Experiment("kill", counting_build, ARMS, n_repeats=2, output_dir=str(tmp_path))
    with pytest.raises(Killed):
        await experiment.run(*toy, epochs=1, run_callbacks=lambda ctx: [Kill()])
    import pandas as pd

    assert len(pd.read_csv(tmp_path / "results.csv")) == 2  # the finished runs were kept
    built.clear()
    result = await experiment.run(*toy, epochs=1)
    assert built == [0.3, 0.3]  # only the fast arm's two runs trained again
    assert len(result.to_dataframe()) == 4 and len(pd.read_csv(tmp_path / "results.csv")) == 4


async def test_stages_and_resuming_at_the_stage_it_was_in(toy, tmp_path):
    x, y = toy
    epochs_seen = []

    class Crash(Callback):
        def on_train_begin(self, logs=None):
            epochs_seen.append(self.params["epochs"])
            if self.params["epochs"] == 3 and not tmp_path.joinpath("crashed").exists():
                tmp_path.joinpath("crashed").write_text("1")
                raise Killed

    stages = [{"name": "pretrain", "epochs": 2, "x": x[:128], "y": y[:128]}, {"name": "finetune", "epochs": 3}]
    experiment = Experiment("stages", build, {"only": {"lr": 0.1}}, stages=stages, output_dir=str(tmp_path))
    with pytest.raises(Killed):
        await experiment.run(x, y, run_callbacks=lambda ctx: [Crash()])
    result = await experiment.run(x, y, run_callbacks=lambda ctx: [Crash()])
    assert epochs_seen == [2, 3, 3]  # pretrain once; finetune interrupted, then resumed at its stage
    run = result.runs[0]
    assert run.status == "ok" and run.epochs == 5
    assert [s["stage"] for s in run.stages] == ["pretrain", "finetune"]
    assert run.program.step_count == 2 * 4 + 3 * 8  # pretrain steps restored, then finetune


async def test_best_arm_and_plots_are_real_pngs(toy, tmp_path):
    result = await Experiment("plots", build, ARMS, n_repeats=2, output_dir=str(tmp_path)).run(
        *toy, epochs=3, validation_split=0.25)
    assert result.best_arm("val_loss") in ARMS
    frame = result.to_dataframe()
    means = frame.groupby("arm")["best_val_loss"].mean()
    assert result.best_arm("val_loss") == means.idxmin()
    assert result.best_arm("val_accuracy") == frame.groupby("arm")["best_val_accuracy"].mean().idxmax()
    path = result.plot("val_loss")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    history_png = tmp_path / "history.png"
    program = build({"lr": 0.1})
    history = await program.fit(*toy, epochs=2, verbose=0, validation_split=0.25)
    history.plot("loss", str(history_png))
    assert history_png.read_bytes()[:4] == b"\x89PNG"
