import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
# MLflow operations a test's unreachable server could not take go here, not to ~/.cache.
os.environ.setdefault("ASYNCFIT_MLFLOW_PENDING", __import__("tempfile").mkdtemp(prefix="asyncfit-pending-"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from callbacks import Callback  # noqa: E402
from trainer import Program  # noqa: E402

BACKEND = keras.backend.backend()


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int32")


@pytest.fixture
def toy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x[:, :1] + 0.5 * x[:, 1:2] > 0).astype("float32")
    return x, y


def make_program(n_in: int = 8, n_out: int = 1, *, seed: int = 0, compile: bool = True, **compile_kwargs) -> Program:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((n_in,), name="features")
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    activation = "sigmoid" if n_out == 1 else "softmax"
    outputs = keras.layers.Dense(n_out, activation=activation, name="head")(hidden)
    program = Program(inputs=inputs, outputs=outputs, name="toy")
    if compile:
        defaults = {
            "optimizer": keras.optimizers.SGD(0.1),
            "loss": "binary_crossentropy" if n_out == 1 else "sparse_categorical_crossentropy",
            "metrics": ["accuracy"],
        }
        defaults.update(compile_kwargs)
        program.compile(**defaults)
    return program


def weights_of(program) -> list:
    return [np.array(w) for w in program.get_variables()]


@pytest.fixture
def program():
    return make_program()


class CrashAt(Callback):
    """Raises RuntimeError("simulated crash") when the program reaches step `step`."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if self._program.step_count == self.step:
            raise RuntimeError("simulated crash")

