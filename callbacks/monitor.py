"""`Monitor`: log training to MLflow without ever blocking a step."""
from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import os
import tempfile
import time
import uuid
import warnings

import keras

from callbacks.callback import Callback, TrainingInterrupted
from callbacks.mlflow_worker import UNREACHABLE_WAIT_S, check_uri, worker_for


@functools.lru_cache(maxsize=1)
def _versions() -> dict:
    found = {"keras_backend": keras.backend.backend()}
    for package in ("asyncfit", "keras", "jax", "torch", "tensorflow", "numpy", "mlflow"):
        try:
            found[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _floats(logs: dict | None) -> dict:
    values = {}
    for key, value in (logs or {}).items():
        try:
            values[key] = float(value)
        except (TypeError, ValueError):
            pass
    return values


class Monitor(Callback):
    """Log a run to MLflow: params, metrics, the program, the History, and a trace.

    Every MLflow call happens on a background worker (one per tracking URI) that
    batches with `log_batch`; `on_train_end` flushes with a bounded wait. If the
    server is unreachable at the start or goes away mid-run, one warning is given,
    training goes on, and the buffered operations (at most `max_buffer`) go out when
    it is back; anything dropped is counted and reported at the end.

    What is logged:
      - params: the fit arguments, the compile config, the optimizer's
        hyperparameters, the Keras backend and package versions;
      - metrics per epoch at step=epoch (train keys as Keras names them, validation
        keys with their `val_` prefix); with `log_batch_metrics`, per-batch values
        as `batch/<key>` at step=`step_count` (a host copy per batch);
      - at the end: the program summary, the saved program (`.keras`) and the History
        (CSV) as artifacts;
      - one trace per `fit`/`evaluate`/`predict` call, with a span per epoch, per
        validation pass and per checkpoint or backup written.

    A standalone `evaluate` logs into its own run, nested under the training run
    when a callback calls it during `fit`. After BackupAndRestore resumes a run,
    logging continues in the same MLflow run (its id is in `state_dict`), and steps
    already on the server are not logged twice. In an `Experiment`, the experiment is
    an MLflow experiment, each arm a parent run and each run a nested child run.

    Args:
        experiment_name: MLflow experiment (default: "Default", or the Experiment's name).
        run_name: MLflow run name.
        tracking_uri: where MLflow is; default `$MLFLOW_TRACKING_URI`, else a local
            sqlite store `./mlflow.db` (open it with `mlflow ui --backend-store-uri sqlite:///mlflow.db`).
        log_batch_metrics: also log every batch's metrics.
        log_epoch_metrics: log every epoch's metrics.
        log_program: save the program as an artifact at the end.
        tags: tags for the run.
        flush_timeout: the longest `on_train_end` waits for MLflow, in seconds. A server
            that is not answering gets at most 2 s; what it did not take is kept on disk
            (`$ASYNCFIT_MLFLOW_PENDING`, default `~/.cache/asyncfit/mlflow-pending`, JSON)
            and sent by the next run that logs to the same URI, or by
            `Monitor.flush_pending(tracking_uri)`.

    Example:
        ```python
        await program.fit(x, y, epochs=10, callbacks=[Monitor(experiment_name="digits",
                                                              tracking_uri="http://127.0.0.1:5000")])
        ```
    """

    callback_order = 10
    chief_only = True  # several processes: written by process 0 alone (callbacks.processes)

    def __init__(self, experiment_name: str | None = None, run_name: str | None = None,
                 tracking_uri: str | None = None, log_batch_metrics: bool = False, log_epoch_metrics: bool = True,
                 log_program: bool = True, tags: dict | None = None, flush_timeout: float = 30.0,
                 max_buffer: int = 100_000):
        super().__init__()
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tracking_uri = tracking_uri
        self.log_batch_metrics = log_batch_metrics
        self.log_epoch_metrics = log_epoch_metrics
        self.log_program = log_program
        self.tags = dict(tags or {})
        self.flush_timeout = flush_timeout
        self.max_buffer = max_buffer
        self.run_id: str | None = None
        self._restored_run_id: str | None = None
        self._key: str | None = None
        self._context_key: str | None = None  # set by the experiment hooks
        self._ended: set = set()  # run keys a fit's end has ended
        self._spans: list[dict] = []
        self._open: dict[str, int] = {}
        self._worker = None
        if not log_batch_metrics:
            self.on_train_batch_end = None  # no per-batch call at all

    def _state_key_args(self) -> str:
        return f"[{self.experiment_name},{self.run_name}]"

    @property
    def worker(self):
        if self._worker is None:
            self._worker = worker_for(self.tracking_uri, self.max_buffer)
        return self._worker

    # -- runs ----------------------------------------------------------------------------------
    def _start_run(self, kind: str) -> str:
        if not getattr(self, "_uri_checked", False):
            check_uri(self.tracking_uri)  # a URI MLflow cannot use fails here, before the first step
            self._uri_checked = True
        key = self._context_key
        if key is None or kind != "fit":
            key = f"{kind}:{uuid.uuid4().hex}"
            parent = None
            program = self._program
            training = program.__dict__.get("_asyncfit_mlflow_key") if program is not None else None
            if kind != "fit" and training is not None:
                parent = training  # evaluate called from a callback during fit: nested
            self.worker.declare_run(key, self.experiment_name, self.run_name or kind, parent=parent,
                                    tags={"asyncfit.kind": kind, **self.tags}, run_id=self._restored_run_id
                                    if kind == "fit" else None)
        self._key = key
        self.worker.submit(("create", key))
        return key

    def _span(self, name: str, parent: str | None = "root", **attributes) -> None:
        self._open[name] = len(self._spans)
        self._spans.append({"name": name, "start": time.time_ns(), "end": None,
                            "parent": self._open.get(parent, 0) if parent else 0, "attributes": attributes})

    def _end_span(self, name: str, **attributes) -> None:
        index = self._open.pop(name, None)
        if index is not None:
            self._spans[index]["end"] = time.time_ns()
            self._spans[index]["attributes"].update(attributes)

    def _finish(self, status: str, outputs: dict | None = None) -> None:
        now = time.time_ns()
        for span in self._spans:
            if span["end"] is None:
                span["end"] = now
                span["status"] = "OK" if status == "FINISHED" else "ERROR"
        if self._spans:
            self._spans[0]["outputs"] = outputs
            self._spans[0]["status"] = "OK" if status == "FINISHED" else "ERROR"
            self.worker.submit(("trace", self._key, self._spans))
        self.worker.submit(("end", self._key, status))
        self._ended.add(self._key)
        self._spans, self._open = [], {}

    async def _flush(self) -> None:
        worker = self.worker
        # A server that is not answering gets a few seconds, not flush_timeout: what it did
        # not take is kept on disk for a later run or Monitor.flush_pending().
        timeout = min(self.flush_timeout, UNREACHABLE_WAIT_S) if worker.unreachable else self.flush_timeout
        finished = await asyncio.to_thread(worker.flush, timeout)
        if not finished:
            spooled = await asyncio.to_thread(worker.spool)
            warnings.warn(f"MLflow did not take everything within {timeout:g}s; {spooled} operations are kept in "
                          f"{worker.spool_path} and go out in the background, with a later run, or with "
                          "Monitor.flush_pending().")
        else:
            worker._remove_spool()
        if worker.dropped:
            warnings.warn(f"MLflow: {worker.dropped} operations were dropped while the server was away "
                          f"(the buffer holds {worker.max_buffer}).")
        self.run_id = worker.run_id(self._key) if self._key else self.run_id

    # -- fit ------------------------------------------------------------------------------------
    @staticmethod
    def flush_pending(tracking_uri: str | None = None, timeout: float = 30.0) -> int:
        """Send the operations earlier runs could not (kept on disk when the server was
        away at their end) to `tracking_uri`; returns how many are still unsent."""
        worker = worker_for(tracking_uri)
        if worker.flush(timeout):
            worker._remove_spool()
            return 0
        return worker.spool()

    def on_train_begin(self, logs=None):
        key = self._start_run("fit")
        program = self._program
        object.__setattr__(program, "_asyncfit_mlflow_key", key)
        params = {f"fit.{k}": v for k, v in self.params.items() if k not in ("log_keys",)}
        compile_config = program._compile_config.config if getattr(program, "_compile_config", None) else {}
        params.update({f"compile.{k}": v for k, v in compile_config.items() if k != "optimizer"})
        optimizer = getattr(program, "optimizer", None)
        if optimizer is not None:
            params["optimizer"] = type(optimizer).__name__
            params.update({f"optimizer.{k}": v for k, v in optimizer.get_config().items()})
        params.update(_versions())  # read once per process: importlib.metadata is slow
        params["program.name"] = program.name
        params["program.parameters"] = program.count_params()
        self.worker.submit(("params", key, params))
        self._spans, self._open = [], {}
        self._span("fit", parent=None, epochs=self.params.get("epochs"))
        self._spans[0]["type"] = "CHAIN"

    def on_epoch_begin(self, epoch, logs=None):
        self._span(f"epoch {epoch}", epoch=epoch)
        self._epoch = epoch

    def on_test_begin(self, logs=None):
        if self._key is None:  # not this Monitor's fit validating: an evaluate call of its own
            self._start_run("evaluate")
            self._span("evaluate", parent=None)
            self._standalone = True
            return
        self._standalone = False
        self._span("validation", parent=f"epoch {getattr(self, '_epoch', 0)}")

    def on_test_end(self, logs=None):
        if getattr(self, "_standalone", False):
            self.worker.submit(("metrics", self._key, _floats(logs), 0, int(time.time() * 1000)))
            self._finish("FINISHED", outputs=_floats(logs))
            self._key = None
            return
        self._end_span("validation")

    def on_train_batch_end(self, batch, logs=None):
        metrics = {f"batch/{k}": v for k, v in _floats(logs).items()}
        self.worker.submit(("metrics", self._key, metrics, self._program.step_count, int(time.time() * 1000)))

    def on_epoch_end(self, epoch, logs=None):
        # No fit of its own (an experiment's runs in Ray workers, their epoch logs streamed
        # to the driver): the run's child run takes them.
        key = self._key or self._context_key
        if self.log_epoch_metrics and key is not None:
            self.worker.submit(("metrics", key, _floats(logs), epoch, int(time.time() * 1000)))
        self._end_span(f"epoch {epoch}", **{k: v for k, v in _floats(logs).items()})

    def on_checkpoint(self, row):
        end = int(row.time * 1e9)
        start = end - int((row.seconds or 0.0) * 1e9)
        parent = self._open.get(f"epoch {row.epoch}", 0)
        self._spans.append({"name": f"{row.kind} save", "start": start, "end": end, "parent": parent,
                            "attributes": {"path": row.path, "step": row.step}})

    async def on_train_end(self, logs=None):
        program = self._program
        key = self._key
        self._upload_artifacts(program, key)
        self._finish("FINISHED", outputs=_floats(logs))
        program.__dict__.pop("_asyncfit_mlflow_key", None)
        await self._flush()

    async def on_train_error(self, error):
        key = self._key
        if key is None:
            return
        status = "KILLED" if isinstance(error, (TrainingInterrupted, asyncio.CancelledError)) else "FAILED"
        self.worker.submit(("tags", key, {"asyncfit.error": f"{type(error).__name__}: {error}"[:5000]}))
        self._finish(status)
        self._program.__dict__.pop("_asyncfit_mlflow_key", None)
        await self._flush()

    def _upload_artifacts(self, program, key: str) -> None:
        lines = []
        try:
            program.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
        except Exception as error:  # a program that cannot summarise itself still gets its run logged
            lines.append(f"(no summary: {error!r})")
        self.worker.submit(("text", key, "\n".join(lines), "program_summary.txt"))
        history = self._callback_list and next(
            (cb for cb in self._callback_list if type(cb).__name__ == "History"), None)
        if history is not None and history.history:
            self.worker.submit(("text", key, history.to_dataframe().to_csv(), "history.csv"))
        if self.log_program:
            folder = tempfile.mkdtemp(prefix="asyncfit-mlflow-")
            path = os.path.join(folder, f"{program.name}.keras")
            try:
                program.save(path)
                self.worker.submit(("artifact", key, path, "program", True))
            except Exception as error:
                warnings.warn(f"Monitor could not save the program for MLflow: {error!r}")

    # -- predict ------------------------------------------------------------------------------------
    def on_predict_begin(self, logs=None):
        self._start_run("predict")
        self._span("predict", parent=None)

    def on_predict_end(self, logs=None):
        self._finish("FINISHED")
        self._key = None

    # -- experiments: experiment -> MLflow experiment, arm -> parent run, run -> child run -------------
    def on_experiment_begin(self, ctx):
        self.experiment_name = self.experiment_name or ctx.experiment
        ctx.ids["mlflow_experiment"] = self.experiment_name

    def on_group_begin(self, ctx, group):
        key = f"group:{ctx.experiment}:{group}:{uuid.uuid4().hex}"
        self.worker.declare_run(key, self.experiment_name, run_name=group, tags={"asyncfit.arm": group, **self.tags})
        self.worker.submit(("create", key))
        ctx.ids["mlflow_group_key"] = key

    def on_run_begin(self, ctx):
        key = f"run:{ctx.experiment}:{ctx.arm}:{ctx.repeat}:{uuid.uuid4().hex}"
        self.worker.declare_run(key, self.experiment_name, run_name=f"{ctx.arm}-{ctx.repeat}",
                                parent=ctx.ids.get("mlflow_group_key"),
                                tags={"asyncfit.arm": ctx.arm, "asyncfit.repeat": ctx.repeat,
                                      "asyncfit.seed": ctx.seed, **self.tags})
        self.worker.submit(("params", key, {f"config.{k}": v for k, v in (ctx.run_config or {}).items()
                                            if k != "stages"}))
        ctx.ids["mlflow_run_key"] = key
        self._context_key = key

    def on_run_end(self, ctx, run_result):
        key, self._context_key = self._context_key, None
        if key is not None and key not in self._ended:  # no fit here ended it (the run trained in a Ray worker)
            self.worker.submit(("end", key, "FINISHED" if run_result.status == "ok" else "FAILED"))

    def on_benchmark_eval(self, ctx, result, predictions, step=None):
        """A benchmark's metrics as `bench/{name}/{metric}` at its step (0 after training)
        and its predictions as an MLflow table `benchmarks/{name}-step{step}.json`."""
        key = (ctx.ids.get("mlflow_run_key") if ctx is not None and getattr(ctx, "ids", None) else None) \
            or self._key or self._context_key
        if key is None:
            return
        metrics = {f"bench/{result.name}/{k}": v for k, v in _floats(result.metrics).items()}
        self.worker.submit(("metrics", key, metrics, 0 if step is None else int(step), int(time.time() * 1000)))
        if result.tags:
            self.worker.submit(("tags", key, {f"bench.{result.name}.{k}": v for k, v in result.tags.items()}))
        if predictions is not None:
            table = {column: predictions[column].tolist() for column in predictions.columns}
            label = "final" if step is None else int(step)
            self.worker.submit(("table", key, table, f"benchmarks/{result.name}-step{label}.json"))

    def on_group_end(self, ctx, group):
        self.worker.submit(("end", ctx.ids["mlflow_group_key"], "FINISHED"))

    async def on_experiment_end(self, ctx, result):
        await self._flush()

    # -- resume -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        key = self._key
        return {"run_id": self.worker.run_id(key) if key else self.run_id, "run_key": key}

    def load_state_dict(self, state: dict) -> None:
        # BackupAndRestore restores before on_train_begin: the same MLflow run goes on.
        self._restored_run_id = state.get("run_id")
