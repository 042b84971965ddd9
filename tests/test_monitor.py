"""Monitor against a real MLflow tracking server on 127.0.0.1 (sqlite backend)."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402

from callbacks import Callback, Monitor, ProgramCheckpoint  # noqa: E402
from conftest import make_program  # noqa: E402
from trainer import Experiment, disable_observability, enable_observability  # noqa: E402

pytestmark = pytest.mark.slow


class Server:
    """A real `mlflow server` on a free loopback port; stop() and start() keep its store."""

    def __init__(self, folder):
        self.folder = str(folder)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        mlflow_cli = os.path.join(os.path.dirname(sys.executable), "mlflow")
        self.proc = subprocess.Popen(
            [mlflow_cli, "server", "--backend-store-uri", f"sqlite:///{self.folder}/store.db",
             "--artifacts-destination", f"{self.folder}/artifacts", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("the MLflow server did not start within 120 s")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow"))
    srv.start()
    yield srv
    srv.stop()


def steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


async def test_a_fit_is_logged_params_metrics_artifacts_and_trace(server, toy, tmp_path):
    program = make_program()
    monitor = Monitor(experiment_name="basic", run_name="toy", tracking_uri=server.uri, tags={"team": "a"})
    checkpoint = ProgramCheckpoint(str(tmp_path / "ck.keras"))
    history = await program.fit(*toy, epochs=3, verbose=0, validation_split=0.25, callbacks=[monitor, checkpoint])
    client = MlflowClient(server.uri)
    run = client.get_run(monitor.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "toy" and run.data.tags["team"] == "a"
    params = run.data.params
    assert params["fit.epochs"] == "3" and params["fit.batch_size"] == "32"
    assert params["optimizer"] == "SGD" and float(params["optimizer.learning_rate"]) == pytest.approx(0.1)
    assert params["keras_backend"] == __import__("keras").backend.backend() and "version.keras" in params
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert steps(client, monitor.run_id, key) == [0, 1, 2]
    logged = {m.step: m.value for m in client.get_metric_history(monitor.run_id, "val_loss")}
    assert [logged[e] for e in range(3)] == pytest.approx(history.history["val_loss"])
    artifacts = {a.path for a in client.list_artifacts(monitor.run_id)}
    assert {"program_summary.txt", "history.csv", "program"} <= artifacts
    assert [a.path for a in client.list_artifacts(monitor.run_id, "program")] == ["program/toy.keras"]
    traces = client.search_traces(experiment_ids=[run.info.experiment_id], run_id=monitor.run_id)
    assert len(traces) == 1
    names = [span.name for span in traces[0].data.spans]
    assert names[0] == "fit"
    assert {"epoch 0", "epoch 1", "epoch 2", "validation", "program save"} <= set(names)
    assert names.count("validation") == 3 and names.count("program save") == 3


async def test_batch_metrics_do_not_collide_with_epoch_metrics(server, toy):
    monitor = Monitor(experiment_name="batches", tracking_uri=server.uri, log_batch_metrics=True, log_program=False)
    program = make_program()
    await program.fit(*toy, epochs=2, batch_size=64, verbose=0, callbacks=[monitor])
    client = MlflowClient(server.uri)
    assert steps(client, monitor.run_id, "batch/loss") == list(range(1, 9))  # step_count after each step
    assert steps(client, monitor.run_id, "loss") == [0, 1]


async def test_evaluate_logs_its_own_run_nested_under_training_when_called_in_fit(server, toy):
    x, y = toy
    program = make_program()
    evaluations = []

    class EvaluateEachEpoch(Callback):
        async def on_epoch_end(self, epoch, logs=None):
            evaluations.append(await self.program.evaluate(x[:64], y[:64], verbose=0,
                                                           callbacks=[Monitor(experiment_name="eval",
                                                                              tracking_uri=server.uri)]))

    monitor = Monitor(experiment_name="eval", tracking_uri=server.uri, log_program=False)
    await program.fit(x, y, epochs=2, verbose=0, callbacks=[monitor, EvaluateEachEpoch()])
    standalone = Monitor(experiment_name="eval", tracking_uri=server.uri)
    metrics = await program.evaluate(x, y, verbose=0, callbacks=[standalone])
    await asyncio.to_thread(standalone.worker.flush, 30)
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("eval")
    runs = client.search_runs([experiment.experiment_id])
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == monitor.run_id]
    assert len(nested) == 2 and all(r.data.tags["asyncfit.kind"] == "evaluate" for r in nested)
    alone = [r for r in runs if r.data.tags.get("asyncfit.kind") == "evaluate"
             and "mlflow.parentRunId" not in r.data.tags]
    assert len(alone) == 1 and alone[0].data.metrics["loss"] == pytest.approx(metrics["loss"])


async def test_server_lost_mid_run_then_back_loses_no_metric(tmp_path, toy):
    srv = Server(tmp_path)
    srv.start()

    class Outage(Callback):
        async def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                await asyncio.to_thread(srv.stop)
            if epoch == 3:
                await asyncio.to_thread(srv.start)

    monitor = Monitor(experiment_name="outage", tracking_uri=srv.uri, log_program=False)
    program = make_program()
    with pytest.warns(UserWarning, match="cannot be reached"):
        await program.fit(*toy, epochs=6, verbose=0, validation_split=0.25, callbacks=[monitor, Outage()])
    assert program.step_count == 6 * 6  # training never waited for the server
    # On a loaded machine the restarted server may not be seen before the run ends: what it
    # did not take yet is kept on disk, and flush_pending sends it; nothing may be missing.
    assert Monitor.flush_pending(srv.uri, timeout=60) == 0
    client = MlflowClient(srv.uri)
    for key in ("loss", "val_loss"):
        assert steps(client, monitor.run_id, key) == list(range(6))
    assert monitor.worker.dropped == 0
    srv.stop()


async def test_unreachable_at_start_warns_once_and_training_goes_on(toy):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monitor = Monitor(tracking_uri=f"http://127.0.0.1:{port}", log_program=False, flush_timeout=1.0)
    program = make_program()
    with pytest.warns(UserWarning) as record:
        await program.fit(*toy, epochs=2, verbose=0, callbacks=[monitor])
    assert program.step_count == 16
    messages = [str(w.message) for w in record]
    assert sum("cannot be reached" in m for m in messages) == 1
    assert any("are kept in" in m for m in messages)


def test_resumed_run_continues_the_same_mlflow_run_without_duplicate_steps(server, tmp_path):
    script = os.path.join(os.path.dirname(__file__), "scripts", "monitored_train.py")
    proc = subprocess.Popen([sys.executable, script, str(tmp_path), server.uri], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.strip() == "EPOCH 3":  # epochs 0-3 logged, the backup holds epochs 0-1 only
            proc.send_signal(signal.SIGKILL)
            break
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert len(runs) == 1
    first_id = runs[0].info.run_id
    rerun = subprocess.run([sys.executable, script, str(tmp_path), server.uri], capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    import json

    assert json.load(open(tmp_path / "run_id"))["run_id"] == first_id
    assert len(client.search_runs([runs[0].info.experiment_id])) == 1
    for key in ("loss", "val_accuracy"):
        assert steps(client, first_id, key) == list(range(8))  # every epoch once, none twice
    assert client.get_run(first_id).info.status == "FINISHED"


def build_logistic(config):
    """An experiment's build: logistic regression on the toy data at `config["lr"]`."""
    import keras

    from trainer import Program

    inputs = keras.Input((8,))
    program = Program(inputs=inputs, outputs=keras.layers.Dense(1, activation="sigmoid")(inputs))
    program.compile(optimizer=keras.optimizers.SGD(config["lr"]), loss="binary_crossentropy")
    return program


def experiment_hierarchy(client, name: str) -> list:
    """Checks the MLflow experiment `name` holds a parent run per arm (a, b) and a child run
    per run under its arm's parent; returns the child runs."""
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    parents = {r.info.run_name: r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert set(parents) == {"a", "b"}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_name for r in children) == ["a-0", "a-1", "b-0", "b-1"]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[child.data.tags["asyncfit.arm"]]
    return children


async def test_experiment_maps_to_mlflow_experiment_parent_and_child_runs(server, toy):
    monitor = Monitor(tracking_uri=server.uri, log_program=False)
    experiment = Experiment("mapped", build_logistic, {"a": {"lr": 0.1}, "b": {"lr": 0.01}}, n_repeats=2)
    await experiment.run(*toy, epochs=1, callbacks=[monitor])
    client = MlflowClient(server.uri)
    for child in experiment_hierarchy(client, "mapped"):
        assert child.data.params["config.lr"] in ("0.1", "0.01") and "loss" in child.data.metrics


@pytest.mark.slow
async def test_experiment_on_ray_gives_the_same_mlflow_hierarchy(server, toy):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        monitor = Monitor(tracking_uri=server.uri, log_program=False)
        experiment = Experiment("on-ray", build_logistic, {"a": {"lr": 0.1}, "b": {"lr": 0.01}}, n_repeats=2)
        await experiment.run(*toy, epochs=2, callbacks=[monitor], engine="ray")
    finally:
        ray.shutdown()
    client = MlflowClient(server.uri)
    for child in experiment_hierarchy(client, "on-ray"):
        assert child.info.status == "FINISHED"
        assert steps(client, child.info.run_id, "loss") == [0, 1]  # each epoch, streamed from its worker


async def test_enable_observability_adds_a_monitor_and_the_embedded_store(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    enable_observability(experiment_name="embedded", log_program=False)
    try:
        await make_program().fit(*toy, epochs=1, verbose=0)
    finally:
        disable_observability()
    assert (tmp_path / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("embedded").experiment_id])
    assert len(runs) == 1 and "loss" in runs[0].data.metrics
    from trainer.observability import _CONFIG

    assert _CONFIG is None
