"""Crash safety with real processes: SIGKILL at random moments, SIGTERM, a second signal.

The script (tests/scripts/resumable_train.py) trains with BackupAndRestore every 7 steps,
ProgramCheckpoint, CSVLogger and EarlyStopping. Killed and restarted until it finishes,
it must end exactly where an uninterrupted run ends: on JAX CPU bitwise (same compiled
steps, same inputs, same order); on other backends within float32 round-off.
"""
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import BACKEND

pytestmark = pytest.mark.slow

SCRIPT = str(pathlib.Path(__file__).parent / "scripts" / "resumable_train.py")
EPOCHS = "12"


def start(workdir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SCRIPT, str(workdir), EPOCHS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_training(proc) -> bool:
    """True once the script announces its first step; False if it ended first."""
    for line in proc.stdout:
        if line.strip() == "TRAINING":
            return True
    return False


def run_to_end(workdir) -> None:
    proc = start(workdir)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def results(workdir) -> tuple[list, dict]:
    with np.load(os.path.join(workdir, "final.npz")) as data:
        variables = [data[f"arr_{i}"] for i in range(len(data.files))]
    with open(os.path.join(workdir, "result.json")) as handle:
        return variables, json.load(handle)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    run_to_end(workdir)
    return results(workdir)


def assert_same_run(workdir, reference):
    ref_vars, ref = reference
    variables, got = results(workdir)
    for a, b in zip(variables, ref_vars):
        if BACKEND == "jax":
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert got["epochs"] == ref["epochs"]  # the History holds every epoch once
    assert got["step_count"] == ref["step_count"]
    assert (got["stopped_epoch"], got["wait"]) == (ref["stopped_epoch"], ref["wait"])  # patience carried over
    np.testing.assert_allclose(got["history"]["val_loss"], ref["history"]["val_loss"], rtol=1e-5)
    frame = pd.read_csv(os.path.join(workdir, "run.csv"))
    assert list(frame["epoch"]) == ref["epochs"]  # one row per epoch
    np.testing.assert_allclose(frame["val_accuracy"], ref["history"]["val_accuracy"], rtol=1e-5)
    from trainer import load_program

    best = load_program(os.path.join(workdir, "best.keras"))
    assert best.predict_on_batch(np.zeros((1, 64), "float32")).shape == (1, 10)
    # a clean end removes the backups, the lock and then the emptied folder, as Keras does
    assert not os.path.exists(os.path.join(workdir, "backup"))


def test_sigkill_at_random_moments_then_resume(tmp_path, reference):
    rng = random.Random(20261122)
    kills = 0
    while True:
        proc = start(tmp_path)
        announced = wait_for_training(proc)
        if not announced or kills >= 10:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            break
        time.sleep(rng.uniform(0.02, 0.35))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if proc.returncode == 0:
            break  # it finished before the kill landed
        kills += 1
        csv = tmp_path / "run.csv"
        if csv.exists():
            pd.read_csv(csv)  # readable after a kill at any moment
    assert kills >= 10
    assert_same_run(tmp_path, reference)


def test_sigterm_finishes_the_step_backs_up_and_exits_within_10s(tmp_path, reference):
    proc = start(tmp_path)
    assert wait_for_training(proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert proc.returncode != 0
    assert "TrainingInterrupted" in err and "SIGTERM received" in err
    assert [f for f in os.listdir(tmp_path / "backup") if f.startswith("backup-")]
    assert not (tmp_path / "backup" / "lock").exists()  # cleanup ran
    run_to_end(tmp_path)
    assert_same_run(tmp_path, reference)


def test_a_second_signal_ends_the_process_at_once(tmp_path):
    proc = start(tmp_path)
    assert wait_for_training(proc)
    # Two pending signals of one kind coalesce in the kernel: send two kinds back to back.
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    # Pending signals are delivered lowest number first: either may be "the second".
    assert proc.returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM)
    assert "TrainingInterrupted" not in err  # it ended at once, without the graceful path
