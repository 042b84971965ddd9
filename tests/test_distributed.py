"""keras.distribution on JAX: sharded batches and state, several processes, sharded backups.

Each run is a real process (tests/scripts/distributed_fit.py) with CPU devices faked by
XLA_FLAGS, which must be set before JAX starts; several processes join through
`keras.distribution.initialize` on a local port, and are killed with real signals.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import BACKEND

pytestmark = [pytest.mark.slow, pytest.mark.jax_only,
              pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX")]

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "distributed_fit.py")
TIMEOUT = 240


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _command(out, *args) -> list:
    return [sys.executable, SCRIPT, str(out), *map(str, args)]


def run_one(out, *args) -> dict:
    done = subprocess.run(_command(out, *args), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return load(out)


def start_two(tmp_path, name: str, *args, extra=((), ())) -> list:
    """Two processes x 2 CPU devices; `extra` adds arguments to process 0 and 1."""
    port = _port()
    return [subprocess.Popen(_command(tmp_path / f"{name}-{i}.npz", "--processes", 2, "--process-id", i,
                                      "--port", port, "--devices", 2, *args, *extra[i]),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)]


def finish(processes) -> list[str]:
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT)[0])
    finally:
        for process in processes:
            process.kill()
    return outputs


def load(path) -> dict:
    with np.load(path) as data:
        result = json.loads(data["info"].tobytes())
        result["weights"] = [data[f"arr_{i}"] for i in range(sum(k.startswith("arr_") for k in data.files))]
        result["predicted"] = data["predicted"]
    return result


def assert_close(a: dict, b: dict, exact: bool = False) -> None:
    assert len(a["weights"]) == len(b["weights"])
    for wa, wb in zip(a["weights"], b["weights"]):
        if exact:
            np.testing.assert_array_equal(wa, wb)
        else:
            np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["predicted"], b["predicted"], rtol=1e-5, atol=1e-5)
    for key in a["evaluate"]:
        np.testing.assert_allclose(a["evaluate"][key], b["evaluate"][key], rtol=1e-5)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    return run_one(tmp_path_factory.mktemp("one") / "r.npz", "--layout", "none", "--devices", 1)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """2 processes x 2 devices, DataParallel, uninterrupted; process 0 alone writes the CSV
    and the `.keras` checkpoint, both write their shards of a
    ProgramCheckpoint(save_variables_only) `.orbax` folder."""
    tmp = tmp_path_factory.mktemp("two")
    outputs = finish(start_two(tmp, "full", "--layout", "data", "--checkpoint", tmp / "variables.orbax",
                               "--keras-checkpoint", tmp / "program.keras", extra=(("--csv", tmp / "log-0.csv"), ("--csv", tmp / "log-1.csv"))))
    assert all(os.path.exists(tmp / f"full-{i}.npz") for i in range(2)), outputs
    return tmp, [load(tmp / f"full-{i}.npz") for i in range(2)]


def test_data_parallel_shards_the_batch_inside_the_step_and_matches_one_device(tmp_path, one_device):
    sharded = run_one(tmp_path / "data.npz", "--layout", "data", "--devices", 4)
    # Inside the compiled step the batch is split along the batch axis (the short last
    # batch of 6 rows does not split over 4 devices: it is computed whole on each).
    assert "P('batch',)" in sharded["seen"]
    assert one_device["seen"] == ["single"]
    assert sharded["devices"] == 4 and sharded["step_count"] == one_device["step_count"] == 51
    assert_close(sharded, one_device)


def test_step_stages_reject_and_retry_run_sharded(tmp_path, one_device):
    staged = run_one(tmp_path / "staged.npz", "--layout", "data", "--devices", 4, "--staged")
    assert "P('batch',)" in staged["seen"]
    assert_close(staged, one_device)  # every first attempt rejected: the retried updates are the same


def test_model_parallel_kernel_stays_sharded_and_its_backup_resumes_exactly(tmp_path, one_device):
    full = run_one(tmp_path / "full.npz", "--layout", "model", "--devices", 4)
    assert full["kernel_spec"] == "PartitionSpec(None, 'model')" or full["kernel_spec"] == "P(None, 'model')"
    assert "P('batch',)" in full["seen"]
    assert_close(full, one_device)

    backup = tmp_path / "backup"
    killed = subprocess.run(_command(tmp_path / "killed.npz", "--layout", "model", "--devices", 4, "--backup", backup,
                                     "--die-at-step", 20), capture_output=True, text=True, timeout=TIMEOUT)
    assert killed.returncode == -signal.SIGKILL
    names = sorted(os.listdir(backup))
    assert "backup-0000000016.npz" in names and "backup-0000000016.orbax" in names  # orbax: sharded variables
    shutil.copytree(backup, tmp_path / "backup-copy")

    resumed = run_one(tmp_path / "resumed.npz", "--layout", "model", "--devices", 4, "--backup", backup)
    assert resumed["kernel_spec"] == full["kernel_spec"]
    assert_close(resumed, full, exact=True)
    assert not os.path.exists(backup)  # a finished run deletes its backups

    # The same backup onto another layout (DataParallel: the kernel replicated): orbax
    # reads the slices each device needs; equal within float tolerance.
    other = run_one(tmp_path / "other.npz", "--layout", "data", "--devices", 4, "--backup", tmp_path / "backup-copy")
    assert other["kernel_spec"] == "P(None, None)" or other["kernel_spec"] == "PartitionSpec(None, None)"
    assert_close(other, full)


def test_two_processes_equal_one_process_and_only_process_0_writes(tmp_path, two_processes, one_device):
    tmp, (first, second) = two_processes
    assert first["process_count"] == second["process_count"] == 2 and first["devices"] == 4
    assert "P('batch',)" in first["seen"]
    assert_close(first, second, exact=True)  # History, logs, predictions: the same everywhere
    assert first["loss"] == second["loss"] and first["evaluate"] == second["evaluate"]
    four = run_one(tmp_path / "four.npz", "--layout", "data", "--devices", 4)
    assert_close(first, four)
    assert_close(first, one_device)
    assert os.path.exists(tmp / "log-0.csv") and not os.path.exists(tmp / "log-1.csv")
    with open(tmp / "log-0.csv") as handle:
        assert len(handle.read().strip().splitlines()) == 1 + 3  # a header and three epochs
    # The .keras checkpoint (written by process 0 alone, from the replicated variables).
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(tmp / "program.keras") as archive:
        with h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
            np.testing.assert_array_equal(weights["layers/dense/vars/0"][()], first["weights"][0])


def test_an_orbax_variables_checkpoint_loads_onto_another_layout(tmp_path, two_processes):
    tmp, (first, _) = two_processes
    # Written by two processes (DataParallel); read by one, with the kernel sharded over "model".
    loaded = run_one(tmp_path / "loaded.npz", "--layout", "model", "--devices", 4, "--load", tmp / "variables.orbax")
    for saved, read in zip(first["weights"], loaded["weights"]):
        np.testing.assert_array_equal(saved, read)
    assert loaded["kernel_spec"] in ("P(None, 'model')", "PartitionSpec(None, 'model')")


def test_a_drawn_seed_is_agreed_by_every_process(tmp_path):
    outputs = finish(start_two(tmp_path, "drawn", "--layout", "data", "--seed", -1, "--epochs", 1))
    first, second = (load(tmp_path / f"drawn-{i}.npz") for i in range(2))
    assert_close(first, second, exact=True), outputs


def test_sigkill_one_process_then_restart_both_resumes_exactly(tmp_path, two_processes):
    _, (full, _) = two_processes
    backup = tmp_path / "backup"
    processes = start_two(tmp_path, "run", "--layout", "data", "--backup", backup, extra=((), ("--die-at-step", 20)))
    assert processes[1].wait(timeout=TIMEOUT) == -signal.SIGKILL
    processes[0].kill()  # left waiting for its peer in a step: the launcher stops it
    finish(processes)
    assert "backup-0000000016.npz" in os.listdir(backup)

    outputs = finish(start_two(tmp_path, "run", "--layout", "data", "--backup", backup))
    for i in range(2):
        assert os.path.exists(tmp_path / f"run-{i}.npz"), outputs[i][-3000:]
        assert_close(load(tmp_path / f"run-{i}.npz"), full, exact=True)


def test_sigterm_to_one_process_stops_both_with_one_backup(tmp_path, two_processes):
    _, (full, _) = two_processes
    backup = tmp_path / "backup"
    processes = start_two(tmp_path, "run", "--layout", "data", "--backup", backup, "--save-freq", 1000,
                          extra=((), ("--term-at-step", 20)))
    outputs = finish(processes)
    for process, output in zip(processes, outputs):
        assert process.returncode == 1, output[-3000:]
        assert "TrainingInterrupted" in output
    # They agreed at step 32 (every 16 steps) and backed up there together.
    assert [n for n in sorted(os.listdir(backup)) if n.endswith(".npz")] == ["backup-0000000032.npz"]
    outputs = finish(start_two(tmp_path, "run", "--layout", "data", "--backup", backup))
    for i in range(2):
        assert os.path.exists(tmp_path / f"run-{i}.npz"), outputs[i][-3000:]
        assert_close(load(tmp_path / f"run-{i}.npz"), full, exact=True)


def test_callbacks_that_differ_between_processes_and_a_stop_asked_on_one(tmp_path):
    # Process 0 has step stages that reject every first attempt; process 1 a per-batch
    # hook that asks to stop after step 20. Each step is a collective, so they agree on
    # the kind of step, on every retry, and on the stop.
    outputs = finish(start_two(tmp_path, "stop", "--layout", "data",
                               extra=(("--staged",), ("--stop-at-step", 20))))
    first, second = (load(tmp_path / f"stop-{i}.npz") for i in range(2))
    # Agreed at the next multiple of 16 steps: both end there, normally, with the same state.
    assert first["step_count"] == second["step_count"] == 32, outputs
    assert_close(first, second, exact=True)


def test_a_program_built_before_the_distribution_is_refused_by_name(tmp_path):
    code = f"""
import os, sys, asyncio
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
import jax, keras, numpy as np
from trainer import Program
inputs = keras.Input((4,))
program = Program(inputs, keras.layers.Dense(1, name="head")(inputs))
program.compile(optimizer="sgd", loss="mse")
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
try:
    asyncio.run(program.fit(np.ones((8, 4)), np.ones((8, 1)), verbose=0))
except ValueError as error:
    print("ERROR", error)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, "KERAS_BACKEND": "jax"})
    assert "ERROR the variable 'head/kernel' lives on one device" in done.stdout, done.stderr[-3000:]
    assert "set_distribution" in done.stdout


async def test_orbax_variables_on_one_device_round_trip_and_keep_the_previous_folder(tmp_path, toy):
    from conftest import make_program

    x, y = toy
    program = make_program()
    await program.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "vars.orbax")
    program.save_variables(path)
    first = [np.array(w) for w in program.get_weights()]
    await program.fit(x, y, epochs=1, verbose=0)
    program.save_variables(path)  # replaces the folder: committed under a new name, then renamed
    assert sorted(os.listdir(tmp_path)) == ["vars.orbax"]
    other = make_program(seed=3)
    other.load_variables(path)
    for a, b in zip(program.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other.get_weights()))
    import keras

    from trainer import Program

    inputs = keras.Input((8,))
    bigger = Program(inputs, keras.layers.Dense(1)(keras.layers.Dense(4)(keras.layers.Dense(16)(inputs))))
    with pytest.raises(ValueError, match="holds 4 variables; this program has 6"):
        bigger.load_variables(path)
