"""MLflow plumbing: a background worker per tracking URI, used by `callbacks.Monitor`.

The worker thread owns the `MlflowClient`. Callers only enqueue operations, which
name runs by a key (a run is created on the server when its first operation goes
out), so training never waits for MLflow, and an unreachable server at start or
mid-run costs one warning: operations stay buffered (bounded; what overflows is
counted) and go out when the server answers again.
"""
from __future__ import annotations

import atexit
import collections
import glob
import hashlib
import json
import os
import threading
import time
import warnings

_WORKERS: dict[str, "MlflowWorker"] = {}
_LOCK = threading.Lock()
UNREACHABLE_WAIT_S = 2.0  # how long the end of a run waits for a server that is not answering


def pending_dir() -> str:
    """Where operations that could not be sent wait for a later process
    (`$ASYNCFIT_MLFLOW_PENDING`, default `~/.cache/asyncfit/mlflow-pending`)."""
    return os.environ.get("ASYNCFIT_MLFLOW_PENDING") or os.path.join(
        os.path.expanduser("~"), ".cache", "asyncfit", "mlflow-pending")


def check_uri(tracking_uri: str | None) -> str:
    """The resolved URI; a scheme MLflow cannot use fails here, before any step."""
    uri = resolve_uri(tracking_uri)
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    except ImportError as error:
        raise ImportError("callbacks.Monitor logs to MLflow, which is not installed: "
                          "pip install 'asyncfit[mlflow]' (or mlflow).") from error

    try:
        _tracking_store_registry.get_store_builder(uri)
    except Exception as error:
        raise ValueError(f"Monitor(tracking_uri={uri!r}): MLflow cannot use this URI ({error}). Use an "
                         "http(s):// server, sqlite:///path.db, a database URI or a folder.") from None
    return uri


def resolve_uri(tracking_uri: str | None) -> str:
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{os.path.abspath('mlflow.db')}"


def worker_for(tracking_uri: str | None, max_buffer: int = 100_000) -> "MlflowWorker":
    uri = resolve_uri(tracking_uri)
    with _LOCK:
        worker = _WORKERS.get(uri)
        if worker is None or not worker.thread.is_alive():
            worker = _WORKERS[uri] = MlflowWorker(uri, max_buffer=max_buffer)
        return worker


class MlflowWorker:
    """Sends queued MLflow operations from a background thread, in order, in batches."""

    RETRY_S = (0.2, 0.5, 1.0, 2.0)
    GATHER_S = 0.5  # between sends, let operations pile up: fewer requests, less CPU taken from training

    def __init__(self, tracking_uri: str, max_buffer: int = 100_000):
        self.tracking_uri = tracking_uri
        self.max_buffer = max_buffer
        self.ops: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.busy = False
        self.flushing = 0
        self.dropped = 0
        self.failures = 0
        self.warned = False
        self.runs: dict[str, str] = {}  # run key -> MLflow run id
        self.specs: dict[str, dict] = {}  # run key -> how to create it
        self.experiments: dict[str, str] = {}
        self.logged: dict[str, set] = {}  # run id -> {(key, step)} already on the server (resumed runs)
        self.client = None
        self.unreachable = False  # the last send failed because the server did not answer
        self.spool_path = os.path.join(pending_dir(), hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
                                       + f"-{os.getpid()}.json")
        self._load_spools()
        self.thread = threading.Thread(target=self._loop, name="asyncfit-mlflow", daemon=True)
        self.thread.start()
        atexit.register(self._at_exit)

    # -- caller side (any thread) -------------------------------------------------------------
    def declare_run(self, key: str, experiment: str | None, run_name: str | None = None, parent: str | None = None,
                    tags: dict | None = None, run_id: str | None = None) -> None:
        """Say how to create run `key` (or which existing run it is, to resume it)."""
        with self.cond:
            self.specs[key] = {"experiment": experiment, "run_name": run_name, "parent": parent,
                               "tags": dict(tags or {})}
            if run_id:
                self.runs[key] = run_id
                self.logged.setdefault(run_id, None)  # fetched before the first metric goes out

    def submit(self, op: tuple) -> None:
        with self.cond:
            self.ops.append(op)
            while len(self.ops) > self.max_buffer:
                self.ops.popleft()
                self.dropped += 1
            self.cond.notify()

    def run_id(self, key: str) -> str | None:
        return self.runs.get(key)

    # -- operations a server away at the end could not take: kept on disk ----------------------
    def spool(self) -> int:
        """Write what is still queued (with how to create its runs) to this process's spool
        file, JSON only; a later worker for the same URI (a later run, or
        `Monitor.flush_pending`) sends it. The ops stay queued here too, and the file goes
        once they are out. Returns the number of operations spooled."""
        with self.cond:
            ops = [list(op) for op in self.ops]
            keys = {op[1] for op in ops}
            specs = {key: spec for key, spec in self.specs.items() if key in keys}
            runs = {key: run_id for key, run_id in self.runs.items() if key in keys}
        if not ops:
            self._remove_spool()
            return 0
        from callbacks.atomic import atomic_write_bytes

        payload = {"tracking_uri": self.tracking_uri, "ops": ops, "specs": specs, "runs": runs}
        atomic_write_bytes(self.spool_path, json.dumps(payload, default=str).encode())
        return len(ops)

    def _remove_spool(self) -> None:
        try:
            os.remove(self.spool_path)
        except OSError:
            pass

    def _load_spools(self) -> None:
        """Queue what earlier processes left for this URI (their files are taken over)."""
        prefix = os.path.basename(self.spool_path).rsplit("-", 1)[0]
        for path in sorted(glob.glob(os.path.join(pending_dir(), f"{prefix}-*.json"))):
            if path == self.spool_path:
                continue
            try:
                with open(path) as handle:
                    payload = json.load(handle)
                os.remove(path)
            except (OSError, ValueError):
                continue
            if payload.get("tracking_uri") != self.tracking_uri:
                continue
            self.specs.update(payload.get("specs", {}))
            for key, run_id in payload.get("runs", {}).items():
                self.runs[key] = run_id
                self.logged.setdefault(run_id, None)  # some may have gone out: look before logging again
            self.ops.extend(tuple(op) for op in payload.get("ops", []))
        if self.ops:
            self.spool()  # ours now: kept on disk until sent

    def _at_exit(self) -> None:
        finished = self.flush(UNREACHABLE_WAIT_S if self.unreachable else 10.0)
        if finished:
            self._remove_spool()
        else:
            self.spool()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait (at most `timeout` s) until everything queued has gone out."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self.flushing += 1
            self.cond.notify_all()
            try:
                while self.ops or self.busy:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self.cond.wait(min(left, 0.1))
            finally:
                self.flushing -= 1
        return True

    # -- worker thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        attempt = 0
        while True:
            with self.cond:
                while not self.ops:
                    self.cond.wait(1.0)
                batch = list(self.ops)
                self.busy = True
            try:
                self._send(batch)
                attempt = 0
                self.unreachable = False
            except Exception as error:
                if _transient(error):  # the server is away: keep the ops, warn once, retry
                    self.failures += 1
                    self.unreachable = True
                    if not self.warned:
                        self.warned = True
                        warnings.warn(f"MLflow at {self.tracking_uri} cannot be reached ({type(error).__name__}: "
                                      f"{str(error)[:200]}); training goes on and metrics are kept until it "
                                      "answers.")
                    time.sleep(self.RETRY_S[min(attempt, len(self.RETRY_S) - 1)])
                    attempt += 1
                else:  # this operation itself is wrong: drop it (counted), go on with the rest
                    with self.cond:
                        bad = self.ops.popleft() if self.ops else None
                        self.dropped += 1
                    warnings.warn(f"MLflow refused an operation ({bad[0] if bad else '?'}): "
                                  f"{type(error).__name__}: {str(error)[:300]}")
            with self.cond:
                self.busy = False
                self.cond.notify_all()
                gather_until = time.monotonic() + self.GATHER_S
                while not self.flushing and time.monotonic() < gather_until:  # new ops wait; a flush does not
                    self.cond.wait(gather_until - time.monotonic())

    def _done(self, count: int) -> None:
        with self.cond:
            for _ in range(count):
                self.ops.popleft()

    def _client(self):
        if self.client is None:
            # This worker retries by itself, keeping the ops; MLflow's own retries (7, with
            # backoff) would hide an outage for minutes. A user's setting wins.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            import mlflow
            from mlflow import MlflowClient

            mlflow.set_tracking_uri(self.tracking_uri)  # the trace exporter reads the global URI
            self.client = MlflowClient(self.tracking_uri)
        return self.client

    def _experiment_id(self, name: str | None) -> str:
        name = name or "Default"
        if name not in self.experiments:
            client = self._client()
            experiment = client.get_experiment_by_name(name)
            self.experiments[name] = experiment.experiment_id if experiment else client.create_experiment(name)
        return self.experiments[name]

    def _run(self, key: str) -> str:
        if key not in self.runs:
            spec = self.specs[key]
            tags = {k: str(v) for k, v in spec["tags"].items()}
            if spec["parent"]:
                tags["mlflow.parentRunId"] = self._run(spec["parent"])
            run = self._client().create_run(self._experiment_id(spec["experiment"]), run_name=spec["run_name"],
                                            tags=tags)
            self.runs[key] = run.info.run_id
        return self.runs[key]

    def _already_logged(self, run_id: str) -> set:
        if self.logged.get(run_id, set()) is None:
            client = self._client()
            seen = set()
            for key in client.get_run(run_id).data.metrics:
                seen.update((key, m.step) for m in client.get_metric_history(run_id, key))
            self.logged[run_id] = seen
        return self.logged.get(run_id) or set()

    def _send(self, ops: list) -> None:
        """Send ops in order, taking each off the queue once it went out. Metrics, params
        and tags of one run that follow each other go in one log_batch."""
        from mlflow.entities import Metric, Param, RunTag

        client = self._client()
        i = 0
        while i < len(ops):
            kind, key = ops[i][0], ops[i][1]
            if kind in ("metrics", "params", "tags"):
                run_id = self._run(key)
                seen = self._already_logged(run_id)
                metrics, params, tags, j = [], [], [], i
                while j < len(ops) and ops[j][0] in ("metrics", "params", "tags") and ops[j][1] == key \
                        and len(metrics) < 900 and len(params) < 90 and len(tags) < 90:
                    op = ops[j]
                    if op[0] == "metrics":
                        step, stamp = op[3], op[4]
                        metrics += [Metric(k, float(v), stamp, step) for k, v in op[2].items() if (k, step) not in seen]
                    elif op[0] == "params":
                        params += [Param(k, str(v)[:6000]) for k, v in op[2].items()]
                    else:
                        tags += [RunTag(k, str(v)) for k, v in op[2].items()]
                    j += 1
                client.log_batch(run_id, metrics=metrics, params=params, tags=tags, synchronous=True)
                self._done(j - i)
                i = j
                continue
            self._send_one(client, ops[i])
            self._done(1)
            i += 1

    def _send_one(self, client, op: tuple) -> None:
        kind, key = op[0], op[1]
        if kind == "create":
            self._run(key)
        elif kind == "text":
            client.log_text(self._run(key), op[2], op[3])
        elif kind == "artifact":
            path, artifact_path, cleanup = op[2], op[3], op[4]
            client.log_artifact(self._run(key), path, artifact_path)
            if cleanup and os.path.exists(path):
                os.remove(path)
        elif kind == "trace":
            self._send_trace(client, self._run(key), self._experiment_id(self.specs[key]["experiment"]), op[2])
        elif kind == "end":
            client.set_terminated(self._run(key), op[2])
        elif kind == "table":
            import pandas as pd

            client.log_table(self._run(key), data=pd.DataFrame(op[2]), artifact_file=op[3])
        else:
            raise ValueError(f"unknown MLflow operation {kind!r}")

    @staticmethod
    def _send_trace(client, run_id: str, experiment_id: str, spans: list[dict]) -> None:
        import mlflow

        root = spans[0]
        trace = client.start_trace(root["name"], span_type=root.get("type", "CHAIN"), inputs=root.get("inputs"),
                                   attributes=root.get("attributes"), experiment_id=experiment_id,
                                   start_time_ns=root["start"], run_id=run_id)
        trace_id = trace.trace_id
        ids = {0: trace.span_id}
        for index, span in enumerate(spans[1:], start=1):
            started = client.start_span(span["name"], trace_id=trace_id, parent_id=ids[span.get("parent", 0)],
                                        span_type=span.get("type", "UNKNOWN"), attributes=span.get("attributes"),
                                        start_time_ns=span["start"])
            ids[index] = started.span_id
        for index in range(len(spans) - 1, 0, -1):
            span = spans[index]
            client.end_span(trace_id, ids[index], status=span.get("status", "OK"), end_time_ns=span["end"])
        client.end_trace(trace_id, outputs=root.get("outputs"), status=root.get("status", "OK"),
                         end_time_ns=root["end"])
        flush = getattr(mlflow, "flush_trace_async_logging", None)
        if flush is not None:
            flush()


def _transient(error: BaseException) -> bool:
    """Whether `error` means "the server is away" (retry) rather than "this op is wrong"."""
    if isinstance(error, (ConnectionError, TimeoutError, OSError)):
        return True
    text = f"{type(error).__name__} {error}"
    return any(word in text for word in ("Connection", "connection", "Max retries", "timed out", "Timeout",
                                         "Temporary failure", "503", "502", "504", "database is locked"))


__all__ = ["worker_for", "resolve_uri", "check_uri", "pending_dir", "MlflowWorker"]
