"""The one async engine behind `fit`, `evaluate` and `predict`.

Every hook's call site is in this file, in the order of DESIGN.md:

    on_train_begin
    for epoch: on_epoch_begin
        for batch: on_train_batch_begin
            [on_compute_update_begin, compute, on_compute_update_end]* (retry on reject)
            before_parameter_update, apply (step_count += 1)
            on_train_batch_end
        validation: on_test_* (+ on_eval per named evaluator, on_benchmark_eval per Benchmark)
        on_epoch_end
    on_train_end | on_train_error

Speed rules: a hook nobody overrides is never called (`callbacks.wants`); when no
callback sits between computing and applying an update, one fused step does both;
batch logs stay on the device (a hook that reads them pays the copy); epoch logs are
copied to the host once per epoch.

Responsiveness rules: torch and TensorFlow steps run on one backend thread that the
loop awaits (several steps per hand-off when no hook needs each one). JAX: the loop
yields to the event loop every `YIELD_EVERY_S`; the
first call of a step with a new batch signature (a compile) runs in a worker thread;
at most `MAX_QUEUED_STEPS` steps are queued on the device before the loop waits for
them, in a worker thread too; while it runs, the loop's thread has a short scheduler
slice (trainer/prompt_wakeups.py), so it gets the CPU back at once when it wakes.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
import warnings
from typing import Any, Callable

import keras
import numpy as np
from keras import tree

from callbacks.callback import StopTraining, TrainingInterrupted, Update
from callbacks.callback_list import CallbackList
from callbacks.threads import FAST_GIL_HANDOFF, await_to_the_end, in_worker_thread, to_host
from callbacks.processes import any_process, process_count
from trainer.backends import first_dim, make_stepper, with_keras_settings
from trainer.benchmark import score as score_benchmark
from trainer.data import ArraySource, Source
from trainer.digest import DigestCollector
from trainer.run_settings import with_run_settings

YIELD_EVERY_S = 0.002
BOUNDARY_YIELD_S = 0.0005
OFF_LOOP_SHUFFLE_BYTES = 4 << 20  # a larger epoch gather is done in a worker thread (NumPy frees the GIL)
MAX_QUEUED_STEPS = 8
CHUNK_STEPS = 16  # steps per dispatch when no callback needs per-batch control
DEFAULT_COMPILE_S = 0.3  # what a fused step's compile is taken to cost when this process did not time it
CHUNK_COMPILE_FACTOR = 1.5  # a chunk's compile against its single step's (a scan around it)
CHUNK_STEP_FRACTION = 0.25  # a step inside a chunk against a single step, as a rough prior
CHUNKS_AT_ONCE = False  # True: compile the chunk at its first use and wait for it (tests use it)
AGREE_EVERY = 16  # several processes: how many steps apart they agree on a signal or a stop

STEP_STAGE_HOOKS = ("on_compute_update_begin", "on_compute_update_end", "before_parameter_update")
PER_BATCH_HOOKS = STEP_STAGE_HOOKS + ("on_train_batch_begin", "on_train_batch_end")


BACKGROUND_COMPILES = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncfit-compile")


def wait_for_background_compiles() -> None:
    """Block until the compiles started in the background are done (benchmarks use it so
    a warm-up's compile does not run into the next measurement)."""
    BACKGROUND_COMPILES.submit(lambda: None).result()


def _in_background(compile_job) -> float:
    """Run `compile_job` in this (worker) thread; the seconds it took."""
    started = time.perf_counter()
    with FAST_GIL_HANDOFF.held():  # its tracing holds the GIL: hand it back to the loop often
        compile_job()
    return time.perf_counter() - started


class Pacer:
    """Keeps the event loop responsive and the device queue short."""

    def __init__(self, stepper):
        self.stepper = stepper
        self.last_yield = time.perf_counter()
        self.count = 0
        self.pending = None

    async def tick(self, token: Any) -> None:
        self.count += 1
        if self.count % MAX_QUEUED_STEPS == 0:
            # JAX dispatches asynchronously: wait for the step queued MAX_QUEUED_STEPS ago.
            pending, self.pending = self.pending, token
            if pending is not None and not self.stepper.is_ready(pending):
                await asyncio.to_thread(self.stepper.wait, pending)
                self.last_yield = time.perf_counter()
                return
        now = time.perf_counter()
        if now - self.last_yield >= YIELD_EVERY_S:
            await self._yield()

    # Between epochs and around validation several millisecond-long jobs follow each other
    # (a host copy, resetting metrics, the next epoch's shuffle): the loop yields between them.
    async def breathe(self) -> None:
        if time.perf_counter() - self.last_yield >= BOUNDARY_YIELD_S:
            await self._yield()

    async def _yield(self) -> None:
        # Three passes of the event loop, so a task whose `asyncio.sleep` ended runs before
        # the next step: its timer fires in one pass, the timer's future wakes the task in
        # the next, and each pass runs the handles queued before it in order, ours first.
        # With one pass such a task waited for two more steps.
        for _ in range(3):
            await asyncio.sleep(0)
        self.last_yield = time.perf_counter()

    async def settle(self, value: Any) -> None:
        """Before a host copy of `value` (device arrays): wait until they are computed in a
        worker thread, not on the event loop's thread."""
        if value is not None and not self.stepper.is_ready(value):
            await asyncio.to_thread(self.stepper.wait, value)
            self.last_yield = time.perf_counter()
        await self.breathe()


@dataclasses.dataclass
class RunState:
    """Where one `fit` call is, for callbacks that save and resume it (BackupAndRestore).

    `epoch` and `batch` say where the next step starts (batch is the index of the
    next batch within `epoch`). A callback's `on_train_begin` may set `resume_at` to
    `(epoch, batch)`; the loop then starts there, keeping the restored metric state
    when it starts mid-epoch.
    """

    epochs: int
    seed: int
    source: Source
    validation: dict
    epoch: int = 0
    batch: int = 0
    resume_at: tuple | None = None
    batch_loss: Any = None  # this step's loss (not the running mean), or a fused chunk's per-step losses
    before_backup: list = dataclasses.field(default_factory=list)  # checks a backup must pass first
    # Observers that need no control between steps, so fused chunks stay on:
    # value_watchers get (first_step, losses, logs) after every step or chunk (losses is
    # that step's loss, or a chunk's per-step losses); interrupted is set by a signal
    # handler and makes the loop await interrupt_handlers after the current step.
    value_watchers: list = dataclasses.field(default_factory=list)
    interrupted: str | None = None
    interrupt_handlers: list = dataclasses.field(default_factory=list)
    keep_backup: bool = False
    completed: bool = False
    # What the current epoch is read from (a `Prefetch` for streamed sources); its `state`
    # (grain's iterator state) goes into backups, and comes back as `resume_state`.
    stream: Any = None
    resume_state: Any = None
    # Several processes: the stop and the interrupt they last agreed on (`Engine._agree_to_stop`).
    agreed_stop: bool = False
    agreed_interrupt: bool = False


class Engine:
    """Runs one `fit`, `evaluate` or `predict` call of a program."""

    def __init__(self, program, callbacks: CallbackList):
        self.program = program
        self.callbacks = callbacks
        self.stepper = make_stepper(program)
        self.pacer = Pacer(self.stepper)
        self.processes = process_count()
        self.compiles_awaited = 0  # how many compiles this engine's steps have waited for
        self.ahead: dict = {}  # signature -> the compile `_compile_ahead` started for it

    async def run(self, kind: str, batch, fn: Callable, *args):
        """Call `fn(*args)`, a step on `batch`. Torch and TensorFlow: on the backend thread,
        always. JAX: dispatched from here, except the first call per batch signature,
        which compiles, so it goes to a worker thread and the event loop keeps running."""
        stepper = self.stepper
        if stepper.off_loop:
            return await stepper.call(fn, *args)
        signature = stepper.signature(kind, batch)
        if signature not in stepper.seen:
            # Compile only, in a worker thread: nothing runs or is donated there, so a
            # cancellation meanwhile leaves the program as it was.
            ahead = self.ahead.pop(signature, None)
            if ahead is not None:  # started with the fit
                seconds = await await_to_the_end(ahead)
            else:
                seconds = await in_worker_thread(
                    _in_background, with_keras_settings(stepper.compile_job(kind, *args)))
            self.compiles_awaited += 1
            self._compiled(signature, seconds)
        return fn(*args)

    def _compiled(self, signature: tuple, seconds: float) -> None:
        """Record the step of `signature` as compiled (later calls go straight to it)."""
        self.stepper.compile_seconds[signature[0]] = seconds
        self.stepper.seen.add(signature)

    def _compile_ahead(self, source: Source, split: bool) -> None:
        """JAX, array data: the first step's compile starts now, in a worker thread, so the
        fit's start (on_train_begin: a restore, an MLflow run; the first shuffle) goes on
        beside it; the first step awaits it (`run`)."""
        stepper = self.stepper
        if stepper.off_loop or not isinstance(source, ArraySource):
            return
        kind = "compute" if split else "fused"
        try:
            batch = source.first_batch()
            signature = stepper.signature(kind, batch)
            if signature in stepper.seen:
                return
            # The job holds the state as it is now; the first step reads it again
            # (on_train_begin may restore the variables meanwhile).
            job = with_keras_settings(stepper.compile_job(kind, batch, again=True))
        except Exception:  # noqa: BLE001 - the first step meets it again, inside the hooks' error path
            return
        self.ahead[signature] = asyncio.get_running_loop().run_in_executor(None, _in_background, job)

    async def _compiles_ahead_done(self) -> None:
        """A fit that ends before the step it compiled ahead (stopped, failed, or its first
        step was another kind) still waits for that compile (a thread cannot be stopped
        halfway); what it compiled is there for the next fit."""
        ahead, self.ahead = self.ahead, {}
        for signature, compiling in ahead.items():
            try:
                seconds = await await_to_the_end(compiling)
            except Exception:  # noqa: BLE001 - the step that needs it raises it, as it compiles again
                continue
            self._compiled(signature, seconds)

    async def backend(self, fn: Callable, *args):
        """Backend work other than steps (metrics, snapshots): where the steps run."""
        if self.stepper.off_loop:
            return await self.stepper.call(fn, *args)
        return fn(*args)

    # -- training ------------------------------------------------------------------------
    @with_run_settings
    async def fit(self, run: RunState, *, initial_epoch: int, validation_freq: int, max_attempts: int) -> dict:
        try:
            return await self._fit(run, initial_epoch=initial_epoch, validation_freq=validation_freq,
                                   max_attempts=max_attempts)
        finally:
            await self._compiles_ahead_done()

    async def _fit(self, run: RunState, *, initial_epoch: int, validation_freq: int, max_attempts: int) -> dict:
        program, hooks, stepper = self.program, self.callbacks, self.stepper
        source, validation, epochs = run.source, run.validation, run.epochs
        split = any(hooks.wants(h) for h in STEP_STAGE_HOOKS)
        # Fused chunks: several steps per dispatch, only when nobody needs per-batch control.
        per_batch = any(hooks.wants(h) for h in PER_BATCH_HOOKS)
        if self.processes > 1:
            # Every process must run the same steps (each is a collective), but callbacks can
            # differ between them (process 0 alone has the writers): a hook on one decides for all.
            split, per_batch = await in_worker_thread(any_process, split, per_batch)
        chunked = (stepper.supports_chunks and not per_batch and isinstance(source, ArraySource)
                   and source.can_chunk())
        self._compile_ahead(source, split)
        # Torch and TensorFlow: with nobody to call between steps, the backend thread runs
        # several steps per hand-off, reading the batches itself.
        eager_runs = stepper.off_loop and not per_batch and not source.is_async
        epoch_logs: dict = {}
        program.__dict__.setdefault("_step_count", 0)
        program.stop_training = False
        object.__setattr__(program, "stop_reason", None)
        object.__setattr__(program, "_asyncfit_stepper", stepper)
        object.__setattr__(program, "_asyncfit_run", run)
        run.epoch, run.batch = initial_epoch, 0
        try:
            if hooks.wants("on_train_begin"):
                await hooks.fire("on_train_begin", None)
            start_epoch, start_batch = run.resume_at or (initial_epoch, 0)
            if start_batch and source.inexact_resume:
                warnings.warn(f"resuming in the middle of epoch {start_epoch + 1}: {source.inexact_resume}, so "
                              "the epoch starts again from its first batch.")
                start_batch = 0
            for epoch in range(start_epoch, epochs):
                first = start_batch if epoch == start_epoch else 0
                run.epoch, run.batch = epoch, first
                if first == 0:
                    await self.backend(stepper.reset_metrics)  # resumed mid-epoch: keep the restored running means
                    await self.pacer.breathe()
                if isinstance(source, ArraySource) and source.epoch_gather_bytes() > OFF_LOOP_SHUFFLE_BYTES:
                    await in_worker_thread(source.prepare_epoch, epoch)
                if hooks.wants("on_epoch_begin"):
                    await hooks.fire("on_epoch_begin", epoch, None)
                logs = None
                if chunked:
                    logs = await self._chunked_epoch(run, epoch, first)
                else:
                    resume_state = run.resume_state if epoch == start_epoch and first else None
                    run.stream = batches = source.open(epoch, first, resume_state, off_loop_consumer=eager_runs)
                    try:
                        if eager_runs:
                            logs = await self._eager_runs(run, batches)
                        else:
                            logs = await self._batch_by_batch(run, batches, split, max_attempts)
                    finally:
                        await close_stream(batches)
                if self.processes > 1:
                    await self._agree_to_stop(run)  # the epoch's data ended alike everywhere
                if self._interrupting(run):
                    await self._interrupt(run)
                if logs is None and first > 0:
                    logs = await self.backend(stepper.metrics_result)  # resumed right at the end of an epoch
                if logs is None:
                    warnings.warn(
                        f"the training data ran out before epoch {epoch + 1} of {epochs}: "
                        "a one-shot generator was exhausted; pass steps_per_epoch or a re-iterable source."
                    )
                    break
                await self.pacer.settle(logs)
                epoch_logs = await self.backend(to_host, logs)
                if validation and (epoch + 1) % validation_freq == 0:
                    epoch_logs.update(await self._validate(epoch, validation))
                run.epoch, run.batch = epoch + 1, 0
                if hooks.wants("on_epoch_end"):
                    await hooks.fire("on_epoch_end", epoch, epoch_logs)
                if self.processes > 1:
                    await self._agree_to_stop(run)
                    if self._interrupting(run):
                        await self._interrupt(run)
                if self._stopping(run):
                    break
                await self.pacer.breathe()
            else:
                run.completed = True
        except StopTraining as stop:
            object.__setattr__(program, "stop_reason", str(stop) or "StopTraining")
            run.keep_backup = stop.keep_backup
        except BaseException as error:
            stepper.push()
            await hooks.fire_error(error)
            self._finish()
            raise
        try:
            await self.backend(self._finalize_optimizer)
        except BaseException as error:
            await hooks.fire_error(error)
            self._finish()
            raise
        if hooks.wants("on_train_end"):
            try:
                await hooks.fire_all("on_train_end", epoch_logs)  # every callback cleans up
            except BaseException as error:
                self._finish()
                raise error
        self._finish()
        return epoch_logs

    async def _batch_by_batch(self, run: RunState, batches, split: bool, max_attempts: int):
        """An epoch's steps one at a time, with the per-batch hooks; the last step's logs."""
        hooks, stepper = self.callbacks, self.stepper
        wants_batch_begin = hooks.wants("on_train_batch_begin")
        wants_batch_end = hooks.wants("on_train_batch_end")
        logs = None
        while True:
            batch = await next_batch(batches)
            if batch is None:
                break
            if wants_batch_begin:
                await hooks.fire("on_train_batch_begin", run.batch, None)
            if split:
                logs, run.batch_loss = await self._staged_step(batch, max_attempts)
            else:
                logs, run.batch_loss = await self.run("fused", batch, stepper.train_step, batch)
            await self._steps_done(run, 1, logs)
            if wants_batch_end:
                await hooks.fire("on_train_batch_end", run.batch - 1, logs)
            if self._stopping(run):
                break
            await self.pacer.tick(logs)
        return logs

    async def _chunked_epoch(self, run: RunState, epoch: int, first: int):
        """One epoch in fused chunks of CHUNK_STEPS steps (plus single steps for the rest).

        Until the chunk is compiled (in the background, see `_chunk_compiled`), its batches
        train as single steps, so a first fit does not wait for that compile."""
        stepper = self.stepper
        logs = None
        steps_per_epoch = run.source.steps()
        for kind, batch in run.source.epoch_chunks(epoch, first, CHUNK_STEPS):
            remaining = (run.epochs - epoch) * steps_per_epoch - run.batch
            # Several processes run the same steps in lockstep: when to switch to chunks
            # cannot hang on each one's timings, so they compile the chunk at once.
            at_once = CHUNKS_AT_ONCE or self.processes > 1
            if kind == "chunk" and (at_once or self._chunk_compiled(batch, remaining)):
                # The chunk's per-step losses, as they are: indexing one out here would compile a
                # small op on the event loop's thread.
                logs, run.batch_loss = await self.run("chunk", batch, stepper.train_chunk, batch)
                await self._steps_done(run, CHUNK_STEPS, logs)
                if self._stopping(run):
                    break
                await self.pacer.tick(logs)
                continue
            singles = [batch] if kind != "chunk" else [tuple(None if p is None else p[i] for p in batch)
                                                        for i in range(CHUNK_STEPS)]
            started, compiles = time.perf_counter(), self.compiles_awaited
            for single in singles:
                logs, run.batch_loss = await self.run("fused", single, stepper.train_step, single)
                await self._steps_done(run, 1, logs)
                if self._stopping(run):
                    return logs
                await self.pacer.tick(logs)
            # Timed only without a compile among them: the first fit's first steps (a compile,
            # then a first call that fills JAX's dispatch caches) would look tens of times
            # dearer than the rest, and start the chunk's compile at once.
            if kind == "chunk" and self.compiles_awaited == compiles:
                signature = stepper.signature("chunk", batch)
                seconds, steps = stepper.single_seconds.get(signature, (0.0, 0))
                stepper.single_seconds[signature] = (seconds + time.perf_counter() - started, steps + CHUNK_STEPS)
        return logs

    def _chunk_compiled(self, batch, remaining_steps: int) -> bool:
        """Whether the fused chunk for `batch`'s shapes is compiled.

        Its compile starts in the background when it pays: when the single steps still to
        come in this fit would take longer than the compile (estimated from the single
        step's), or once the single steps standing in for chunks (in this and earlier fits
        of the program) have taken that long already (a ski-rental rule, for many short
        fits). A short first fit thus never waits for, nor shares its cores with, a compile
        it would not earn back. The compile changes nothing but JAX's caches, so it may
        finish after the fit (the program's next fit finds it)."""
        stepper = self.stepper
        signature = stepper.signature("chunk", batch)
        if signature in stepper.seen:
            return True
        pending = stepper.background.get(signature)
        if pending is None:
            spent, steps = stepper.single_seconds.get(signature, (0.0, 0))
            if not steps:
                return False  # time a few single steps first
            cost = CHUNK_COMPILE_FACTOR * stepper.compile_seconds.get("fused", DEFAULT_COMPILE_S)
            # A chunk step costs a fraction of a single one (bench MLP: 19 against ~100 us).
            saving = remaining_steps * (spent / steps) * (1 - CHUNK_STEP_FRACTION)
            if spent < cost and saving < cost:
                return False
            stepper.background[signature] = BACKGROUND_COMPILES.submit(
                _in_background, with_keras_settings(stepper.compile_job("chunk", batch)))
            return False
        if not pending.done():
            return False
        del stepper.background[signature]
        pending.result()  # a compile error surfaces here, as it would have at the call
        stepper.seen.add(signature)
        return True

    async def _eager_runs(self, run: RunState, batches) -> Any:
        """An epoch's steps on the backend thread, several per hand-off (torch, TensorFlow)."""
        program, stepper = self.program, self.stepper
        failed: list[BaseException] = []

        def take_batch():
            # A source that fails after some steps of a hand-off: those steps are counted
            # first, then its error is raised here, unchanged.
            if failed:
                return None
            try:
                return next(batches, None)
            except Exception as error:  # noqa: BLE001 - raised on the event loop below
                failed.append(error)
                return None

        def should_stop() -> bool:
            return run.interrupted is not None or program.stop_training

        logs = None
        while True:
            step_logs, losses, steps = await stepper.call(stepper.train_steps, take_batch, should_stop)
            if steps:
                logs, run.batch_loss = step_logs, losses
                await self._steps_done(run, steps, logs)
            if failed:
                raise failed[0]
            if steps == 0 or program.stop_training:
                return logs
            await self.pacer.tick(logs)

    async def _steps_done(self, run: RunState, steps: int, logs) -> None:
        """After `steps` optimizer steps (one, or a fused chunk): count them, show them to
        the value watchers, and end here if a signal came."""
        counts = self.program.__dict__
        counts["_step_count"] += steps  # program.step_count, without Keras' attribute tracking
        run.batch += steps
        for watch in run.value_watchers:
            watch(counts["_step_count"] - steps + 1, run.batch_loss, logs)
        if self.processes > 1 and counts["_step_count"] // AGREE_EVERY > (counts["_step_count"] - steps) // AGREE_EVERY:
            await self._agree_to_stop(run)
        if self._interrupting(run):
            await self._interrupt(run)

    # Several processes wait for each other in every step, so a signal or a stop asked for
    # on one of them is acted on when they have agreed on it (every AGREE_EVERY steps and
    # at each epoch's end), by all of them at the same step.
    async def _agree_to_stop(self, run: RunState) -> None:
        program = self.program
        interrupted, stop = await in_worker_thread(any_process, run.interrupted is not None, program.stop_training)
        if interrupted and run.interrupted is None:
            run.interrupted = "a signal on another process"
        run.agreed_interrupt, run.agreed_stop = interrupted, stop
        if stop:
            program.stop_training = True

    def _interrupting(self, run: RunState) -> bool:
        return run.interrupted is not None if self.processes == 1 else run.agreed_interrupt

    def _stopping(self, run: RunState) -> bool:
        return self.program.stop_training if self.processes == 1 else run.agreed_stop

    async def _interrupt(self, run: RunState) -> None:
        """A signal came: the current step is done; let the handlers back up, then end fit."""
        for handler in run.interrupt_handlers:
            await handler()
        raise TrainingInterrupted(f"{run.interrupted} received: the step finished (epoch {run.epoch}, "
                                  f"batch {run.batch}, step {self.program.step_count}); run again to resume "
                                  "from the backup.")

    def _finalize_optimizer(self) -> None:
        """As Keras' fit at its end: an optimizer with `use_ema=True` puts the moving
        averages into the trainable variables (before on_train_end; not after an error or
        a cancellation, which leave the last applied step)."""
        program = self.program
        optimizer = getattr(program, "optimizer", None)
        if isinstance(optimizer, keras.optimizers.Optimizer) and getattr(optimizer, "use_ema", False):
            self.stepper.push()
            optimizer.finalize_variable_values(program.trainable_weights)

    def _finish(self) -> None:
        self.stepper.push()
        program = self.program
        program.stop_training = False  # never leaks into the next fit
        for name in ("_asyncfit_stepper", "_asyncfit_run"):
            program.__dict__.pop(name, None)

    async def _staged_step(self, batch, max_attempts: int):
        """One optimizer step with its stages: compute, maybe reject and retry, apply."""
        hooks, stepper = self.callbacks, self.stepper
        step = self.program._step_count
        update = Update(batch)
        update._grad_norm_fn = stepper.grad_norm
        may_reject = hooks.wants("on_compute_update_end")
        snapshot = await self.backend(stepper.snapshot) if may_reject else None
        while True:
            if hooks.wants("on_compute_update_begin"):
                given = update.batch
                await hooks.fire("on_compute_update_begin", step, update)
                if update.batch is not given:
                    update.batch = _as_batch(update.batch)
            update.loss, update.grads, update._grad_norm, update.aux = await self.run(
                "compute", update.batch, stepper.compute, update.batch)
            rejected = may_reject and await hooks.reject(step, update)
            if self.processes > 1:  # a retry is a step of its own: all retry, or none
                (rejected,) = await in_worker_thread(any_process, rejected)
            if not rejected:
                break
            await self.backend(stepper.restore, snapshot)
            update.attempt += 1
            if update.attempt >= max_attempts:
                raise RuntimeError(
                    f"step {step}: the update was rejected {update.attempt} times in a row "
                    f"(max_attempts={max_attempts}); an on_compute_update_end hook keeps returning "
                    "True. Fix the hook, or raise max_attempts in fit()."
                )
            update.loss = update.grads = update._grad_norm = update.aux = None
            update.logs = {}
        if hooks.wants("before_parameter_update"):
            await hooks.fire("before_parameter_update", step, update)
        logs = await self.run("apply", update.batch, stepper.apply, update.grads, update.aux)
        if update.logs:
            logs = {**logs, **update.logs}
        return logs, update.loss

    async def _validate(self, epoch: int, validation: dict[str, Source]) -> dict:
        val_logs = {}
        for name, source in validation.items():
            metrics = await self.evaluate(source)
            benchmark = getattr(source, "benchmark", None)
            if benchmark is not None:  # its predictions, and on_benchmark_eval at this step
                program = self.program
                await score_benchmark(program, name, benchmark, hooks=self.callbacks, metrics=metrics,
                                      ctx=program.__dict__.get("_asyncfit_experiment_ctx"),
                                      step=program.step_count)
            prefix = "val_" if name == "val" else f"val_{name}_"
            val_logs.update({prefix + key: value for key, value in metrics.items()})
            if self.callbacks.wants("on_eval"):
                await self.callbacks.fire("on_eval", epoch, name, metrics)
        return val_logs

    # -- evaluation and prediction ------------------------------------------------------------
    @with_run_settings
    async def evaluate(self, source: Source, digest: bool = False, digest_every: int | None = None):
        """The metrics after one pass over `source`; with `digest`, `(metrics, Digest)`."""
        hooks, stepper = self.callbacks, self.stepper
        collector = DigestCollector() if digest else None
        await self.backend(stepper.begin_eval)
        await self.pacer.breathe()
        if hooks.wants("on_test_begin"):
            await hooks.fire("on_test_begin", None)
        logs = None
        async for index, batch in _enumerate(source):
            if hooks.wants("on_test_batch_begin"):
                await hooks.fire("on_test_batch_begin", index, None)
            logs = await self.run("test", batch, stepper.test_step, batch)
            if hooks.wants("on_test_batch_end"):
                await hooks.fire("on_test_batch_end", index, logs)
            if collector is not None:  # a host copy per batch: only when a digest was asked for
                await self.pacer.settle(logs)
                collector.add(await self.backend(to_host, logs), first_dim(batch[0]))
                if digest_every and (index + 1) % digest_every == 0 and hooks.wants("on_digest"):
                    await hooks.fire("on_digest", collector.digest(final=False))
            await self.pacer.tick(logs)
        if logs is None:
            raise ValueError("the evaluation data gave no batch; pass at least one sample.")
        await self.pacer.settle(logs)
        logs = await self.backend(to_host, logs)
        if hooks.wants("on_test_end"):
            await hooks.fire("on_test_end", logs)
        if collector is None:
            return logs
        final = collector.digest(final=True)
        if hooks.wants("on_digest"):
            await hooks.fire("on_digest", final)
        return logs, final

    @with_run_settings
    async def predict(self, source: Source):
        hooks, stepper = self.callbacks, self.stepper
        if hooks.wants("on_predict_begin"):
            await hooks.fire("on_predict_begin", None)
        outputs = []
        async for index, batch in _enumerate(source):
            if hooks.wants("on_predict_batch_begin"):
                await hooks.fire("on_predict_batch_begin", index, None)
            y_pred = await self.run("predict", batch, stepper.predict_step, batch[0])
            outputs.append(y_pred)
            if hooks.wants("on_predict_batch_end"):
                await hooks.fire("on_predict_batch_end", index, {"outputs": y_pred})
            await self.pacer.tick(y_pred)
        if not outputs:
            raise ValueError("the prediction data gave no batch; pass at least one sample.")
        result = await self.backend(
            tree.map_structure, lambda *parts: np.concatenate([np.asarray(p) for p in parts]), *outputs)
        if hooks.wants("on_predict_end"):
            await hooks.fire("on_predict_end", None)
        return result


def _as_batch(batch) -> tuple:
    """A batch a hook put in `update.batch`, taken as data batches are: `x`, `(x,)`,
    `(x, y)` or `(x, y, sample_weight)` (a list as a tuple, as Keras does)."""
    if isinstance(batch, list):
        batch = tuple(batch)
    if not isinstance(batch, tuple):
        return (batch, None, None)
    if len(batch) in (1, 2, 3):
        return batch + (None,) * (3 - len(batch))
    raise ValueError(
        f"on_compute_update_begin set update.batch to a tuple of {len(batch)} items; give x, (x,), (x, y) or "
        "(x, y, sample_weight).")


async def _enumerate(source: Source):
    """(index, batch) over one pass of `source` (sync or async), for evaluate and predict."""
    batches = source.open(0)
    try:
        index = 0
        while True:
            batch = await next_batch(batches)
            if batch is None:
                return
            yield index, batch
            index += 1
    finally:
        await close_stream(batches)


async def next_batch(batches):
    """The next batch of an iterator or async iterator (a `Prefetch` is awaited), or None."""
    if hasattr(batches, "__anext__"):
        return await anext(batches, None)
    return next(batches, None)


async def close_stream(batches) -> None:
    """Stop reading `batches`: a `Prefetch`'s thread is joined, a generator closed."""
    if hasattr(batches, "aclose"):  # a Prefetch, an async generator
        await batches.aclose()
    elif hasattr(batches, "close"):
        batches.close()


__all__ = ["Engine", "Pacer", "RunState"]
