"""Every supported data kind trains; shuffling is seeded; validation splits and named evaluators."""
import keras
import numpy as np
import pandas as pd
import pytest

from callbacks import Callback
from conftest import make_program
from trainer import Program
from trainer.data import ArraySource


class RecordBatches(Callback):
    """Records the x of every batch the step actually trained on."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_compute_update_begin(self, step, update):
        self.seen.append(np.asarray(update.batch[0]).copy())


async def test_numpy_pandas_and_lists_train_the_same(toy):
    x, y = toy
    results = []
    for data_x, data_y in [
        (x, y),
        (pd.DataFrame(x), pd.Series(y[:, 0])),
        (x.tolist(), y.tolist()),
    ]:
        program = make_program()
        history = await program.fit(data_x, data_y, epochs=2, verbose=0, seed=3)
        results.append(history.history["loss"])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5)
    np.testing.assert_allclose(results[0], results[2], rtol=1e-5)


async def test_dict_of_arrays_multi_input(toy):
    x, y = toy
    keras.utils.set_random_seed(0)
    a = keras.Input((5,), name="a")
    b = keras.Input((3,), name="b")
    merged = keras.layers.Concatenate()([keras.layers.Dense(4)(a), keras.layers.Dense(4)(b)])
    program = Program(inputs={"a": a, "b": b}, outputs=keras.layers.Dense(1, activation="sigmoid")(merged))
    program.compile(optimizer="adam", loss="binary_crossentropy")
    history = await program.fit({"a": x[:, :5], "b": x[:, 5:]}, y, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    with pytest.raises(ValueError, match="missing program input"):
        await program.fit({"a": x[:, :5]}, y, epochs=1, verbose=0)


async def test_generator_async_generator_and_pydataset(toy):
    x, y = toy

    def gen():
        for i in range(0, 256, 32):
            yield x[i:i + 32], y[i:i + 32]

    async def agen():
        for i in range(0, 256, 32):
            yield x[i:i + 32], y[i:i + 32]

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]

    reference = make_program()
    expected = (await reference.fit(x, y, epochs=1, shuffle=False, verbose=0)).history["loss"]
    for data in (gen(), agen(), Batches(), [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]):
        program = make_program()
        history = await program.fit(data, epochs=1, shuffle=False, verbose=0)
        assert program.step_count == 8, type(data)
        np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-5)


async def test_reiterable_sources_run_every_epoch_and_one_shot_generators_warn(toy):
    x, y = toy
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    program = make_program()
    await program.fit(batches, epochs=3, verbose=0)
    assert program.step_count == 12
    program = make_program()
    with pytest.warns(UserWarning, match="ran out"):
        await program.fit(iter(batches), epochs=3, verbose=0)
    assert program.step_count == 4
    program = make_program()
    await program.fit(iter(batches * 3), epochs=3, steps_per_epoch=4, verbose=0)
    assert program.step_count == 12


async def test_shuffle_with_seed_is_reproducible_and_differs_per_epoch(toy):
    x, y = toy
    orders = []
    for _ in range(2):
        recorder = RecordBatches()
        await make_program().fit(x, y, epochs=2, batch_size=256, seed=7, verbose=0, callbacks=[recorder])
        orders.append(recorder.seen)
    np.testing.assert_array_equal(orders[0][0], orders[1][0])
    np.testing.assert_array_equal(orders[0][1], orders[1][1])
    assert not np.array_equal(orders[0][0], orders[0][1])  # a new order each epoch
    assert not np.array_equal(orders[0][0], x)  # shuffled at all
    recorder = RecordBatches()
    await make_program().fit(x, y, epochs=1, batch_size=256, seed=8, verbose=0, callbacks=[recorder])
    assert not np.array_equal(recorder.seen[0], orders[0][0])  # another seed, another order
    recorder = RecordBatches()
    await make_program().fit(x, y, epochs=1, batch_size=256, shuffle=False, verbose=0, callbacks=[recorder])
    np.testing.assert_array_equal(recorder.seen[0], x)


async def test_validation_split_takes_the_last_fraction_before_shuffling(toy):
    x, y = toy
    train, val = ArraySource(x, y, batch_size=32, shuffle=True, seed=0).split(0.25)
    np.testing.assert_array_equal(val.x, x[192:])
    np.testing.assert_array_equal(train.x, x[:192])
    program = make_program()
    history = await program.fit(x, y, epochs=1, validation_split=0.25, verbose=0)
    assert program.step_count == 6  # 192 samples / 32
    expected = await program.evaluate(x[192:], y[192:], verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(expected["loss"], rel=1e-5)


async def test_named_evaluators(toy):
    x, y = toy
    seen = []

    class OnEval(Callback):
        def on_eval(self, epoch, name, metrics):
            seen.append((epoch, name, sorted(metrics)))

    program = make_program()
    history = await program.fit(
        x, y, epochs=2, verbose=0, callbacks=[OnEval()],
        validation_data={"head": (x[:64], y[:64]), "tail": (x[-64:], y[-64:])},
    )
    for key in ("val_head_loss", "val_head_accuracy", "val_tail_loss", "val_tail_accuracy"):
        assert len(history.history[key]) == 2
    assert seen == [(0, "head", ["accuracy", "loss"]), (0, "tail", ["accuracy", "loss"]),
                    (1, "head", ["accuracy", "loss"]), (1, "tail", ["accuracy", "loss"])]
    tail = await program.evaluate(x[-64:], y[-64:], verbose=0)
    assert history.history["val_tail_loss"][-1] == pytest.approx(tail["loss"], rel=1e-5)


async def test_validation_freq(toy):
    x, y = toy
    history = await make_program().fit(x, y, epochs=4, verbose=0, validation_data=(x, y), validation_freq=2)
    assert len(history.history["val_loss"]) == 2
