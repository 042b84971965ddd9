"""A Keras user's habits (issue 15) beyond what the ported Keras tests cover."""
import os

import keras
import numpy as np
import pytest

from callbacks import BackupAndRestore, Callback, EarlyStopping, LambdaCallback, ProgramCheckpoint
from conftest import make_program


async def test_save_freq_counts_the_batches_this_callback_saw(toy, tmp_path):
    x, y = toy  # 8 batches an epoch
    program = make_program()
    await program.fit(x[:160], y[:160], epochs=1, verbose=0)  # 5 steps before
    checkpoint = ProgramCheckpoint(str(tmp_path / "c-{epoch}-{batch}.weights.h5"), save_variables_only=True,
                                   save_freq=3, monitor="loss")
    await program.fit(x[:96], y[:96], epochs=3, verbose=0, callbacks=[checkpoint])  # 3 batches an epoch
    assert sorted(os.listdir(tmp_path)) == ["c-1-3.weights.h5", "c-2-3.weights.h5", "c-3-3.weights.h5"]


async def test_a_one_element_vector_can_be_monitored(toy, tmp_path):
    x, y = toy
    program = make_program(metrics=[keras.metrics.F1Score(name="f1", threshold=0.5)])
    stop = EarlyStopping(monitor="f1", patience=1, restore_best_variables=True)
    checkpoint = ProgramCheckpoint(str(tmp_path / "best.keras"), monitor="val_f1", save_best_only=True)
    history = await program.fit(x, y, epochs=3, verbose=0, validation_split=0.25, callbacks=[stop, checkpoint])
    assert np.asarray(history.history["f1"][0]).size == 1
    assert isinstance(stop.best, float) and isinstance(checkpoint.best, float)
    assert os.path.exists(tmp_path / "best.keras")


async def test_early_stopping_restores_the_best_even_after_every_epoch(toy):
    x, y = toy
    snapshots = []

    class Snap(Callback):
        callback_order = 5

        def on_epoch_end(self, epoch, logs=None):
            snapshots.append([np.array(v) for v in self.program.get_variables()])

    program = make_program(optimizer=keras.optimizers.SGD(3.0))  # noisy: the best is not the last
    stop = EarlyStopping(monitor="val_loss", patience=100, restore_best_weights=True)
    history = await program.fit(x, y, epochs=6, verbose=0, validation_split=0.3, callbacks=[stop, Snap()])
    assert len(history.epoch) == 6 and stop.stopped_epoch == 0
    best = int(np.argmin(history.history["val_loss"]))
    for a, b in zip(program.get_variables(), snapshots[best]):
        np.testing.assert_array_equal(a, b)


def test_keras_arguments_are_accepted():
    assert BackupAndRestore("b", double_checkpoint=False).double_checkpoint is False
    for empty in ("", None):
        with pytest.raises(ValueError, match="Empty `backup_dir`"):
            BackupAndRestore(empty)
    with pytest.warns(UserWarning, match="mode 'unknown' is unknown, fallback to auto mode"):
        stop = EarlyStopping(mode="unknown")
    assert stop.mode == "auto"
    assert ProgramCheckpoint("m.weights.h5", save_weights_only=True).save_variables_only
    assert LambdaCallback(custom_method=print).custom_method is print
    with pytest.raises(TypeError, match="on_epoch_ends"):
        LambdaCallback(on_epoch_ends=print)


async def test_keras_callback_batch_aliases_are_called(toy):
    seen = []

    class Old(keras.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            seen.append(batch)

    lam = keras.callbacks.LambdaCallback(on_batch_begin=lambda batch, logs: seen.append(("begin", batch)))
    await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[Old(), lam])
    assert [s for s in seen if not isinstance(s, tuple)] == list(range(8))
    assert [s for s in seen if isinstance(s, tuple)] == [("begin", i) for i in range(8)]


async def test_csv_logger_writes_na_for_a_missing_value(toy, tmp_path):
    from callbacks import CSVLogger

    await make_program().fit(*toy, epochs=3, verbose=0, validation_data=toy, validation_freq=2,
                             callbacks=[CSVLogger(str(tmp_path / "log.csv"))])
    import pandas as pd

    frame = pd.read_csv(tmp_path / "log.csv", keep_default_na=False)
    assert list(frame["val_loss"][[0, 2]]) == ["NA", "NA"] and frame["val_loss"][1] != "NA"
