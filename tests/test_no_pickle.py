"""Files a run reads back cannot run code: backups hold JSON and arrays only."""
import glob
import importlib.util
import json
import os
import pickle

import numpy as np
import pytest

from callbacks import (BackupAndRestore, Callback, CSVLogger, EarlyStopping, Monitor, ProgramCheckpoint,
                       TerminateOnNaN)
from callbacks.backup_and_restore import BACKUP_FORMAT, global_rng_state, set_global_rng_state
from callbacks.history import History
from callbacks.safe_state import UnsafeStateError, decode, dumps, encode, loads
from conftest import BACKEND, CrashAt, make_program, weights_of


class Holds(Callback):
    """A callback whose state_dict holds whatever the test gives it."""

    def __init__(self, state):
        super().__init__()
        self.state = state
        self.loaded = None

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.loaded = state


def _meta_of(path):
    with np.load(path, allow_pickle=False) as data:
        return data["__meta__"].tobytes(), {k: data[k] for k in data.files}


def _equal(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype \
            and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and np.isnan(a):
        return isinstance(b, float) and np.isnan(b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("value", [
    {"best": float("inf"), "wait": 3, "none": None, "flag": True, "name": "x"},
    {"history": {"loss": [0.5, float("nan")], "acc": [1, 2]}, "epoch": [0, 1]},
    {"best_variables": [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros((0,), np.int64)]},
    {"tuple": (1, "a", (2.5, None)), "int_keys": {1: "one", 2: [np.ones(2)]}, "__array__": "not a marker"},
    {"scalar": np.float32(1.5), "big": np.int64(2**40)},
])
def test_state_round_trips_through_json_and_arrays(value):
    arrays = {}
    payload = dumps(encode(value, "Holds.state_dict()", arrays))
    stored = {k: np.array(v) for k, v in arrays.items()}
    back = decode(loads(payload), stored)
    expected = dict(value)
    if "scalar" in value:  # NumPy scalars become Python numbers
        expected = {"scalar": 1.5, "big": 2**40}
    assert _equal(back, expected)


@pytest.mark.parametrize("bad, key", [
    ({"fn": lambda: 1}, "['fn']"),
    ({"nested": {"deep": [1, object()]}}, "['nested']['deep'][1]"),
    ({"objects": np.array([object()], dtype=object)}, "['objects']"),
    ({"set": {1, 2}}, "['set']"),
])
def test_unsafe_state_is_refused_naming_where(bad, key):
    with pytest.raises(UnsafeStateError) as error:
        encode(bad, "MyCallback.state_dict()", {})
    assert f"MyCallback.state_dict(){key}" in str(error.value)


async def test_a_state_dict_holding_an_object_is_refused_when_the_backup_is_written(toy, tmp_path):
    holder = Holds({"ok": 1, "handle": object()})
    with pytest.raises(UnsafeStateError, match=r"Holds.*\['handle'\]"):
        await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[BackupAndRestore(str(tmp_path / "b")), holder])
    # nothing was written, the lock is released: a clean run may use the folder
    assert not glob.glob(str(tmp_path / "b" / "backup-*.npz"))
    await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[BackupAndRestore(str(tmp_path / "b"))])


async def test_backups_are_json_and_arrays(toy, tmp_path):
    backup = BackupAndRestore(str(tmp_path / "b"), save_freq=3)
    with pytest.raises(RuntimeError):
        await make_program().fit(*toy, epochs=2, verbose=0, callbacks=[backup, EarlyStopping(monitor="loss"),
                                                                       CrashAt(5)])
    payload, arrays = _meta_of(backup.backups()[0])
    meta = json.loads(payload)  # plain JSON, not a pickle
    assert meta["format"] == BACKUP_FORMAT and meta["step_count"] == 3
    assert all(a.dtype != object for a in arrays.values())


async def test_a_crafted_pickle_backup_is_refused_and_runs_nothing(toy, tmp_path):
    backup_dir = tmp_path / "b"
    backup_dir.mkdir()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps({"format": 1, "exploit": Exploit()}, protocol=pickle.HIGHEST_PROTOCOL)
    with open(backup_dir / "backup-0000000005.npz", "wb") as handle:
        np.savez(handle, __meta__=np.frombuffer(payload, dtype=np.uint8))
    with pytest.raises(ValueError, match="allow_legacy_pickle=True"):
        await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[BackupAndRestore(str(backup_dir))])
    assert not marker.exists()
    assert not os.path.exists(backup_dir / "lock")  # released: deleting the file and re-running works


async def test_a_legacy_backup_resumes_once_with_the_opt_in(toy, tmp_path):
    """A format-1 backup (pickled metadata), rewritten from a format-2 one, resumes with the
    opt-in, and the next backup is in the new format."""
    backup = BackupAndRestore(str(tmp_path / "b"), save_freq=3, delete_checkpoint=False)
    with pytest.raises(RuntimeError):
        await make_program().fit(*toy, epochs=2, verbose=0, callbacks=[backup, CrashAt(5)])
    path = backup.backups()[0]
    meta, arrays = BackupAndRestore._read(path)
    meta["format"] = 1
    meta["rng"] = {"python": __import__("random").getstate(), "numpy": np.random.get_state()}
    arrays = {k: v for k, v in arrays.items()}
    with open(path, "wb") as handle:
        np.savez(handle, __meta__=np.frombuffer(pickle.dumps(meta, protocol=4), dtype=np.uint8), **arrays)
    for older in backup.backups()[1:]:
        os.remove(older)
    resumed = BackupAndRestore(str(tmp_path / "b"), save_freq=3, delete_checkpoint=False, allow_legacy_pickle=True)
    await make_program().fit(*toy, epochs=2, verbose=0, callbacks=[resumed])
    assert resumed.restored_from == path
    assert json.loads(_meta_of(resumed.backups()[0])[0])["format"] == BACKUP_FORMAT


def test_global_rng_state_round_trips_as_arrays():
    import random

    random.seed(1)
    np.random.seed(2)
    np.random.normal()  # a cached gaussian in NumPy's state
    state = global_rng_state()
    arrays = {}
    payload = dumps(encode(state, "rng", arrays))
    expected = (random.random(), np.random.normal(), np.random.random())
    random.seed(99)
    np.random.seed(99)
    set_global_rng_state(decode(loads(payload), arrays))
    assert (random.random(), np.random.normal(), np.random.random()) == expected


async def test_every_builtin_state_round_trips_through_a_backup(toy, tmp_path):
    """Each built-in's state_dict after training is stored in the backup, and comes back
    equal through the backup's encoding."""
    builtins = [History(), EarlyStopping(monitor="loss", patience=5, restore_best_variables=True),
                ProgramCheckpoint(str(tmp_path / "m-{epoch}.weights.h5"), monitor="loss", save_variables_only=True),
                CSVLogger(str(tmp_path / "log.csv")), TerminateOnNaN()]
    if importlib.util.find_spec("mlflow") is not None:  # the jax tox env has the mlflow extra
        builtins.append(Monitor(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", log_program=False))
    backup = BackupAndRestore(str(tmp_path / "b"), delete_checkpoint=False)
    await make_program().fit(*toy, epochs=2, verbose=0, callbacks=[backup, *builtins[1:]])
    meta, _ = BackupAndRestore._read(backup.backups()[0])
    states = meta["callbacks"]
    for callback in builtins[1:]:
        key = next(k for k in states if k.startswith(type(callback).__name__))
        state = callback.state_dict()
        assert states[key].keys() == state.keys()
        arrays = {}
        payload = dumps(encode(state, key, arrays))
        assert _equal(decode(loads(payload), arrays), _plain(state)), key
    early = next(v for k, v in states.items() if k.startswith("EarlyStopping"))
    assert len(early["best_variables"]) == len(weights_of(make_program()))
    history_key = next(k for k in states if k.startswith("History"))
    assert states[history_key]["epoch"] == [0, 1] and len(states[history_key]["history"]["loss"]) == 2


def _plain(value):
    """What a state looks like after a round trip: NumPy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


async def test_resume_from_a_json_backup_is_bitwise(toy, tmp_path):
    x, y = toy
    reference = make_program()
    await reference.fit(x, y, epochs=3, verbose=0, seed=1, callbacks=[EarlyStopping(monitor="loss", patience=9)])
    backup = BackupAndRestore(str(tmp_path / "b"), save_freq=5)
    with pytest.raises(RuntimeError):
        await make_program().fit(x, y, epochs=3, verbose=0, seed=1,
                                 callbacks=[backup, EarlyStopping(monitor="loss", patience=9), CrashAt(13)])
    resumed = make_program()
    await resumed.fit(x, y, epochs=3, verbose=0, seed=1,
                      callbacks=[BackupAndRestore(str(tmp_path / "b"), save_freq=5),
                                 EarlyStopping(monitor="loss", patience=9)])
    for a, b in zip(weights_of(reference), weights_of(resumed)):
        np.testing.assert_allclose(a, b, rtol=0, atol=0 if BACKEND == "jax" else 1e-5)  # as the crash tests


def test_load_program_keeps_keras_safe_mode(tmp_path):
    """A .keras file with a Lambda layer (its function stored as Python bytecode) is
    refused by default, as by keras.saving.load_model."""
    import keras

    from trainer import Program, load_program

    inputs = keras.Input((4,))
    program = Program(inputs=inputs, outputs=keras.layers.Lambda(lambda t: t * 2)(inputs))
    path = str(tmp_path / "lambda.keras")
    program.save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        load_program(path)
    loaded = load_program(path, safe_mode=False)
    assert loaded.count_params() == 0
