"""Zeros and ones for new variables from the host (trainer/host_constants.py): a fit's
symbolic build compiles no initializer on JAX, the values are Keras' own, and only the
building thread is affected."""
import asyncio
import contextlib
import threading

import keras
import numpy as np
import pytest
from keras.src.initializers.constant_initializers import Ones, Zeros

import trainer.program
from conftest import BACKEND
from trainer import Program
from trainer.host_constants import host_constant_initializers

COMPILES: list = []  # (fun_name, thread id) of each XLA compile while RECORDING
RECORDING = threading.Event()

if BACKEND == "jax":
    import jax

    def _on_event(event, seconds, **kwargs):
        if RECORDING.is_set() and event.endswith("backend_compile_duration"):
            COMPILES.append((kwargs.get("fun_name", ""), threading.get_ident()))

    jax.monitoring.register_event_duration_secs_listener(_on_event)


@contextlib.contextmanager
def recording_compiles():
    COMPILES.clear()
    RECORDING.set()
    try:
        yield COMPILES
    finally:
        RECORDING.clear()


def _program(cls, inputs_dim: int, hidden: int, optimizer):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((inputs_dim,))
    model = cls(inputs, keras.layers.Dense(3)(keras.layers.Dense(hidden, activation="relu")(inputs)))
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _data(inputs_dim: int):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, inputs_dim)).astype("float32")
    return x, x[:, :3] * 0.5


@pytest.mark.jax_only
@pytest.mark.skipif(BACKEND != "jax", reason="eager ops compile on JAX only")
def test_a_fits_build_compiles_only_its_steps():
    # Shapes no other test uses: each new shape would compile Keras' zeros.
    x, y = _data(11)
    reference = _program(keras.Model, 11, 19, "adam")
    with recording_compiles() as compiles:
        reference.optimizer.build(reference.trainable_variables)
    assert any("broadcast_in_dim" in name for name, _ in compiles), compiles  # what Keras' own build does

    program = _program(Program, 11, 23, "adam")
    with recording_compiles() as compiles:
        asyncio.run(program.fit(x, y, batch_size=32, epochs=1, verbose=0))
    names = [name for name, _ in compiles]
    assert not any("broadcast_in_dim" in name for name in names), names
    assert "jit(fused)" in names


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "adagrad", "sgd_momentum"])
def test_optimizer_state_is_keras_own(optimizer):
    make = {"sgd_momentum": lambda: keras.optimizers.SGD(0.01, momentum=0.9)}.get(optimizer, lambda: optimizer)
    program, reference = _program(Program, 5, 9, make()), _program(keras.Model, 5, 9, make())
    x, y = _data(5)
    program._check_features((x[:32], y[:32], None))
    reference._symbolic_build(data_batch=(x[:32], y[:32]))
    ours, theirs = program.optimizer.variables, reference.optimizer.variables
    assert len(ours) == len(theirs) > 2  # (their names differ by Keras' numbering only)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape, a.path
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value))


def test_training_is_bitwise_the_same_as_with_keras_initializers(monkeypatch):
    x, y = _data(6)
    weights = []
    for context in (host_constant_initializers, contextlib.nullcontext):
        monkeypatch.setattr(trainer.program, "host_constant_initializers", context)
        program = _program(Program, 6, 8, "adam")
        asyncio.run(program.fit(x, y, batch_size=32, epochs=2, seed=0, verbose=0))
        weights.append(program.get_weights() + [keras.ops.convert_to_numpy(v.value)
                                                for v in program.optimizer.variables])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.jax_only
@pytest.mark.skipif(BACKEND != "jax", reason="eager ops compile on JAX only")
def test_only_the_building_thread_gets_host_values():
    keras_zeros, keras_ones = Zeros.__dict__["__call__"], Ones.__dict__["__call__"]
    other_thread = {}

    def elsewhere():
        other_thread["id"] = threading.get_ident()
        other_thread["value"] = Zeros()((3, 17), dtype="float32")

    with recording_compiles() as compiles:
        with host_constant_initializers():
            with host_constant_initializers():  # nested: still inside after the inner one
                pass
            zeros = Zeros()((3, 29), dtype="float32")
            ones = Ones()((2, 31), dtype="int32")
            worker = threading.Thread(target=elsewhere)
            worker.start()
            worker.join()
    here = [name for name, thread in compiles if thread == threading.get_ident()]
    there = [name for name, thread in compiles if thread == other_thread["id"]]
    assert not here, here
    assert any("broadcast_in_dim" in name for name in there), compiles  # Keras' own zeros there
    np.testing.assert_array_equal(np.asarray(zeros), np.zeros((3, 29), "float32"))
    assert str(ones.dtype) == "int32" and np.asarray(ones).tolist() == np.ones((2, 31), "int32").tolist()
    assert isinstance(zeros, jax.Array) and isinstance(other_thread["value"], jax.Array)
    # Keras' methods are back once no thread is inside.
    assert Zeros.__dict__["__call__"] is keras_zeros and Ones.__dict__["__call__"] is keras_ones


def test_elsewhere_it_changes_nothing():
    keras_zeros = Zeros.__dict__["__call__"]
    if BACKEND == "jax":  # under a distribution Keras places each variable itself
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        try:
            with host_constant_initializers():
                assert Zeros.__dict__["__call__"] is keras_zeros
        finally:
            keras.distribution.set_distribution(None)
    else:
        with host_constant_initializers():
            assert Zeros.__dict__["__call__"] is keras_zeros
