"""`Experiment`: arms x repeats of training runs, with experiment/group/run hooks."""
from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import math
import os
import time
import traceback
from typing import Any, Callable

import keras
import numpy as np

from callbacks.atomic import atomic_write, atomic_write_bytes
from callbacks.callback import TEST_HOOKS, TRAIN_HOOKS, overrides
from callbacks.callback_list import CallbackList
from callbacks.monitor_base import metric_direction
from trainer.benchmark import Benchmark
from trainer.benchmark import score as score_benchmark
from trainer.ray_engine import as_engine, run_on_ray

FIT_HOOKS = TRAIN_HOOKS + TEST_HOOKS  # what one fit call fires (validation included)


@dataclasses.dataclass
class ExperimentContext:
    """What the experiment hooks receive. Run-level fields are None at the experiment and group level.

    `ids` is a dict loggers fill (an MLflow logger puts its experiment id in at
    `on_experiment_begin`, a parent run id at `on_group_begin`...); each level starts
    from a copy of the level above.
    """

    experiment: str
    output_dir: str | None = None
    group: str | None = None
    arm: str | None = None
    repeat: int | None = None
    seed: int | None = None
    run_config: dict | None = None
    stage: str | None = None
    ids: dict = dataclasses.field(default_factory=dict)

    def child(self, **fields) -> "ExperimentContext":
        return dataclasses.replace(self, ids=dict(self.ids), **fields)


@dataclasses.dataclass
class RunResult:
    """One run: an arm's repeat (all of its stages)."""

    arm: str
    repeat: int
    seed: int
    status: str  # "ok" or "failed"
    history: dict = dataclasses.field(default_factory=dict)
    epochs: int = 0
    wall_time: float = 0.0
    error: str | None = None
    stages: list = dataclasses.field(default_factory=list)
    program: Any = None
    traceback: str | None = None
    benchmarks: dict = dataclasses.field(default_factory=dict)  # name -> metrics, scored after training
    attempts: int = 1  # with the Ray engine: how many times a worker started this run (retries + 1)
    resumed_from: str | None = None  # with the Ray engine: the backup a retried run resumed from

    def final(self) -> dict:
        return {k: v[-1] for k, v in self.history.items() if v}

    def best(self) -> dict:
        best = {}
        for key, values in self.history.items():
            direction = metric_direction(key)
            finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
            if finite and direction:
                best[key] = min(finite) if direction == "min" else max(finite)
        return best

    def row(self) -> dict:
        row = {"arm": self.arm, "repeat": self.repeat, "seed": self.seed, "status": self.status,
               "epochs": self.epochs, "wall_time": round(self.wall_time, 4), "error": self.error or "",
               "attempts": self.attempts}
        row.update({f"final_{k}": v for k, v in self.final().items()})
        for name, metrics in self.benchmarks.items():
            row.update({f"bench_{name}_{k}": v for k, v in metrics.items()})
        row.update({f"best_{k}": v for k, v in self.best().items()})
        return row


class ExperimentResult:
    """All runs of an experiment: a table, a per-arm summary, the best arm, plots."""

    def __init__(self, name: str, runs: list[RunResult], output_dir: str | None = None):
        self.name = name
        self.runs = runs
        self.output_dir = output_dir

    def to_dataframe(self):
        """One row per run: arm, repeat, seed, status, final_* and best_* metrics, epochs, wall_time."""
        import pandas as pd

        return pd.DataFrame([run.row() for run in self.runs])

    def summary(self):
        """Per arm: mean, std and count of every numeric column, over its successful runs."""
        frame = self.to_dataframe()
        frame = frame[frame["status"] == "ok"]
        numeric = [c for c in frame.columns if c.startswith(("final_", "best_")) or c in ("epochs", "wall_time")]
        return frame.groupby("arm")[numeric].agg(["mean", "std", "count"])

    def best_arm(self, monitor: str, mode: str = "auto") -> str:
        """The arm whose runs have the best mean of their best `monitor` value."""
        direction = metric_direction(monitor) if mode == "auto" else mode
        if direction not in ("min", "max"):
            raise ValueError(f"cannot tell whether {monitor!r} should go up or down; pass mode='min' or 'max'.")
        column = f"best_{monitor}"
        frame = self.to_dataframe()
        frame = frame[frame["status"] == "ok"]
        if column not in frame.columns:
            raise ValueError(f"no run logged {monitor!r}; the metrics are: "
                             f"{sorted(c[5:] for c in frame.columns if c.startswith('best_'))}.")
        means = frame.groupby("arm")[column].mean()
        return str(means.idxmin() if direction == "min" else means.idxmax())

    def plot(self, metric: str = "val_loss", path: str | None = None) -> str:
        """Mean curve per arm with a +/- one std band over epochs; saved as a PNG (returns its path)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for arm in dict.fromkeys(run.arm for run in self.runs):
            curves = [run.history[metric] for run in self.runs if run.arm == arm and metric in run.history]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            values = np.array([c[:length] for c in curves], dtype=float)
            mean, std = values.mean(axis=0), values.std(axis=0)
            epochs = np.arange(1, length + 1)
            ax.plot(epochs, mean, label=f"{arm} (n={len(curves)})")
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.25)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{self.name}: {metric}")
        ax.legend()
        if path is None:
            path = os.path.join(self.output_dir or ".", f"{self.name}-{metric}.png")
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100), suffix=".png")
        plt.close(fig)
        return path


class Experiment:
    """Train every arm `n_repeats` times with distinct, recorded seeds.

    Args:
        name: the experiment's name.
        build: `build(config) -> compiled Program`, called once per run, after the
            global Keras seed was set to the run's seed.
        arms: `{arm_name: config}`. A config may hold `"stages"` (overriding `stages`).
        n_repeats: runs per arm; the replicates of an arm form a group.
        stages: continual stages every arm goes through, each a `fit` of the same
            program: a list of dicts of fit arguments (`name`, `x`, `y`, `epochs`,
            `validation_data`, ...) that override `run()`'s. With `output_dir`, a
            finished stage is saved, and a re-run starts at the stage it was in.
        output_dir: where `results.csv` (a row per finished run, rewritten atomically as
            each run ends), per-run histories and stage checkpoints go. A re-run skips
            the runs that finished well.
        seed: the experiment's base seed; run seeds derive from it, the arm and the repeat.
        fail_fast: stop at the first failing run (default: record it and go on).
        benchmarks: `{name: trainer.Benchmark(x, y)}` scored after each run's training:
            `on_benchmark_eval(ctx, result, predictions, step=None)` on the experiment's
            callbacks, and `bench_{name}_{metric}` columns in `to_dataframe()`.

    Example:
        ```python
        def build(config):
            program = make_program()
            program.compile(optimizer=keras.optimizers.Adam(config["lr"]), loss="mse")
            return program

        experiment = Experiment("lr", build, {"small": {"lr": 1e-3}, "large": {"lr": 1e-2}}, n_repeats=3)
        result = await experiment.run(x, y, epochs=10, validation_split=0.2)
        result.summary(); result.best_arm("val_loss"); result.plot("val_loss")
        ```
    """

    def __init__(self, name: str, build: Callable[[dict], Any], arms: dict[str, dict], n_repeats: int = 1,
                 stages: list[dict] | None = None, output_dir: str | None = None, seed: int = 0,
                 fail_fast: bool = False, benchmarks: dict | None = None):
        if not arms:
            raise ValueError("arms is empty; pass {arm_name: config} with at least one arm.")
        if n_repeats < 1:
            raise ValueError(f"n_repeats={n_repeats}; it must be >= 1.")
        if not callable(build):
            raise TypeError("build must be a function build(config) -> compiled Program.")
        self.name = name
        self.build = build
        self.arms = dict(arms)
        self.n_repeats = n_repeats
        self.stages = stages
        self.output_dir = os.fspath(output_dir) if output_dir is not None else None
        self.seed = seed
        self.fail_fast = fail_fast
        self.benchmarks = dict(benchmarks or {})
        for name, benchmark in self.benchmarks.items():
            if not isinstance(benchmark, Benchmark):
                raise TypeError(f"benchmarks[{name!r}] is a {type(benchmark).__name__}; give trainer.Benchmark(x, y).")

    def run_context(self, group_ctx: ExperimentContext, arm: str, repeat: int) -> ExperimentContext:
        """The context of one run (its arm, repeat, seed and config), under its group's."""
        return group_ctx.child(arm=arm, repeat=repeat, seed=self.run_seed(arm, repeat),
                               run_config=dict(self.arms[arm]))

    def run_seed(self, arm: str, repeat: int) -> int:
        """The seed of one run: reproducible, distinct across arms and repeats."""
        index = list(self.arms).index(arm)
        return int(np.random.SeedSequence([self.seed, index, repeat]).generate_state(1)[0] % (2**31 - 1))

    async def run(self, x=None, y=None, *, callbacks: list | None = None,
                  run_callbacks: Callable[[ExperimentContext], list] | None = None, max_concurrency: int = 1,
                  engine: Any = "local", **fit_kwargs) -> ExperimentResult:
        """Train every run; returns an `ExperimentResult`.

        Args:
            x, y, **fit_kwargs: passed to every `fit` (stages may override them).
            callbacks: get the experiment hooks, and (with max_concurrency=1) are passed
                to every `fit` too. With `engine="ray"` they stay in the driver: they get the
                experiment hooks and each run's `on_epoch_end(epoch, logs)` as it comes.
            run_callbacks: `ctx -> [callbacks]`, fresh callbacks for each run's fits
                (needed for fit-level callbacks when runs go concurrently; with Ray they
                run in the worker).
            max_concurrency: how many runs train at once (local engine).
            engine: "local", "ray" or `trainer.RayEngine(...)`: each run in a Ray worker
                (`pip install 'asyncfit[ray]'`), see `trainer/ray_engine.py`.
        """
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency}; it must be >= 1.")
        ray_engine = as_engine(engine)
        if ray_engine is not None:
            return await run_on_ray(self, ray_engine, x, y, callbacks=callbacks, run_callbacks=run_callbacks,
                                    fit_kwargs=fit_kwargs)
        shared = CallbackList(callbacks or ())
        if max_concurrency > 1:
            busy = [type(cb).__name__ for cb in shared if any(overrides(cb, h) for h in FIT_HOOKS)]
            if busy:
                raise ValueError(f"callbacks {busy} hook into fit, and one instance cannot follow concurrent runs; "
                                 "give them through run_callbacks=lambda ctx: [...] instead.")
        ctx = ExperimentContext(experiment=self.name, output_dir=self.output_dir)
        done = self._load_finished()
        runs: dict[tuple, RunResult] = {}
        await shared.fire("on_experiment_begin", ctx)
        semaphore = asyncio.Semaphore(max_concurrency)
        failed: list[BaseException] = []

        async def one(group_ctx, arm, repeat):
            async with semaphore:
                if failed and self.fail_fast:
                    return
                key = (arm, repeat)
                if key in done:
                    runs[key] = done[key]
                    return
                run_ctx = self.run_context(group_ctx, arm, repeat)
                await shared.fire("on_run_begin", run_ctx)
                result = await self._train(run_ctx, x, y, shared if max_concurrency == 1 else None,
                                           run_callbacks, fit_kwargs, experiment_hooks=shared)
                runs[key] = result
                await shared.fire("on_run_end", run_ctx, result)
                self._save_results(runs)
                if result.status != "ok" and self.fail_fast:
                    failed.append(RuntimeError(result.error))

        for arm in self.arms:
            group_ctx = ctx.child(group=arm)
            await shared.fire("on_group_begin", group_ctx, arm)
            await asyncio.gather(*(one(group_ctx, arm, repeat) for repeat in range(self.n_repeats)))
            await shared.fire("on_group_end", group_ctx, arm)
            if failed and self.fail_fast:
                break
        ordered = [runs[(arm, r)] for arm in self.arms for r in range(self.n_repeats) if (arm, r) in runs]
        result = ExperimentResult(self.name, ordered, self.output_dir)
        await shared.fire("on_experiment_end", ctx, result)
        if failed and self.fail_fast:
            raise failed[0]
        return result

    async def _train(self, ctx: ExperimentContext, x, y, shared: CallbackList | None, run_callbacks,
                     fit_kwargs: dict, experiment_hooks: CallbackList | None = None) -> RunResult:
        started = time.perf_counter()
        result = RunResult(arm=ctx.arm, repeat=ctx.repeat, seed=ctx.seed, status="ok")
        stages = ctx.run_config.get("stages", self.stages) or [{}]
        run_dir = self._run_dir(ctx)
        first_stage = self._load_stage_progress(run_dir)
        try:
            keras.utils.set_random_seed(ctx.seed)
            program = self.build(ctx.run_config)  # no await inside: the seed cannot be raced
            if first_stage:
                self._load_stage_state(program, run_dir, result)
            for index, stage in enumerate(stages):
                if index < first_stage:
                    continue
                stage_ctx = ctx.child(stage=stage.get("name", f"stage{index}"))
                kwargs = {"x": x, "y": y, "verbose": 0, **fit_kwargs,
                          **{k: v for k, v in stage.items() if k != "name"}}
                kwargs.setdefault("seed", ctx.seed)
                program.__dict__["_asyncfit_experiment_ctx"] = stage_ctx  # for on_benchmark_eval in the loop
                fit_callbacks = list(shared.callbacks) if shared is not None else []
                if run_callbacks is not None:
                    fit_callbacks += list(run_callbacks(stage_ctx))
                history = await program.fit(callbacks=fit_callbacks, **kwargs)
                for key, values in history.history.items():
                    result.history.setdefault(key, []).extend(values)
                result.epochs += len(history.epoch)
                result.stages.append({"stage": stage_ctx.stage, "epochs": len(history.epoch)})
                if run_dir is not None and index + 1 < len(stages):
                    self._save_stage_state(program, run_dir, index + 1, result)
            result.program = program
            for name, benchmark in self.benchmarks.items():  # after training: step None
                scored = await score_benchmark(program, name, benchmark, hooks=experiment_hooks, ctx=ctx, step=None,
                                               batch_size=fit_kwargs.get("batch_size", 32))
                result.benchmarks[name] = scored.metrics
        except Exception as error:  # a failing run is recorded; the experiment goes on
            result.status = "failed"
            result.error = f"{type(error).__name__}: {error}"
            result.traceback = traceback.format_exc()
        result.wall_time = time.perf_counter() - started
        if run_dir is not None:
            atomic_write_bytes(os.path.join(run_dir, "history.json"),
                               json.dumps({"row": result.row(), "history": result.history,
                                           "stages": result.stages}).encode())
        return result

    # -- files: results.csv, per-run history and stage state ------------------------------------------
    def _run_dir(self, ctx: ExperimentContext) -> str | None:
        if self.output_dir is None:
            return None
        path = os.path.join(self.output_dir, "runs", f"{ctx.arm}-{ctx.repeat}")
        os.makedirs(path, exist_ok=True)
        return path

    def _save_results(self, runs: dict) -> None:
        if self.output_dir is None:
            return
        rows = [runs[k].row() for k in sorted(runs, key=lambda k: (list(self.arms).index(k[0]), k[1]))]
        columns = list(dict.fromkeys(c for row in rows for c in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(os.path.join(self.output_dir, "results.csv"), buffer.getvalue().encode())

    def _load_finished(self) -> dict:
        """Runs that finished well in an earlier call (their history files)."""
        if self.output_dir is None:
            return {}
        done = {}
        for arm in self.arms:
            for repeat in range(self.n_repeats):
                path = os.path.join(self.output_dir, "runs", f"{arm}-{repeat}", "history.json")
                if not os.path.exists(path):
                    continue
                with open(path) as handle:
                    saved = json.load(handle)
                row = saved["row"]
                if row["status"] == "ok":
                    done[(arm, repeat)] = RunResult(arm=arm, repeat=repeat, seed=row["seed"], status="ok",
                                                    history=saved["history"], epochs=row["epochs"],
                                                    wall_time=row["wall_time"], stages=saved.get("stages", []),
                                                    attempts=row.get("attempts", 1))
        return done

    @staticmethod
    def _load_stage_progress(run_dir: str | None) -> int:
        if run_dir is None or not os.path.exists(os.path.join(run_dir, "stage.json")):
            return 0
        with open(os.path.join(run_dir, "stage.json")) as handle:
            return json.load(handle)["next_stage"]

    @staticmethod
    def _save_stage_state(program, run_dir: str, next_stage: int, result: RunResult) -> None:
        program.jax_state_sync()
        optimizer = program.optimizer
        arrays = {f"v{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(program.variables)}
        arrays.update({f"o{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(optimizer.variables)})

        def write(tmp):
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        atomic_write(os.path.join(run_dir, "stage.npz"), write)
        atomic_write_bytes(os.path.join(run_dir, "stage.json"), json.dumps({
            "next_stage": next_stage, "step_count": program.step_count, "history": result.history,
            "epochs": result.epochs, "stages": result.stages}).encode())

    @staticmethod
    def _load_stage_state(program, run_dir: str, result: RunResult) -> None:
        with open(os.path.join(run_dir, "stage.json")) as handle:
            saved = json.load(handle)
        if not program.optimizer.built:
            program.optimizer.build(program.trainable_variables)
        with np.load(os.path.join(run_dir, "stage.npz")) as data:
            for i, v in enumerate(program.variables):
                v.assign(data[f"v{i}"])
            for i, v in enumerate(program.optimizer.variables):
                v.assign(data[f"o{i}"])
        program.step_count = saved["step_count"]
        result.history = saved["history"]
        result.epochs = saved["epochs"]
        result.stages = saved["stages"]


__all__ = ["Experiment", "ExperimentContext", "ExperimentResult", "RunResult"]
