"""Program.save / save_variables: after the first save, the file Keras writes, without Keras' walk."""
import json
import zipfile

import keras
import numpy as np
import pytest
from keras.src.saving import saving_lib

from conftest import make_program, weights_of
from trainer import Program, load_program
from trainer import keras_saving


def _entries(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: (archive.read(info), info.compress_type, info.external_attr)
                for info in archive.infolist()}


def _assert_same_archive(ours, keras_own) -> None:
    ours, keras_own = _entries(ours), _entries(keras_own)
    assert list(ours) == list(keras_own) == ["metadata.json", "config.json", "model.weights.h5"]
    assert ours["model.weights.h5"] == keras_own["model.weights.h5"]  # byte for byte
    assert ours["config.json"] == keras_own["config.json"]
    assert json.loads(ours["metadata.json"][0]).keys() == json.loads(keras_own["metadata.json"][0]).keys()
    assert [entry[1:] for entry in ours.values()] == [entry[1:] for entry in keras_own.values()]


def _no_walk(monkeypatch) -> None:
    def walk(*args, **kwargs):
        raise AssertionError("Keras' saving walk ran")

    monkeypatch.setattr(saving_lib, "_save_state", walk)


async def test_later_saves_write_what_keras_writes_without_walking(tmp_path, toy, monkeypatch):
    x, y = toy
    program = make_program(optimizer="adam")
    await program.fit(x, y, epochs=1, verbose=0)
    program.save(str(tmp_path / "first.keras"))  # records the layout (runs the walk once)
    program.save_variables(str(tmp_path / "first.weights.h5"))  # its own (HDF5 on disk lays out differently)
    await program.fit(x, y, epochs=2, verbose=0)

    with monkeypatch.context() as patch:
        _no_walk(patch)
        program.save(str(tmp_path / "ours.keras"))
        program.save_variables(str(tmp_path / "ours.weights.h5"))
    keras.Model.save(program, str(tmp_path / "keras.keras"))
    keras.Model.save_weights(program, str(tmp_path / "keras.weights.h5"))

    _assert_same_archive(tmp_path / "ours.keras", tmp_path / "keras.keras")
    assert (tmp_path / "ours.weights.h5").read_bytes() == (tmp_path / "keras.weights.h5").read_bytes()
    first, later = _entries(tmp_path / "first.keras"), _entries(tmp_path / "ours.keras")
    assert first["model.weights.h5"] != later["model.weights.h5"]  # trained since: new values were written

    loaded = load_program(str(tmp_path / "ours.keras"))
    np.testing.assert_array_equal(await loaded.predict(x, verbose=0), await program.predict(x, verbose=0))
    for mine, theirs in zip(program.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert int(np.asarray(loaded.optimizer.iterations)) == int(np.asarray(program.optimizer.iterations)) > 0

    fresh = make_program(optimizer="adam", seed=5)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_variables(str(tmp_path / "ours.weights.h5"))
    assert all(np.array_equal(a, b) for a, b in zip(weights_of(fresh), weights_of(program)))
    for mine, theirs in zip(program.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


class Growing(Program):
    """A subclassed program that may gain a layer after it was first saved."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.head = keras.layers.Dense(1, activation="sigmoid")

    def call(self, x, training=False):
        h = self.hidden(x)
        if hasattr(self, "extra"):
            h = h + self.extra(h)
        return self.head(h)


async def test_a_program_that_gains_or_swaps_variables_is_walked_again(tmp_path, toy):
    x, y = toy
    keras.utils.set_random_seed(0)
    program = Growing()
    program.compile(optimizer="adam", loss="binary_crossentropy")
    await program.fit(x, y, epochs=1, verbose=0)
    program.save(str(tmp_path / "before.keras"))
    first_layout = program.__dict__[keras_saving._LAYOUT_KEY][True]

    program._tracker.unlock()  # Keras forbids new state after build unless asked; a layout must not care
    program.extra = keras.layers.Dense(8)  # new variables, unknown to the recorded layout
    program.extra.build((None, 8))
    program.extra.kernel.assign(np.full((8, 8), 0.25, "float32"))
    program.save(str(tmp_path / "grown.keras"))
    keras.Model.save(program, str(tmp_path / "grown_by_keras.keras"))
    _assert_same_archive(tmp_path / "grown.keras", tmp_path / "grown_by_keras.keras")
    assert program.__dict__[keras_saving._LAYOUT_KEY][True] is not first_layout

    program.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="binary_crossentropy")  # new optimizer
    await program.fit(x, y, epochs=1, verbose=0)
    program.save(str(tmp_path / "new_optimizer.keras"))
    keras.Model.save(program, str(tmp_path / "new_optimizer_by_keras.keras"))
    _assert_same_archive(tmp_path / "new_optimizer.keras", tmp_path / "new_optimizer_by_keras.keras")


@keras.saving.register_keras_serializable(package="asyncfit_tests")
class Doubled(keras.layers.Layer):
    """Saves a computed array, not its variable: the layout can't follow it."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale

    def save_own_variables(self, store):
        store["0"] = 2 * np.asarray(keras.ops.convert_to_numpy(self.scale))

    def load_own_variables(self, store):
        self.scale.assign(store["0"] / 2)


@keras.saving.register_keras_serializable(package="asyncfit_tests")
class WithAssets(keras.layers.Layer):
    """Writes a file beside the variables, as lookup layers write their vocabulary."""

    def call(self, x):
        return x

    def save_assets(self, folder):
        with open(f"{folder}/note.txt", "w") as handle:
            handle.write("kept")

    def load_assets(self, folder):
        with open(f"{folder}/note.txt") as handle:
            self.note = handle.read()


@pytest.mark.parametrize("layer", [Doubled, WithAssets])
async def test_programs_saving_more_than_their_variables_are_saved_by_keras(tmp_path, toy, layer):
    x, y = toy
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    special = layer()
    program = Program(inputs=inputs, outputs=keras.layers.Dense(1, activation="sigmoid")(special(inputs)))
    program.compile(optimizer="adam", loss="binary_crossentropy")
    await program.fit(x, y, epochs=1, verbose=0)
    program.save(str(tmp_path / "first.keras"))
    assert program.__dict__[keras_saving._LAYOUT_KEY] == {True: keras_saving._NOT_REPLAYABLE}
    if layer is Doubled:
        special.scale.assign(np.arange(8, dtype="float32"))
    program.save(str(tmp_path / "second.keras"))
    loaded = load_program(str(tmp_path / "second.keras"))
    np.testing.assert_allclose(await loaded.predict(x, verbose=0), await program.predict(x, verbose=0), atol=1e-6)
    if layer is WithAssets:
        assert loaded.layers[1].note == "kept"
    else:
        np.testing.assert_array_equal(np.asarray(loaded.layers[1].scale), np.arange(8))


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")  # the unbuilt file, as Keras warns
async def test_unbuilt_optimizer_then_built(tmp_path, toy):
    """The first save before any step (no optimizer variables yet), the next after training."""
    x, y = toy
    program = make_program(optimizer="adam")
    program.save(str(tmp_path / "unbuilt.keras"))
    assert load_program(str(tmp_path / "unbuilt.keras")).count_params() == program.count_params()
    await program.fit(x, y, epochs=1, verbose=0)
    program.save(str(tmp_path / "trained.keras"))
    keras.Model.save(program, str(tmp_path / "trained_by_keras.keras"))
    _assert_same_archive(tmp_path / "trained.keras", tmp_path / "trained_by_keras.keras")


async def test_cached_skip_sets_spare_keras_save_its_reference_objects_and_change_nothing(tmp_path, toy, monkeypatch):
    """Keras 3.15 caches its attribute skip sets under a key it never reads; the cache stores
    them where Keras looks, so Keras' own saving walk stops building reference layers."""
    from keras.src.backend.common import global_state
    from keras.src.layers.layer import Layer

    x, y = toy
    program = make_program(optimizer="adam")
    await program.fit(x, y, epochs=1, verbose=0)
    for key in keras_saving.SKIPSET_KEYS.values():
        global_state.set_global_attribute(key, None)  # as after clear_session
    keras.Model.save(program, str(tmp_path / "by_keras.keras"))  # Keras alone: fresh skip sets
    keras_saving.cache_keras_skipsets()

    built = []
    original_init = Layer.__init__

    def counting_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(Layer, "__init__", counting_init)
    keras.Model.save(program, str(tmp_path / "cached.keras"))
    monkeypatch.undo()
    assert built == []  # Keras alone builds a reference Layer per walked layer kind, every save

    by_keras = _entries(tmp_path / "by_keras.keras")["model.weights.h5"][0]
    cached = _entries(tmp_path / "cached.keras")["model.weights.h5"][0]
    assert by_keras == cached and len(cached) > 10_000
    np.testing.assert_allclose(await load_program(str(tmp_path / "cached.keras")).predict(x, verbose=0),
                               await program.predict(x, verbose=0), atol=1e-6)
