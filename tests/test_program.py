"""Program: the three building styles, compile(reward=), evaluate/predict, saving."""
import asyncio

import keras
import numpy as np
import pytest

from conftest import BACKEND, make_program, weights_of
from trainer import History, Program, load_program


async def test_functional_fit_returns_history(toy):
    x, y = toy
    program = make_program()
    history = await program.fit(x, y, epochs=3, batch_size=32, verbose=0, seed=1)
    assert isinstance(history, History)
    assert history.epoch == [0, 1, 2]
    assert set(history.history) == {"loss", "accuracy"}
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert program.step_count == 3 * 8
    frame = history.to_dataframe()
    assert list(frame.index) == [0, 1, 2] and "loss" in frame.columns


async def test_sequential_style(toy):
    x, y = toy
    keras.utils.set_random_seed(0)
    program = Program([keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1, activation="sigmoid")])
    program.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy", metrics=["accuracy"])
    history = await program.fit(x, y, epochs=8, verbose=0)
    assert history.history["accuracy"][-1] > 0.7
    assert isinstance(program, Program)


class TwoLayer(Program):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.dropout = keras.layers.Dropout(0.1)
        self.head = keras.layers.Dense(1, activation="sigmoid")

    def call(self, x, training=False):
        return self.head(self.dropout(self.hidden(x), training=training))


async def test_subclassed_style_after_functional(toy):
    # A functional Program first must not change how subclasses build (Keras rewrites bases).
    make_program()
    x, y = toy
    keras.utils.set_random_seed(0)
    program = TwoLayer()
    program.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy", metrics=["accuracy"])
    history = await program.fit(x, y, epochs=8, verbose=0)
    assert history.history["accuracy"][-1] > 0.7


async def test_reward_is_maximised_and_logged(toy):
    x, y = toy

    def reward(y_true, y_pred):
        return -keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)

    program = make_program(loss=None, reward=reward, metrics=[])
    history = await program.fit(x, y, epochs=5, verbose=0, validation_split=0.25)
    assert "reward" in history.history and "val_reward" in history.history
    assert history.history["reward"][-1] > history.history["reward"][0]
    np.testing.assert_allclose(history.history["loss"], [-r for r in history.history["reward"]], rtol=1e-4)


def test_compile_loss_and_reward_errors():
    program = make_program(compile=False)
    with pytest.raises(ValueError, match="both loss= and reward="):
        program.compile(optimizer="sgd", loss="mse", reward=lambda t, p: -p)
    with pytest.raises(ValueError, match="neither"):
        program.compile(optimizer="sgd")


async def test_evaluate_and_predict(toy):
    x, y = toy
    program = make_program()
    await program.fit(x, y, epochs=2, verbose=0)
    metrics = await program.evaluate(x, y, verbose=0)
    assert set(metrics) == {"loss", "accuracy"}
    keras_metrics = keras.Model.evaluate(program, x, y, verbose=0, return_dict=True)
    assert metrics["loss"] == pytest.approx(keras_metrics["loss"], rel=1e-4)
    predictions = await program.predict(x, batch_size=50, verbose=0)
    assert predictions.shape == (256, 1)
    np.testing.assert_allclose(predictions, keras.Model.predict(program, x, verbose=0), atol=1e-5)


async def test_step_count_is_monotonic_across_fits(toy):
    x, y = toy
    program = make_program()
    await program.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert program.step_count == 4
    await program.fit(x, y, epochs=2, batch_size=64, verbose=0)
    assert program.step_count == 12


async def test_save_and_load_program(tmp_path, toy):
    x, y = toy
    program = make_program(optimizer="adam")
    await program.fit(x, y, epochs=2, verbose=0)
    path = str(tmp_path / "toy.keras")
    program.save(path)
    restored = load_program(path)
    assert isinstance(restored, Program)
    np.testing.assert_allclose(await restored.predict(x, verbose=0), await program.predict(x, verbose=0), atol=1e-6)
    # compiled from the saved config, optimizer state included: training continues
    assert restored.compiled
    await restored.fit(x, y, epochs=1, verbose=0)


async def test_save_and_load_reward_program(tmp_path, toy):
    x, y = toy
    program = make_program(loss=None, reward=_saved_reward, metrics=[])
    await program.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "reward.keras")
    program.save(path)
    restored = load_program(path)
    history = await restored.fit(x, y, epochs=1, verbose=0)
    assert "reward" in history.history


@keras.saving.register_keras_serializable(package="tests")
def _saved_reward(y_true, y_pred):
    return -keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=-1)


async def test_variables_roundtrip(tmp_path, toy):
    x, y = toy
    program = make_program()
    before = weights_of(program)
    await program.fit(x, y, epochs=1, verbose=0)
    after = weights_of(program)
    assert not all(np.array_equal(a, b) for a, b in zip(before, after))
    path = str(tmp_path / "toy.weights.h5")
    program.save_variables(path)
    program.set_variables(before)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(program)))
    program.load_variables(path)
    assert all(np.array_equal(a, b) for a, b in zip(after, weights_of(program)))
    assert program.get_module("hidden") is program.get_layer("hidden")


async def test_stop_training_flag_stops_after_the_step_and_does_not_leak(toy):
    x, y = toy
    program = make_program()

    from callbacks import Callback

    class StopAt(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.program.step_count == 3:
                self.program.stop_training = True

    history = await program.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[StopAt()])
    assert program.step_count == 3
    assert history.epoch == [0]  # as Keras: the partial epoch still ends with on_epoch_end
    assert program.stop_training is False
    await program.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert program.step_count == 3 + 8


@pytest.mark.skipif(BACKEND != "jax", reason="fit in a running event loop with other tasks")
async def test_two_programs_train_concurrently(toy):
    x, y = toy
    a, b = make_program(seed=1), make_program(seed=2)
    ha, hb = await asyncio.gather(a.fit(x, y, epochs=2, verbose=0), b.fit(x, y, epochs=2, verbose=0))
    assert len(ha.epoch) == len(hb.epoch) == 2
