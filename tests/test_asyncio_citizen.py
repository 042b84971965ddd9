"""fit as a well-behaved asyncio citizen: one numbered test group per finding of issue 14."""
import asyncio
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from callbacks import BackupAndRestore, Callback, CSVLogger, ProgramCheckpoint
from conftest import BACKEND, CrashAt, make_program, weights_of


class Slow(Callback):
    """Gives the event loop a chance to cancel between steps (and makes a fit last)."""

    def __init__(self, seconds=0.001):
        super().__init__()
        self.seconds = seconds

    async def on_train_batch_end(self, batch, logs=None):
        await asyncio.sleep(self.seconds)


# 1. cancellation at any instant, a compile included ------------------------------------------------

@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5])
async def test_cancel_at_any_instant_leaves_a_usable_program(toy, tmp_path, delay):
    x, y = toy
    program = make_program()
    errors = []

    class Errors(Callback):
        def on_train_error(self, error):
            errors.append(type(error))

    # batch_size 24 is a new shape: the first step compiles (on JAX) when the cancel comes
    task = asyncio.create_task(program.fit(x, y, batch_size=24, epochs=50, verbose=0, callbacks=[Errors()]))
    await asyncio.sleep(delay)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert errors in ([asyncio.CancelledError], [])  # [] only when cancelled before fit started
    before = weights_of(program)  # readable: nothing was donated away
    program.save(str(tmp_path / "p.keras"))
    await program.evaluate(x, y, verbose=0)
    steps = program.step_count
    await program.fit(x, y, batch_size=24, epochs=1, verbose=0)
    assert program.step_count == steps + 11
    assert any(not np.array_equal(a, b) for a, b in zip(before, weights_of(program)))


async def test_wait_for_timeout_during_a_compile(toy):
    x, y = toy
    program = make_program()
    with pytest.raises((asyncio.TimeoutError, TimeoutError)):
        await asyncio.wait_for(program.fit(x, y, batch_size=40, epochs=100, verbose=0), timeout=0.01)
    await program.fit(x, y, batch_size=40, epochs=1, verbose=0)
    assert program.step_count >= 7


@pytest.mark.skipif(BACKEND != "jax", reason="JAX compiles its steps; torch and TensorFlow run them eagerly")
async def test_the_first_compile_runs_beside_a_slow_on_train_begin(toy):
    """The first step's compile starts with the fit, so a slow start (an MLflow run, a
    restore) and the compile overlap; on_train_begin's changes to the variables still count."""
    import jax

    x, y = toy
    program = make_program()
    reference = make_program()
    compiled = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration" and kwargs.get("fun_name") == "jit(fused)":
            compiled.append(duration)

    class SlowStart(Callback):
        seen = None

        async def on_train_begin(self, logs=None):
            for _ in range(600):  # up to a minute: the compile takes well under a second
                if compiled:
                    break
                await asyncio.sleep(0.1)
            self.seen = len(compiled)
            self.program.set_weights([w * 0.5 for w in self.program.get_weights()])  # as a restore would

    start = SlowStart()
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        await program.fit(x, y, batch_size=40, epochs=1, shuffle=False, verbose=0, callbacks=[start])
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert start.seen == 1  # the first step was compiled while on_train_begin ran
    reference.set_weights([w * 0.5 for w in reference.get_weights()])
    await reference.fit(x, y, batch_size=40, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(weights_of(program), weights_of(reference)):
        np.testing.assert_array_equal(a, b)


# 2. one call per program at a time --------------------------------------------------------------------

async def test_a_second_call_at_once_is_refused_naming_the_running_one(toy):
    x, y = toy
    program = make_program()
    first = asyncio.create_task(program.fit(x, y, epochs=3, verbose=0, callbacks=[Slow()]))
    await asyncio.sleep(0)  # it has started
    for call in (program.fit(x, y, verbose=0), program.evaluate(x, y, verbose=0), program.predict(x, verbose=0)):
        with pytest.raises(RuntimeError, match=r"while this program's fit\(\) is running"):
            await call
    await first
    assert program.step_count == 24
    await asyncio.gather(program.evaluate(x, y, verbose=0))  # free again


async def test_gather_of_two_fits_fails_one_cleanly(toy):
    x, y = toy
    program = make_program()
    results = await asyncio.gather(program.fit(x, y, epochs=1, verbose=0), program.fit(x, y, epochs=1, verbose=0),
                                   return_exceptions=True)
    assert sum(isinstance(r, RuntimeError) for r in results) == 1
    assert program.step_count == 8


# 3. evaluate / predict from a hook leave the fit's metrics alone --------------------------------------

async def test_evaluate_from_a_hook_leaves_the_fit_metrics_alone(toy):
    x, y = toy
    reference = make_program()
    expected = await reference.fit(x, y, epochs=2, verbose=0, shuffle=False)
    program = make_program()
    seen = []

    class EvaluateMidEpoch(Callback):
        async def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                seen.append(await self.program.evaluate(x[:64], y[:64], verbose=0))
                seen.append((await self.program.predict(x[:5], verbose=0)).shape)

    history = await program.fit(x, y, epochs=2, verbose=0, shuffle=False, callbacks=[EvaluateMidEpoch()])
    assert len(seen) == 4 and seen[1] == (5, 1)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-6)
    np.testing.assert_allclose(history.history["accuracy"], expected.history["accuracy"], rtol=1e-6)


async def test_a_fit_from_a_hook_is_refused(toy):
    x, y = toy

    class Nested(Callback):
        async def on_epoch_end(self, epoch, logs=None):
            await self.program.fit(x, y, verbose=0)

    with pytest.raises(RuntimeError, match="from a hook of the running fit"):
        await make_program().fit(x, y, epochs=1, verbose=0, callbacks=[Nested()])


# 4. every callback gets its cleanup; signal handlers with overlapping fits ----------------------------

async def test_an_error_in_one_on_train_end_still_cleans_up_the_others(toy, tmp_path):
    ended = []

    class Fails(Callback):
        def on_train_end(self, logs=None):
            raise ValueError("boom")

    class Records(Callback):
        callback_order = 50

        def on_train_end(self, logs=None):
            ended.append(True)

    original = signal.getsignal(signal.SIGINT)
    backup = BackupAndRestore(str(tmp_path / "b"))
    with pytest.raises(ValueError, match="boom"):
        await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[Fails(), Records(), backup])
    assert ended == [True]
    assert not (tmp_path / "b" / "lock").exists()
    assert signal.getsignal(signal.SIGINT) is original
    await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[BackupAndRestore(str(tmp_path / "b"))])


async def test_overlapping_fits_restore_the_original_signal_handler_in_any_order(toy, tmp_path):
    original = signal.getsignal(signal.SIGTERM)
    long = asyncio.create_task(make_program().fit(*toy, epochs=30, verbose=0, callbacks=[
        BackupAndRestore(str(tmp_path / "a")), Slow(0.01)]))
    await asyncio.sleep(0.3)
    await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[BackupAndRestore(str(tmp_path / "b"))])
    assert signal.getsignal(signal.SIGTERM) is not original  # the long fit still holds it
    await long
    assert signal.getsignal(signal.SIGTERM) is original


# 5. the backup_dir lock -------------------------------------------------------------------------------

async def test_two_fits_in_one_process_on_one_backup_dir_are_refused(toy, tmp_path):
    first = asyncio.create_task(make_program().fit(*toy, epochs=10, verbose=0, callbacks=[
        BackupAndRestore(str(tmp_path / "b")), Slow(0.01)]))
    await asyncio.sleep(0.2)
    with pytest.raises(RuntimeError, match="in use by another fit in this process"):
        await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[BackupAndRestore(str(tmp_path / "b"))])
    await first


LOCKER = """
import sys, time
sys.path.insert(0, {root!r})
from callbacks.backup_and_restore import _lock_file
start = float(sys.argv[1])
while time.time() < start:
    pass
try:
    _lock_file({path!r}, "b")
    print("got", flush=True)
    time.sleep(2)
except RuntimeError:
    print("refused", flush=True)
"""


def test_processes_starting_at_the_same_instant_get_one_lock(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = LOCKER.format(root=root, path=str(tmp_path / "lock"))
    start = str(time.time() + 1.5)
    procs = [subprocess.Popen([sys.executable, "-c", code, start], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    answers = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert answers == ["got", "refused", "refused", "refused"]


# 6. the fingerprint ------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    ({"batch_size": 16}, "dataset.batch_size"), ({"shuffle": False}, "dataset.shuffle"),
    ({"steps_per_epoch": 4}, "dataset.steps_per_epoch"), ({"loss": "mse"}, "a different loss"),
    ({"late_row": True}, "dataset.sample_hash"),
])
async def test_resuming_with_other_settings_is_refused(toy, tmp_path, change, field):
    x, y = toy
    backup_dir = str(tmp_path / "b")
    with pytest.raises(RuntimeError, match="crash"):
        await make_program().fit(x, y, epochs=2, verbose=0, callbacks=[BackupAndRestore(backup_dir, save_freq=2),
                                                                       CrashAt(5)])
    kwargs = {"batch_size": 32, "shuffle": True, "steps_per_epoch": None}
    program = make_program(loss=change.pop("loss")) if "loss" in change else make_program()
    if change.pop("late_row", False):
        x = x.copy()
        x[-1] += 1.0  # a row far beyond the first few
    kwargs.update(change)
    with pytest.raises(ValueError, match=field):
        await program.fit(x, y, epochs=2, verbose=0, callbacks=[BackupAndRestore(backup_dir, save_freq=2)], **kwargs)
    assert program.step_count == 0


# 7. validation data ------------------------------------------------------------------------------------

async def test_validation_data_as_a_list_is_x_and_y(toy):
    x, y = toy
    history = await make_program().fit(x, y, epochs=1, verbose=0, validation_data=[x[:32], y[:32]])
    assert "val_loss" in history.history and "val_accuracy" in history.history


async def test_bad_validation_data_fails_before_the_first_step(toy):
    x, y = toy
    program = make_program()
    with pytest.raises(ValueError, match="validation_data"):
        await program.fit(x, y, epochs=1, verbose=0, validation_data=(x[:, :5], y))
    assert program.step_count == 0


# 8. a batch injected by a hook --------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["x_y", "x_y_w", "list", "tuple_x"])
async def test_an_injected_batch_is_taken_like_a_data_batch(toy, form):
    x, y = toy

    class Inject(Callback):
        def on_compute_update_begin(self, step, update):
            bx, by = x[:16], y[:16]
            update.batch = {"x_y": (bx, by), "x_y_w": (bx, by, np.ones(16, "float32")), "list": [bx, by],
                            "tuple_x": (bx,)}[form]

    program = make_program(loss="binary_crossentropy") if form != "tuple_x" else make_program()
    if form == "tuple_x":  # no targets: a loss cannot be computed; the error says so, not "unpack"
        with pytest.raises(Exception) as error:
            await program.fit(x, y, epochs=1, verbose=0, callbacks=[Inject()])
        assert "not enough values to unpack" not in str(error.value)
        return
    await program.fit(x, y, epochs=1, verbose=0, callbacks=[Inject()])
    assert program.step_count == 8


async def test_an_injected_batch_of_four_items_is_refused_clearly(toy):
    class Inject(Callback):
        def on_compute_update_begin(self, step, update):
            update.batch = (1, 2, 3, 4)

    with pytest.raises(ValueError, match=r"give x, \(x,\), \(x, y\) or \(x, y, sample_weight\)"):
        await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[Inject()])


# 9. messages ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    ({"initial_epoch": -1}, "initial_epoch"), ({"initial_epoch": "1"}, "initial_epoch"),
    ({"initial_epoch": 1.5}, "initial_epoch"), ({"validation_split": "0.2"}, "validation_split"),
    ({"batch_size": True}, "batch_size"), ({"shuffle": "batch"}, "shuffle"), ({"seed": "x"}, "seed"),
    ({"seed": -3}, "seed"), ({"steps_per_epoch": 0}, "steps_per_epoch"), ({"epochs": 2.0}, "epochs"),
])
async def test_fit_arguments_are_checked_by_name(toy, kwargs, name):
    program = make_program()
    with pytest.raises(ValueError, match=f"^{name}="):
        await program.fit(*toy, verbose=0, **kwargs)
    assert program.step_count == 0


@pytest.mark.parametrize("part", ["loss", "metrics"])
async def test_an_unknown_loss_or_metric_is_named(toy, part):
    program = make_program(**({"loss": "binary_crossentropyy"} if part == "loss" else {"metrics": ["acurracy"]}))
    with pytest.raises(ValueError, match=rf"compile\({part}=\.\.\.\)"):
        await program.fit(*toy, verbose=0)


async def test_a_bad_format_spec_fails_before_the_first_step(toy, tmp_path):
    program = make_program()
    with pytest.raises(ValueError, match="cannot be formatted"):
        await program.fit(*toy, epochs=2, verbose=0,
                          callbacks=[ProgramCheckpoint(str(tmp_path / "m-{epoch:zz}.keras"), monitor="loss")])
    assert program.step_count == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
async def test_an_unwritable_target_is_named(toy, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="log.csv"):
            await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[CSVLogger(str(folder / "log.csv"))])
    finally:
        folder.chmod(0o700)


async def test_the_error_names_the_target_not_the_temp_file(tmp_path):
    from callbacks.atomic import atomic_write

    def fail(tmp):
        raise OSError(28, "No space left on device", tmp)

    with pytest.raises(OSError, match=r"No space left on device \(writing .*target.bin\)") as error:
        atomic_write(str(tmp_path / "target.bin"), fail)
    assert error.value.filename.endswith("target.bin")
    assert os.listdir(tmp_path) == []


async def test_writers_remove_their_stale_temp_files(toy, tmp_path):
    for name in (".tmp-log.csv-abc", ".tmp-ckpt-01.keras-xyz.keras", ".tmp-other-file"):
        (tmp_path / name).write_text("left by a kill")
    await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[
        CSVLogger(str(tmp_path / "log.csv")), ProgramCheckpoint(str(tmp_path / "ckpt-{epoch:02d}.keras"),
                                                                monitor="loss")])
    assert sorted(glob.glob(str(tmp_path / ".tmp-*"))) == [str(tmp_path / ".tmp-other-file")]


async def test_a_failed_backup_write_surfaces_at_once(toy, tmp_path, monkeypatch):
    def broken(self, path, payload, arrays):
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(BackupAndRestore, "_write", broken)
    program = make_program()
    with pytest.raises(OSError, match="No space left"):
        await program.fit(*toy, epochs=5, verbose=0, callbacks=[BackupAndRestore(str(tmp_path / "b"), save_freq=2)])
    assert program.step_count <= 3 + 8  # within a step or a chunk of the failed write, not one backup later


def test_monitor_with_an_unreachable_server_costs_seconds_and_keeps_the_operations(toy, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from callbacks import Monitor
    from test_monitor import Server

    monkeypatch.setenv("ASYNCFIT_MLFLOW_PENDING", str(tmp_path / "pending"))
    srv = Server(tmp_path / "server")
    monitor = Monitor(tracking_uri=srv.uri, experiment_name="later", log_program=False, flush_timeout=30)
    program = make_program()
    started = time.monotonic()
    with pytest.warns(UserWarning, match="are kept in"):
        asyncio.run(program.fit(*toy, epochs=3, verbose=0, callbacks=[monitor]))
    assert time.monotonic() - started < 15  # not flush_timeout (30 s)
    assert glob.glob(str(tmp_path / "pending" / "*.json"))
    srv.start()
    try:
        assert Monitor.flush_pending(srv.uri, timeout=60) == 0
        client = MlflowClient(srv.uri)
        runs = client.search_runs([client.get_experiment_by_name("later").experiment_id])
        assert len(runs) == 1 and sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")) \
            == [0, 1, 2]
        assert not glob.glob(str(tmp_path / "pending" / "*.json"))
    finally:
        srv.stop()


async def test_a_uri_mlflow_cannot_use_fails_before_the_first_step(toy):
    pytest.importorskip("mlflow")
    from callbacks import Monitor

    program = make_program()
    with pytest.raises(ValueError, match="MLflow cannot use this URI"):
        await program.fit(*toy, epochs=1, verbose=0, callbacks=[Monitor(tracking_uri="htp://nowhere")])
    assert program.step_count == 0
