"""keras/src/callbacks/terminate_on_nan_test.py, ported."""
import os

import numpy as np
import pytest
from absl.testing import parameterized
from keras.src import callbacks, initializers, layers, testing
from keras.src.utils import numerical_utils

from callbacks import BackupAndRestore, TerminateOnNaN
from tests.keras_parity.common import run
from trainer import Program

NAN_EPOCH = ("README, Decisions: an epoch that TerminateOnNaN ends has no History row and no epoch end "
             "(nothing is written from a poisoned state); Keras logs that epoch's nan loss")


class TerminateOnNaNTest(testing.TestCase):
    @pytest.mark.xfail(reason=NAN_EPOCH, strict=True)
    def test_TerminateOnNaN(self):
        TRAIN_SAMPLES = 10
        TEST_SAMPLES = 10
        INPUT_DIM = 3
        NUM_CLASSES = 2
        BATCH_SIZE = 4
        np.random.seed(1337)
        x_train = np.random.random((TRAIN_SAMPLES, INPUT_DIM))
        y_train = np.random.choice(np.arange(NUM_CLASSES), size=TRAIN_SAMPLES)
        x_test = np.random.random((TEST_SAMPLES, INPUT_DIM))
        y_test = np.random.choice(np.arange(NUM_CLASSES), size=TEST_SAMPLES)
        y_test = numerical_utils.to_categorical(y_test)
        y_train = numerical_utils.to_categorical(y_train)
        model = Program([])
        initializer = initializers.Constant(value=1e5)
        for _ in range(5):
            model.add(layers.Dense(2, activation="relu", kernel_initializer=initializer))
        model.add(layers.Dense(NUM_CLASSES))
        model.compile(loss="mean_squared_error", optimizer="sgd")
        history = run(model.fit(x_train, y_train, batch_size=BATCH_SIZE, validation_data=(x_test, y_test),
                                callbacks=[TerminateOnNaN()], epochs=20))
        loss = history.history["loss"]
        self.assertEqual(len(loss), 1)
        self.assertTrue(np.isnan(loss[0]) or np.isinf(loss[0]))

    @pytest.mark.xfail(reason=NAN_EPOCH, strict=True)
    def test_terminate_on_nan_graceful_stop(self):
        model = Program([layers.Dense(1, input_shape=(1,))])
        model.compile(optimizer="sgd", loss="mse")
        x = np.array([[1.0], [2.0]])
        y = np.array([[np.inf], [np.inf]])
        callback = TerminateOnNaN(raise_error=False)
        history = run(model.fit(x, y, epochs=2, batch_size=1, callbacks=[callback], verbose=0))
        self.assertLess(len(history.history["loss"]), 4)

    def test_terminate_on_nan_raise_error_raises_error(self):
        model = Program([layers.Dense(1, input_shape=(1,))])
        model.compile(optimizer="sgd", loss="mse")
        x = np.array([[1.0], [2.0]])
        y = np.array([[np.inf], [np.inf]])
        callback = TerminateOnNaN(raise_error=True)
        with self.assertRaisesRegex(RuntimeError, "NaN or Inf loss encountered"):
            run(model.fit(x, y, epochs=1, batch_size=1, callbacks=[callback], verbose=0))

    def test_raise_error_terminate_does_not_trigger_on_train_end(self):
        class TrackingCallback(callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.train_end_called = False

            def on_train_end(self, logs=None):
                self.train_end_called = True

        model = Program([layers.Dense(1, input_shape=(1,))])
        model.compile(optimizer="sgd", loss="mse")
        x = np.array([[1.0]])
        y = np.array([[np.inf]])
        tracking_callback = TrackingCallback()
        raise_error_terminate_callback = TerminateOnNaN(raise_error=True)
        with self.assertRaises(RuntimeError):
            run(model.fit(x, y, epochs=1, callbacks=[tracking_callback, raise_error_terminate_callback], verbose=0))
        self.assertFalse(tracking_callback.train_end_called)

    def test_raise_error_terminate_preserves_backup(self):
        tmpdir = self.get_temp_dir()
        backup_dir = os.path.join(tmpdir, "backups")
        os.makedirs(backup_dir, exist_ok=True)
        fake_file = os.path.join(backup_dir, "checkpoint.txt")
        with open(fake_file, "w") as f:
            f.write("dummy checkpoint")
        model = Program([layers.Dense(1, input_shape=(1,))])
        model.compile(optimizer="sgd", loss="mse")
        x_nan = np.array([[1.0]])
        y_nan = np.array([[np.inf]])
        raise_error_terminate_callback = TerminateOnNaN(raise_error=True)
        backup_callback = BackupAndRestore(backup_dir=backup_dir)
        backup_callback.on_train_end = lambda logs=None: None
        with self.assertRaises(RuntimeError):
            run(model.fit(x_nan, y_nan, epochs=1, callbacks=[backup_callback, raise_error_terminate_callback],
                          verbose=0))
        self.assertTrue(os.path.exists(backup_dir), f"Backup dir deleted: {backup_dir}")
        self.assertTrue(os.path.exists(fake_file), "Backup file missing unexpectedly.")

    @parameterized.named_parameters(("raise_error_false", False), ("raise_error_true", True))
    def test_normal_training_does_not_raise(self, raise_error):
        model = Program([layers.Dense(1, input_shape=(1,))])
        model.compile(optimizer="sgd", loss="mse")
        x = np.array([[1.0], [2.0]])
        y = np.array([[1.0], [2.0]])
        callback = TerminateOnNaN(raise_error=raise_error)
        history = run(model.fit(x, y, epochs=2, callbacks=[callback], verbose=0))
        self.assertEqual(len(history.history["loss"]), 2)

    def test_raise_error_terminate_stops_on_later_batch(self):
        model = Program([layers.Dense(1, input_shape=(1,))])
        model.compile(optimizer="sgd", loss="mse")
        x = np.array([[1.0], [2.0]])
        y = np.array([[1.0], [np.inf]])
        callback = TerminateOnNaN(raise_error=True)
        with self.assertRaises(RuntimeError) as exc:
            run(model.fit(x, y, epochs=1, batch_size=1, callbacks=[callback], verbose=0))
        self.assertTrue(any(f"batch {i}" in str(exc.exception) for i in [0, 1]))
