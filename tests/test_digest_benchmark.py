"""Evaluation digests (running statistics, blocked standard errors) and benchmark evaluators."""
import os

import numpy as np
import pandas as pd
import pytest

from callbacks import BackupAndRestore, Callback, PredictionsWriter
from conftest import CrashAt, make_program
from trainer import Benchmark, Digest, Experiment
from trainer.digest import blocking


class Record(Callback):
    def __init__(self):
        super().__init__()
        self.digests = []
        self.benchmarks = []

    def on_digest(self, digest):
        self.digests.append((digest.count, digest.final))

    def on_benchmark_eval(self, ctx, result, predictions, step=None):
        self.benchmarks.append((ctx, result, predictions, step))


async def test_digest_mean_is_the_mean_of_per_batch_values(toy):
    x, y = toy
    program = make_program()
    await program.fit(x, y, epochs=1, verbose=0)
    digest = await program.evaluate(x, y, batch_size=32, verbose=0, return_digest=True)
    by_hand = {"loss": [], "accuracy": []}
    for start in range(0, len(x), 32):
        metrics = await program.evaluate(x[start:start + 32], y[start:start + 32], batch_size=32, verbose=0)
        for key in by_hand:
            by_hand[key].append(metrics[key])
    assert isinstance(digest, Digest) and digest.final and digest.count == 8
    for key, values in by_hand.items():
        np.testing.assert_allclose(digest.values[key], values, rtol=1e-5, atol=1e-6)
        assert digest.mean[key] == pytest.approx(np.mean(values), rel=1e-5)
        assert digest.variance[key] == pytest.approx(np.var(values, ddof=1), rel=1e-4)
    plain = await program.evaluate(x, y, batch_size=32, verbose=0)
    assert isinstance(plain, dict) and plain["loss"] == pytest.approx(digest.mean["loss"], rel=1e-5)


def test_blocking_matches_the_textbook_for_independent_values_and_grows_for_correlated_ones():
    rng = np.random.default_rng(0)
    independent = rng.normal(size=4096)
    stderr, n_eff = blocking(independent)
    textbook = independent.std(ddof=1) / np.sqrt(independent.size)
    assert textbook * 0.8 < stderr < textbook * 1.5
    assert n_eff > 4096 * 0.4
    correlated = np.empty(4096)
    correlated[0] = 0.0
    for i in range(1, correlated.size):  # AR(1), phi 0.95: about 39 times fewer independent values
        correlated[i] = 0.95 * correlated[i - 1] + rng.normal()
    stderr_c, n_eff_c = blocking(correlated)
    naive = correlated.std(ddof=1) / np.sqrt(correlated.size)
    assert stderr_c > 3 * naive and n_eff_c < 4096 / 10


async def test_previews_come_every_n_batches_and_once_at_the_end(toy):
    x, y = toy
    record = Record()
    digest = await make_program().evaluate(x, y, batch_size=32, verbose=0, digest_every=3, callbacks=[record])
    assert record.digests == [(3, False), (6, False), (8, True)]
    assert isinstance(digest, dict)  # previews alone do not change what evaluate returns


async def test_a_digest_saves_as_arrays_and_loads(toy, tmp_path):
    digest = await make_program().evaluate(*toy, batch_size=32, verbose=0, return_digest=True)
    digest.save(str(tmp_path / "d.npz"))
    with np.load(tmp_path / "d.npz", allow_pickle=False) as data:
        assert "mean" in data.files
    back = Digest.load(str(tmp_path / "d.npz"))
    assert back.mean == digest.mean and back.count == digest.count and back.final
    frame = digest.to_dataframe()
    assert set(frame.columns) >= {"mean", "stderr", "variance", "count"} and list(frame.index) == list(digest.mean)


async def test_benchmarks_fire_in_the_loop_at_their_steps(toy):
    x, y = toy
    record = Record()
    history = await make_program().fit(x, y, epochs=3, verbose=0, callbacks=[record],
                                       validation_data={"hold": Benchmark(x[:50], y[:50], tags={"v": 2})})
    assert [step for _, _, _, step in record.benchmarks] == [8, 16, 24]
    for ctx, result, predictions, step in record.benchmarks:
        assert ctx is None and result.name == "hold" and result.step == step and result.tags == {"v": 2}
        assert list(predictions.columns) == ["index", "y_true", "y_pred"] and len(predictions) == 50
    assert history.history["val_hold_loss"][-1] == pytest.approx(record.benchmarks[-1][1].metrics["loss"])


async def test_keep_predictions_false_gives_none(toy):
    x, y = toy
    record = Record()
    await make_program().fit(x, y, epochs=1, verbose=0, callbacks=[record],
                             validation_data={"hold": Benchmark(x[:50], y[:50], keep_predictions=False)})
    assert record.benchmarks[0][2] is None


async def test_experiment_benchmarks_run_after_training_with_step_none(toy):
    x, y = toy
    record = Record()

    def build(config):
        return make_program()

    experiment = Experiment("bench", build, {"a": {}, "b": {}}, benchmarks={"hold": Benchmark(x[:40], y[:40])})
    result = await experiment.run(x, y, epochs=1, callbacks=[record])
    assert [(ctx.arm, step) for ctx, _, _, step in record.benchmarks] == [("a", None), ("b", None)]
    assert all(len(predictions) == 40 for _, _, predictions, _ in record.benchmarks)
    assert "bench_hold_loss" in result.to_dataframe().columns


async def test_predictions_writer_after_a_kill_and_resume_has_each_step_once(toy, tmp_path):
    x, y = toy
    bench = {"hold": Benchmark(x[:30], y[:30])}
    out = str(tmp_path / "preds")
    with pytest.raises(RuntimeError):
        await make_program().fit(x, y, epochs=3, verbose=0, validation_data=bench, callbacks=[
            BackupAndRestore(str(tmp_path / "b"), save_freq=3), PredictionsWriter(out), CrashAt(13)])
    await make_program().fit(x, y, epochs=3, verbose=0, validation_data=bench, callbacks=[
        BackupAndRestore(str(tmp_path / "b"), save_freq=3), PredictionsWriter(out)])
    assert sorted(os.listdir(out)) == ["hold-step16.csv", "hold-step24.csv", "hold-step8.csv"]
    for name in os.listdir(out):
        frame = pd.read_csv(os.path.join(out, name))
        assert list(frame["index"]) == list(range(30))


async def test_monitor_logs_benchmark_metrics_and_predictions(toy, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from callbacks import Monitor

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    x, y = toy
    monitor = Monitor(tracking_uri=uri, experiment_name="bench", log_program=False)
    await make_program().fit(x, y, epochs=2, verbose=0, callbacks=[monitor],
                             validation_data={"hold": Benchmark(x[:20], y[:20])})
    client = MlflowClient(uri)
    steps = sorted(m.step for m in client.get_metric_history(monitor.run_id, "bench/hold/loss"))
    assert steps == [8, 16]
    artifacts = [a.path for a in client.list_artifacts(monitor.run_id, "benchmarks")]
    assert sorted(artifacts) == ["benchmarks/hold-step16.json", "benchmarks/hold-step8.json"]
