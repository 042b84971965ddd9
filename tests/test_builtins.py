"""The built-in callbacks, one behaviour at a time (the crash tests cover them together)."""
import asyncio
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

from callbacks import (BackupAndRestore, Callback, CSVLogger, EarlyStopping, LambdaCallback, ProgramCheckpoint,
                       StopTraining, TerminateOnNaN)
from conftest import CrashAt, make_program, weights_of
from trainer import load_program


class Snap(Callback):
    """Variables at every epoch end (after the early stopper has looked)."""

    callback_order = 5

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(weights_of(self.program))


# -- EarlyStopping ---------------------------------------------------------------------------------

async def test_early_stopping_patience(toy):
    program = make_program(optimizer=keras.optimizers.SGD(0.0))  # the loss never improves
    stop = EarlyStopping(monitor="loss", patience=2)
    history = await program.fit(*toy, epochs=10, shuffle=False, verbose=0, callbacks=[stop])
    assert history.epoch == [0, 1, 2] and stop.stopped_epoch == 2


async def test_early_stopping_baseline_and_start_from_epoch(toy):
    # A loss of 0 is never beaten: as in Keras, `wait` is only reset by beating the
    # baseline, so improving epochs still count toward patience.
    stop = EarlyStopping(monitor="loss", patience=2, baseline=0.0)
    history = await make_program().fit(*toy, epochs=10, verbose=0, callbacks=[stop])
    assert history.epoch == [0, 1]
    stop = EarlyStopping(monitor="loss", patience=1, start_from_epoch=3)
    history = await make_program(optimizer=keras.optimizers.SGD(0.0)).fit(*toy, epochs=10, shuffle=False,
                                                                         verbose=0, callbacks=[stop])
    assert history.epoch == [0, 1, 2, 3, 4]


async def test_early_stopping_min_delta(toy):
    stop = EarlyStopping(monitor="loss", patience=1, min_delta=10.0)  # no epoch improves by 10
    history = await make_program().fit(*toy, epochs=10, verbose=0, callbacks=[stop])
    assert len(history.epoch) == 2


async def test_restore_best_variables_when_another_callback_stops(toy):
    x, y = toy

    class StopAtEpoch3(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:
                raise StopTraining("someone else")

    snap = Snap()
    stop = EarlyStopping(monitor="val_loss", patience=100, restore_best_variables=True)
    program = make_program(optimizer=keras.optimizers.SGD(3.0))  # noisy: the best is not the last
    history = await program.fit(x, y, epochs=10, verbose=0, validation_split=0.3,
                                callbacks=[stop, snap, StopAtEpoch3()])
    best = int(np.argmin(history.history["val_loss"]))
    assert stop.best_epoch == best
    for a, b in zip(weights_of(program), snap.weights[best]):
        np.testing.assert_array_equal(a, b)


async def test_early_stopping_state_survives(toy):
    stop = EarlyStopping(monitor="loss", patience=3)
    stop.load_state_dict({"best": 0.0, "wait": 2})
    history = await make_program().fit(*toy, epochs=10, verbose=0, callbacks=[stop])
    assert stop.stopped_epoch == 1 and len(history.epoch) == 2  # wait 2 -> 3 at epoch 1 (epoch 0 never stops)


# -- ProgramCheckpoint ---------------------------------------------------------------------------------

async def test_checkpoint_every_epoch_with_format_fields(toy, tmp_path):
    rows = []
    listener = LambdaCallback(on_checkpoint=rows.append)
    pattern = str(tmp_path / "ck-{epoch:02d}-{loss:.3f}.keras")
    history = await make_program().fit(*toy, epochs=3, verbose=0,
                                       callbacks=[ProgramCheckpoint(pattern), listener])
    names = sorted(os.listdir(tmp_path))
    expected = [f"ck-{e + 1:02d}-{loss:.3f}.keras" for e, loss in enumerate(history.history["loss"])]
    assert names == expected
    assert [(r.kind, r.epoch) for r in rows] == [("program", 0), ("program", 1), ("program", 2)]
    restored = load_program(str(tmp_path / names[-1]))
    assert restored.compiled


async def test_checkpoint_save_best_only_keeps_the_best(toy, tmp_path):
    x, y = toy
    path = str(tmp_path / "best.weights.h5")
    program = make_program(optimizer=keras.optimizers.SGD(3.0))
    snap = Snap()
    checkpoint = ProgramCheckpoint(path, monitor="val_loss", save_best_only=True, save_variables_only=True)
    history = await program.fit(x, y, epochs=8, verbose=0, validation_split=0.3, callbacks=[checkpoint, snap])
    best = int(np.argmin(history.history["val_loss"]))
    assert checkpoint.best == pytest.approx(min(history.history["val_loss"]))
    program.load_variables(path)
    for a, b in zip(weights_of(program), snap.weights[best]):
        np.testing.assert_array_equal(a, b)


async def test_checkpoint_every_n_batches_and_max_to_keep(toy, tmp_path):
    pattern = str(tmp_path / "ck-{epoch}-{batch}.weights.h5")
    checkpoint = ProgramCheckpoint(pattern, save_variables_only=True, save_freq=3, max_to_keep=2)
    await make_program().fit(*toy, epochs=2, batch_size=32, verbose=0, callbacks=[checkpoint])
    # 16 steps: saves after steps 3, 6, ..., 15 -> (epoch 1, batch 3, 6), (2, 1, 4, 7); newest two kept
    assert sorted(os.listdir(tmp_path)) == ["ck-2-4.weights.h5", "ck-2-7.weights.h5"]
    assert checkpoint.kept == [pattern.format(epoch=2, batch=4), pattern.format(epoch=2, batch=7)]


def test_checkpoint_bad_arguments():
    with pytest.raises(ValueError, match="must end in '.keras'"):
        ProgramCheckpoint("model.h5")
    with pytest.raises(ValueError, match="must end in '.weights.h5'"):
        ProgramCheckpoint("model.keras", save_variables_only=True)
    with pytest.raises(ValueError, match="save_freq"):
        ProgramCheckpoint("model.keras", save_freq=0)


async def test_checkpoint_unknown_field_fails_before_a_step(toy, tmp_path):
    program = make_program()
    with pytest.raises(ValueError, match=r"unknown format field\(s\) \['val_acc'\]"):
        await program.fit(*toy, epochs=1, verbose=0, validation_split=0.2,
                          callbacks=[ProgramCheckpoint(str(tmp_path / "{val_acc:.2f}.keras"))])
    assert program.step_count == 0 and not os.listdir(tmp_path)


# -- BackupAndRestore (in process; test_crash.py kills real processes) ------------------------------

async def test_resume_mid_epoch_equals_an_uninterrupted_run(toy, tmp_path):
    x, y = toy
    reference = make_program(optimizer=keras.optimizers.Adam(0.01))
    ref_history = await reference.fit(x, y, epochs=4, seed=5, verbose=0, validation_split=0.25)

    crashed = make_program(optimizer=keras.optimizers.Adam(0.01))
    backup = BackupAndRestore(str(tmp_path / "b"), save_freq=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        await crashed.fit(x, y, epochs=4, seed=5, verbose=0, validation_split=0.25,
                          callbacks=[backup, CrashAt(13), CSVLogger(str(tmp_path / "log.csv"))])
    assert backup.backups() and not (tmp_path / "b" / "lock").exists()

    resumed = make_program(optimizer=keras.optimizers.Adam(0.01))
    backup = BackupAndRestore(str(tmp_path / "b"), save_freq=5)
    # seed=None: the backup's seed wins, so the shuffled order is the same
    history = await resumed.fit(x, y, epochs=4, verbose=0, validation_split=0.25,
                                callbacks=[backup, CSVLogger(str(tmp_path / "log.csv"))])
    assert backup.restored_from.endswith("backup-0000000010.npz")  # step 10: epoch 1, batch 4 of 6
    assert resumed.step_count == reference.step_count == 24
    for a, b in zip(weights_of(resumed), weights_of(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert history.epoch == [0, 1, 2, 3]
    np.testing.assert_allclose(history.history["loss"], ref_history.history["loss"], rtol=1e-5)
    assert list(pd.read_csv(tmp_path / "log.csv")["epoch"]) == [0, 1, 2, 3]
    assert backup.backups() == []  # deleted after a good end


@pytest.mark.parametrize("change, field", [
    ("epochs", "epochs"), ("optimizer", "optimizer"), ("data", "dataset"), ("program", "program"),
])
async def test_a_backup_from_another_run_is_refused_naming_the_field(change, field, toy, tmp_path):
    x, y = toy
    backup_dir = str(tmp_path / "b")
    with pytest.raises(RuntimeError):
        await make_program().fit(x, y, epochs=3, verbose=0,
                                 callbacks=[BackupAndRestore(backup_dir, save_freq=2), CrashAt(5)])
    kwargs = {"epochs": 3}
    program = make_program()
    if change == "epochs":
        kwargs["epochs"] = 4
    elif change == "optimizer":
        program = make_program(optimizer=keras.optimizers.SGD(0.5))
    elif change == "data":
        x = x + 1.0
    else:  # another architecture: a narrower hidden layer
        from trainer import Program

        program = Program([keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1, activation="sigmoid")])
        program.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy", metrics=["accuracy"])
    with pytest.raises(ValueError, match=f"made by a different {field}"):
        await program.fit(x, y, verbose=0, callbacks=[BackupAndRestore(backup_dir)], **kwargs)
    assert program.step_count == 0


async def test_backup_dir_used_by_a_live_run_is_refused(toy, tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.makedirs(tmp_path / "b")
        (tmp_path / "b" / "lock").write_text(str(other.pid))
        program = make_program()
        with pytest.raises(RuntimeError, match=f"in use by another live run \\(pid {other.pid}\\)"):
            await program.fit(*toy, epochs=1, verbose=0, callbacks=[BackupAndRestore(str(tmp_path / "b"))])
        assert program.step_count == 0
    finally:
        other.kill()
        other.wait()
    # the owner is dead now: its stale lock is taken over
    await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[BackupAndRestore(str(tmp_path / "b"))])


async def test_a_corrupt_newest_backup_falls_back_to_the_previous_one(toy, tmp_path):
    x, y = toy
    backup = BackupAndRestore(str(tmp_path / "b"), save_freq=3)
    with pytest.raises(RuntimeError):
        await make_program().fit(x, y, epochs=2, verbose=0, callbacks=[backup, CrashAt(10)])
    newest, previous = backup.backups()
    with open(newest, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\0" * 200)
    backup = BackupAndRestore(str(tmp_path / "b"), save_freq=3)
    with pytest.warns(UserWarning, match="cannot be read"):
        await make_program().fit(x, y, epochs=2, verbose=0, callbacks=[backup])
    assert backup.restored_from == previous


async def test_save_freq_and_time_interval_both_due(toy, tmp_path):
    written = []
    listener = LambdaCallback(on_checkpoint=lambda row: written.append(row.step))
    backup = BackupAndRestore(str(tmp_path / "b"), save_freq=2, save_time_interval=3600, delete_checkpoint=False)
    await make_program().fit(*toy, epochs=2, verbose=0, callbacks=[backup, listener])
    assert written == []  # steps were due, time never was
    backup = BackupAndRestore(str(tmp_path / "c"), save_freq=3, save_time_interval=1e-9, delete_checkpoint=False)
    await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[backup, listener])
    assert written == [3, 6]
    written.clear()
    backup = BackupAndRestore(str(tmp_path / "d"), save_freq=4, delete_checkpoint=False)
    await make_program().fit(*toy, epochs=2, verbose=0, callbacks=[backup, listener])
    assert written == [4, 8, 12, 16]  # steps 8 and 16 end an epoch: taken in on_epoch_end


def test_backup_bad_arguments():
    with pytest.raises(ValueError, match="False, which Keras took as 'every batch', is refused"):
        BackupAndRestore("b", save_freq=False)
    with pytest.raises(ValueError, match="save_time_interval"):
        BackupAndRestore("b", save_time_interval=0)


# -- CSVLogger --------------------------------------------------------------------------------------

async def test_csv_append_rerun_keeps_one_header(toy, tmp_path):
    path = str(tmp_path / "log.csv")
    await make_program().fit(*toy, epochs=2, verbose=0, callbacks=[CSVLogger(path)])
    await make_program().fit(*toy, epochs=3, verbose=0, callbacks=[CSVLogger(path, append=True)])
    text = open(path).read()
    assert text.count("epoch,") == 1
    assert list(pd.read_csv(path)["epoch"]) == [0, 1, 0, 1, 2]
    await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[CSVLogger(path)])
    assert list(pd.read_csv(path)["epoch"]) == [0]  # append=False starts over


async def test_csv_new_key_widens_the_header_and_no_val_columns_without_validation(toy, tmp_path):
    path = str(tmp_path / "log.csv")

    class LateKey(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch >= 1:
                logs["late"] = epoch * 10.0

    await make_program().fit(*toy, epochs=3, verbose=0, callbacks=[CSVLogger(path, separator=";"), LateKey()])
    frame = pd.read_csv(path, sep=";")
    assert list(frame.columns) == ["epoch", "loss", "accuracy", "late"] or list(frame.columns) == [
        "epoch", "accuracy", "loss", "late"]
    assert frame["late"].isna().tolist() == [True, False, False]
    assert not any(c.startswith("val_") for c in frame.columns)


# -- TerminateOnNaN ---------------------------------------------------------------------------------

async def test_terminate_on_nan_stops_at_the_bad_batch_and_keeps_the_backup(toy, tmp_path):
    x, y = toy
    y = y.copy()
    y[100] = np.nan  # batch 3 (samples 96..127) without shuffling
    ended = []
    nan = TerminateOnNaN()
    backup = BackupAndRestore(str(tmp_path / "b"), save_freq=2)
    program = make_program(loss="mse", metrics=[])
    await program.fit(x, y, epochs=3, shuffle=False, verbose=0,
                      callbacks=[nan, backup, LambdaCallback(on_train_end=lambda logs: ended.append(True))])
    assert nan.terminated_at == 4  # the bad step itself
    assert 4 <= program.step_count <= 4 + 8  # checks never stall the device: the stop may lag a few steps
    assert ended == [True]
    assert "loss is nan at step 4" in program.stop_reason
    assert backup.backups()  # kept: the run did not end well
    meta, arrays = backup._read(backup.backups()[0])
    assert meta["step_count"] < 4 and all(np.isfinite(a).all() for a in arrays.values())  # the last good one


async def test_terminate_on_nan_monitor_keys(toy):
    with pytest.raises(ValueError, match=r"\['mea'\] will not be logged"):
        await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[TerminateOnNaN(monitor=["loss", "mea"])])
    program = make_program()
    await program.fit(*toy, epochs=2, verbose=0, callbacks=[TerminateOnNaN(monitor=True)])
    assert program.step_count == 16


# -- LambdaCallback ---------------------------------------------------------------------------------

async def test_lambda_callback_any_hook_sync_or_async(toy):
    events = []

    async def on_epoch_end(epoch, logs):
        await asyncio.sleep(0)
        events.append(("epoch_end", epoch))

    cb = LambdaCallback(
        on_train_begin=lambda logs: events.append(("begin",)),
        on_compute_update_end=lambda step, update: events.append(("computed", step)) or False,
        on_epoch_end=on_epoch_end,
    )
    await make_program().fit(*toy, epochs=1, batch_size=128, verbose=0, callbacks=[cb])
    assert events == [("begin",), ("computed", 0), ("computed", 1), ("epoch_end", 0)]
    with pytest.raises(TypeError, match="Did you mean 'on_epoch_end'"):
        LambdaCallback(on_epoch_ned=print)


async def test_a_backup_holds_the_state_of_its_own_moment_even_when_written_late(toy, tmp_path, monkeypatch):
    import time as time_module

    original = BackupAndRestore._write

    def slow_write(self, *args):
        time_module.sleep(0.5)  # the epoch ends (History grows) before this file is written
        return original(self, *args)

    monkeypatch.setattr(BackupAndRestore, "_write", slow_write)
    backup = BackupAndRestore(str(tmp_path / "b"), save_freq=5)
    with pytest.raises(RuntimeError):
        await make_program().fit(*toy, epochs=3, verbose=0, callbacks=[backup, CrashAt(10)])
    meta, _ = backup._read(backup.backups()[0])
    assert meta["step_count"] == 5 and meta["epoch"] == 0
    assert meta["callbacks"]["History"]["epoch"] == []  # not epoch 0, which ended after the snapshot
