"""keras/src/callbacks/csv_logger_test.py, ported."""
import csv
import os
import re
import tempfile

import numpy as np
import pytest
from keras.src import initializers, layers, testing
from keras.src.utils import numerical_utils

from callbacks import CSVLogger, TerminateOnNaN
from tests.keras_parity.common import run
from tests.keras_parity.test_terminate_on_nan import NAN_EPOCH
from trainer import Program

TRAIN_SAMPLES = 10
TEST_SAMPLES = 10
INPUT_DIM = 3
BATCH_SIZE = 4


class CSVLoggerTest(testing.TestCase):
    def test_CSVLogger(self):
        OUTPUT_DIM = 1
        np.random.seed(1337)
        temp_dir = tempfile.TemporaryDirectory()
        filepath = os.path.join(temp_dir.name, "log.tsv")
        sep = "\t"
        x_train = np.random.random((TRAIN_SAMPLES, INPUT_DIM))
        y_train = np.random.random((TRAIN_SAMPLES, OUTPUT_DIM))
        x_test = np.random.random((TEST_SAMPLES, INPUT_DIM))
        y_test = np.random.random((TEST_SAMPLES, OUTPUT_DIM))

        def make_model():
            np.random.seed(1337)
            model = Program([layers.Dense(2, activation="relu"), layers.Dense(OUTPUT_DIM)])
            model.compile(loss="mse", optimizer="sgd", metrics=["mse"])
            return model

        model = make_model()
        cbks = [CSVLogger(filepath, separator=sep)]
        run(model.fit(x_train, y_train, batch_size=BATCH_SIZE, validation_data=(x_test, y_test), callbacks=cbks,
                      epochs=1, verbose=0))
        self.assertTrue(os.path.exists(filepath))
        with open(filepath) as csvfile:
            dialect = csv.Sniffer().sniff(csvfile.read())
        self.assertEqual(dialect.delimiter, sep)
        del model
        del cbks

        model = make_model()
        cbks = [CSVLogger(filepath, separator=sep, append=True)]
        run(model.fit(x_train, y_train, batch_size=BATCH_SIZE, validation_data=(x_test, y_test), callbacks=cbks,
                      epochs=1, verbose=0))
        run(model.fit(x_train, y_train, batch_size=BATCH_SIZE, validation_data=(x_test, y_test), callbacks=cbks,
                      epochs=2, verbose=0))
        with open(filepath) as csvfile:
            list_lines = csvfile.readlines()
            for line in list_lines:
                self.assertEqual(line.count(sep), 4)
            self.assertLen(list_lines, 5)
            output = " ".join(list_lines)
            self.assertLen(re.findall("epoch", output), 1)
        os.remove(filepath)

        model = make_model()
        cbks = [CSVLogger(filepath, separator=sep)]
        hist = run(model.fit(x_train, y_train, batch_size=BATCH_SIZE, validation_data=(x_test, y_test),
                             validation_freq=3, callbacks=cbks, epochs=5, verbose=0))
        self.assertTrue(os.path.exists(filepath))
        with open(filepath) as csvfile:
            rows = csv.DictReader(csvfile, delimiter=sep)
            for idx, row in enumerate(rows, 1):
                self.assertIn("val_loss", row)
                if idx == 3:
                    self.assertEqual(row["val_loss"], str(hist.history["val_loss"][0]))
                else:
                    self.assertEqual(row["val_loss"], "NA")

    @pytest.mark.xfail(reason=NAN_EPOCH, strict=True)
    def test_stop_training_csv(self):
        tmpdir = tempfile.TemporaryDirectory()
        csv_logfile = os.path.join(tmpdir.name, "csv_logger.csv")
        NUM_CLASSES = 2
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
                                callbacks=[TerminateOnNaN(), CSVLogger(csv_logfile)], epochs=20))
        loss = history.history["loss"]
        self.assertEqual(len(loss), 1)
        self.assertTrue(np.isnan(loss[0]) or np.isinf(loss[0]))
        values = []
        with open(csv_logfile) as f:
            values = [x for x in csv.reader(f) if x]
        self.assertIn("nan", values[-1], "NaN not logged in CSV Logger.")
