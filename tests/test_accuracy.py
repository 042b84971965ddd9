"""On load_digits, Program.fit reaches keras.Model.fit's validation accuracy (within 2 points)."""
import keras
import numpy as np
import pytest

from trainer import Program

pytestmark = pytest.mark.slow


def build(cls, seed: int):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    outputs = keras.layers.Dense(10, activation="softmax")(hidden)
    model = cls(inputs=inputs, outputs=outputs)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


async def test_same_validation_accuracy_as_keras_fit(digits):
    x, y = digits
    ours, theirs = [], []
    for seed in (0, 1):
        program = build(Program, seed)
        history = await program.fit(x, y, epochs=15, batch_size=32, validation_split=0.2, seed=seed, verbose=0)
        ours.append(history.history["val_accuracy"][-1])
        model = build(keras.Model, seed)
        reference = keras.Model.fit(model, x, y, epochs=15, batch_size=32, validation_split=0.2, verbose=0)
        theirs.append(reference.history["val_accuracy"][-1])
    assert np.mean(ours) > 0.85
    assert abs(np.mean(ours) - np.mean(theirs)) <= 0.02, (ours, theirs)
