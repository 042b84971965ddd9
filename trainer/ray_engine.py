"""Experiments on Ray: each run of an `Experiment` trains in a Ray worker.

`await experiment.run(x, y, ..., engine="ray")` (or `engine=RayEngine(...)`) submits every
run as a Ray task at once; Ray places them on the cluster's CPUs. The driver fires the
experiment hooks in the local engine's order (a group's runs, in repeat order, then the
next group), replaying each run's streamed epoch logs to its callbacks' `on_epoch_end`
as they come; runs that finish before their turn wait in a buffer. Ray is imported only
here, when an experiment asks for it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any

from callbacks.callback import Callback
from callbacks.callback_list import CallbackList
from callbacks.threads import to_host

if TYPE_CHECKING:  # trainer.experiment imports this module; these are only its types
    from trainer.experiment import Experiment, ExperimentContext, ExperimentResult, RunResult


@dataclasses.dataclass
class RayEngine:
    """Where and how an experiment's runs train on Ray.

    Args:
        address: the cluster to join (`ray.init(address=...)`); None starts a local Ray
            (or uses the one this process already started).
        resources_per_run: Ray resources each run asks for (`{"num_cpus": 1}`, `num_gpus`...).
        max_retries: how many times a run whose worker process died is started again.
            With `output_dir` on storage the workers share, the retry resumes from the
            run's backup (a `BackupAndRestore` the engine gives every run).
        init_kwargs: more `ray.init` arguments (`num_cpus`, `runtime_env`...).

    Example:
        ```python
        result = await experiment.run(x, y, epochs=5, engine=trainer.RayEngine(max_retries=1))
        ```
    """

    address: str | None = None
    resources_per_run: dict = dataclasses.field(default_factory=lambda: {"num_cpus": 1})
    max_retries: int = 2
    init_kwargs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"RayEngine(max_retries={self.max_retries!r}); it must be an int >= 0.")
        if not isinstance(self.resources_per_run, dict):
            raise ValueError(f"RayEngine(resources_per_run={self.resources_per_run!r}); give a dict such as "
                             "{'num_cpus': 1}.")


def import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("engine='ray' needs Ray, which is not installed: pip install 'asyncfit[ray]'.") from None
    return ray


def as_engine(engine: Any) -> RayEngine | None:
    """`engine=` of `Experiment.run` -> a RayEngine, or None for the local engine."""
    if engine in (None, "local"):
        return None
    if engine == "ray":
        return RayEngine()
    if isinstance(engine, RayEngine):
        return engine
    raise ValueError(f"engine={engine!r}; give 'local', 'ray' or trainer.RayEngine(...).")


class _Relay(Callback):
    """In the worker: sends each epoch's logs to the driver through a Ray queue."""

    def __init__(self, queue, key):
        super().__init__()
        self.queue, self.key = queue, key

    def on_epoch_end(self, epoch, logs=None):
        self.queue.put(("epoch", self.key, int(epoch), to_host(logs)))


def _train_in_worker(experiment: Experiment, ctx: ExperimentContext, data: dict, run_callbacks, queue) -> RunResult:
    """One run, in a Ray worker: the local engine's `_train`, with the epoch relay and
    (with `output_dir`) a BackupAndRestore of its own, so a retried run resumes."""
    from callbacks import BackupAndRestore

    key = (ctx.arm, ctx.repeat)
    queue.put(("attempt", key, os.getpid()))
    relay = _Relay(queue, key)
    backups = []

    def callbacks_for(stage_ctx):
        extra = list(run_callbacks(stage_ctx)) if run_callbacks is not None else []
        if experiment.output_dir is not None and not any(isinstance(cb, BackupAndRestore) for cb in extra):
            backup = BackupAndRestore(os.path.join(experiment.output_dir, "runs", f"{ctx.arm}-{ctx.repeat}",
                                                   f"backup-{stage_ctx.stage}"), save_freq="epoch")
            backups.append(backup)
            extra.append(backup)
        return [relay, *extra]

    result = asyncio.run(experiment._train(ctx, data["x"], data["y"], None, callbacks_for, data["fit_kwargs"]))
    result.program = None  # the program stays in the worker; its results come back
    result.resumed_from = next((b.restored_from for b in backups if b.restored_from), None)
    queue.put(("done", key, None))
    return result


async def run_on_ray(experiment: Experiment, engine: RayEngine, x, y, *, callbacks, run_callbacks,
                     fit_kwargs: dict) -> ExperimentResult:
    ray = import_ray()
    from ray.util.queue import Queue

    from trainer.experiment import ExperimentContext, ExperimentResult

    if not ray.is_initialized():
        ray.init(address=engine.address, **engine.init_kwargs)
    _ship_by_value(experiment.build, run_callbacks)
    shared = CallbackList(callbacks or ())
    ctx = ExperimentContext(experiment=experiment.name, output_dir=experiment.output_dir)
    done = experiment._load_finished()
    await shared.fire("on_experiment_begin", ctx)
    queue = Queue()
    data = ray.put({"x": x, "y": y, "fit_kwargs": fit_kwargs})
    remote = ray.remote(_train_in_worker).options(max_retries=engine.max_retries, retry_exceptions=False,
                                                  **_task_resources(engine.resources_per_run))
    tasks = {}
    for arm in experiment.arms:
        for repeat in range(experiment.n_repeats):
            if (arm, repeat) in done:
                continue
            run_ctx = experiment.run_context(ctx.child(group=arm), arm, repeat)
            tasks[(arm, repeat)] = (remote.remote(experiment, run_ctx, data, run_callbacks, queue), run_ctx.seed)
    follower = _Follower(queue, tasks)
    runs: dict[tuple, RunResult] = {}
    failed: list[str] = []
    try:
        for arm in experiment.arms:
            group_ctx = ctx.child(group=arm)
            await shared.fire("on_group_begin", group_ctx, arm)
            for repeat in range(experiment.n_repeats):
                key = (arm, repeat)
                if key in done:
                    runs[key] = done[key]
                    continue
                run_ctx = experiment.run_context(group_ctx, arm, repeat)
                await shared.fire("on_run_begin", run_ctx)
                result = await follower.follow(key, shared)
                runs[key] = result
                await shared.fire("on_run_end", run_ctx, result)
                experiment._save_results(runs)
                if result.status != "ok" and experiment.fail_fast:
                    failed.append(result.error or "failed")
                    break
            await shared.fire("on_group_end", group_ctx, arm)
            if failed:
                break
    finally:
        follower.stop()
        for ref, _ in tasks.values():
            ray.cancel(ref, force=True)  # nothing once done; a run still going when we leave stops
        ray.kill(queue.actor)
    ordered = [runs[(arm, r)] for arm in experiment.arms for r in range(experiment.n_repeats) if (arm, r) in runs]
    result = ExperimentResult(experiment.name, ordered, experiment.output_dir)
    await shared.fire("on_experiment_end", ctx, result)
    if failed:
        raise RuntimeError(failed[0])
    return result


class _Follower:
    """In the driver: reads the workers' queue and hands each run's events to whoever
    follows that run; a run's events wait until its turn."""

    def __init__(self, queue, tasks: dict):
        self.queue, self.tasks = queue, tasks
        self.events: dict[tuple, asyncio.Queue] = {key: asyncio.Queue() for key in tasks}
        self.attempts: dict[tuple, list] = {key: [] for key in tasks}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            kind, key, *payload = await self.queue.get_async()
            key = tuple(key)
            if kind == "attempt":
                self.attempts[key].append(payload[0])
            self.events[key].put_nowait((kind, *payload))

    async def follow(self, key: tuple, shared: CallbackList) -> RunResult:
        """Fire the driver callbacks' `on_epoch_end` with the run's epoch logs as they come;
        return its result (a run whose worker kept dying is recorded as failed)."""
        ref, seed = self.tasks[key]
        task = asyncio.ensure_future(_await_ref(ref))
        events = self.events[key]
        result = None
        while True:
            getter = asyncio.ensure_future(events.get())
            waiting = {getter} if task.done() else {getter, task}
            finished, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if getter in finished:
                kind, *payload = getter.result()
                if kind == "epoch" and shared.wants("on_epoch_end"):
                    await shared.fire("on_epoch_end", payload[0], payload[1])
                elif kind == "done":
                    result = await task
                    break
                continue
            getter.cancel()
            error = task.exception()
            if error is not None:  # the worker died more than max_retries times (or Ray failed)
                from trainer.experiment import RunResult

                arm, repeat = key
                result = RunResult(arm=arm, repeat=repeat, seed=seed, status="failed",
                                   error=f"{type(error).__name__}: {error}".splitlines()[0],
                                   traceback="".join(traceback.format_exception(error)))
                break
            # Done: its "done" event, sent before it returned, is in the queue; read up to it.
        result.attempts = len(self.attempts[key]) or 1
        return result

    def stop(self) -> None:
        self.reader.cancel()


async def _await_ref(ref):
    return await ref


def _task_resources(resources: dict) -> dict:
    options = {k: resources[k] for k in ("num_cpus", "num_gpus", "memory") if k in resources}
    custom = {k: v for k, v in resources.items() if k not in options}
    if custom:
        options["resources"] = custom
    return options


def _ship_by_value(*functions) -> None:
    """Functions defined in modules Ray's workers cannot import (a test file, a notebook)
    go to them by value, as `__main__`'s do."""
    from ray import cloudpickle

    for fn in functions:
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        if module is None or module.__name__ == "__main__":
            continue
        path = getattr(module, "__file__", None) or ""
        if "site-packages" not in path and not module.__name__.startswith(("trainer", "callbacks")):
            cloudpickle.register_pickle_by_value(module)


__all__ = ["RayEngine"]
