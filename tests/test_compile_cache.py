"""The opt-in persistent compilation cache (trainer/compile_cache.py): a second program of
the same structure, in the same process or a later one, loads its compiled steps instead
of compiling them, with bitwise the same results; bad arguments are refused before
anything is changed."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import BACKEND

TRAIN = textwrap.dedent("""
    import asyncio, json, sys
    import jax, keras, numpy as np
    from trainer import Program
    from trainer.compile_cache import enable_compile_cache

    enable_compile_cache(sys.argv[1])
    events = []
    jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype("float32")
    y = x[:, :1] * 2.0
    runs = []
    for run in range(int(sys.argv[2])):  # programs of the same structure, one after another (an Experiment's runs)
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8,))
        program = Program(inputs, keras.layers.Dense(1)(keras.layers.Dense(16, activation="tanh")(inputs)))
        program.compile(optimizer="adam", loss="mse")
        del events[:]
        history = asyncio.run(program.fit(x, y, batch_size=32, epochs=2, seed=0, verbose=0, validation_split=0.2))
        runs.append({"hits": events.count("/jax/compilation_cache/cache_hits"),
                     "misses": events.count("/jax/compilation_cache/cache_misses"),
                     "loss": history.history["loss"],
                     "weights": [np.asarray(w).tolist() for w in program.get_weights()]})
    print(json.dumps(runs))
""")


def _train(cache_dir, programs: int = 1) -> list:
    done = subprocess.run([sys.executable, "-c", TRAIN, str(cache_dir), str(programs)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["loss"] == b["loss"]
    for wa, wb in zip(a["weights"], b["weights"]):
        np.testing.assert_array_equal(np.asarray(wa), np.asarray(wb))


@pytest.mark.slow
@pytest.mark.jax_only
@pytest.mark.skipif(BACKEND != "jax", reason="XLA's persistent cache: JAX only")
def test_second_process_loads_compiled_steps(tmp_path):
    cache = tmp_path / "xla"
    first, again = _train(cache, programs=2)
    assert first["misses"] > 0 and first["hits"] == 0
    written = {entry.name.split("-")[0] for entry in cache.iterdir()}
    assert "jit_fused" in written and "jit_test" in written  # the train and test steps, kept
    # A second program of the same structure in the same process finds them too.
    assert again["hits"] >= 2 and again["misses"] == 0
    _assert_same_run(first, again)
    (second,) = _train(cache)
    assert second["hits"] >= 2 and second["misses"] == 0  # nothing compiled again
    _assert_same_run(first, second)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX only")
@pytest.mark.parametrize("bad, message", [(-1.0, "min_compile_seconds=-1.0"), ("1", "min_compile_seconds='1'"),
                                          (True, "min_compile_seconds=True")])
def test_bad_min_compile_seconds(tmp_path, bad, message):
    import jax

    from trainer.compile_cache import enable_compile_cache

    before = jax.config.jax_compilation_cache_dir
    with pytest.raises(ValueError, match=message):
        enable_compile_cache(tmp_path / "xla", min_compile_seconds=bad)
    assert jax.config.jax_compilation_cache_dir == before
    assert not (tmp_path / "xla").exists()


@pytest.mark.skipif(BACKEND != "jax", reason="JAX only")
def test_a_file_is_not_a_cache_folder(tmp_path):
    from trainer.compile_cache import enable_compile_cache

    path = tmp_path / "notes.txt"
    path.write_text("mine")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        enable_compile_cache(path)
    assert path.read_text() == "mine"


@pytest.mark.skipif(BACKEND == "jax", reason="the refusal on torch and TensorFlow")
def test_other_backends_are_told_it_is_jax_only(tmp_path):
    from trainer.compile_cache import enable_compile_cache

    with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
        enable_compile_cache(tmp_path / "xla")
    assert not (tmp_path / "xla").exists()
