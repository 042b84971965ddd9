"""Ported from Keras 3.15 (keras/src/callbacks/callback_test.py): Program instead of Keras' model, fit awaited; assertions unchanged."""
import numpy as np
import pytest

from tests.keras_parity.common import run
from trainer import Program
from keras.src import testing
from keras.src.callbacks.callback import Callback


class CallbackTest(testing.TestCase):
    @pytest.mark.requires_trainable_backend
    def test_model_state_is_current_on_epoch_end(self):
        test_obj = self

        class TestModel(Program):
            def __init__(self):
                super().__init__()
                self.iterations = self.add_variable(
                    shape=(), initializer="zeros", trainable=False
                )

            def call(self, inputs):
                self.iterations.assign(self.iterations + 1)
                return inputs

        class CBK(Callback):
            def on_batch_end(self, batch, logs):
                test_obj.assertEqual(int(self.model.iterations), batch + 1)

        model = TestModel()
        model.compile(optimizer="sgd", loss="mse")
        x = np.random.random((8, 1))
        y = np.random.random((8, 1))
        run(model.fit(x, y, callbacks=[CBK()], batch_size=2))
