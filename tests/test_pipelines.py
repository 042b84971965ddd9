"""Input pipelines (issue 13): PyDataset workers, grain, tf.data, DataLoader, generators;
read off the event loop, errors and cancellation clean up, resumes as the README says."""
import asyncio
import multiprocessing
import threading
import time

import keras
import numpy as np
import pytest

from callbacks import BackupAndRestore, Callback
from conftest import BACKEND, CrashAt, make_program, weights_of


class Rows(keras.utils.PyDataset):
    """Batches of 32 rows of the toy data; `delay` seconds of "I/O" per batch; fails at
    index `fail_at`; records which indices it read."""

    def __init__(self, x, y, *, delay=0.0, fail_at=None, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.delay, self.fail_at = x, y, delay, fail_at
        self.read = []

    def __len__(self):
        return len(self.x) // 32

    def __getitem__(self, index):
        if index == self.fail_at:
            raise KeyError(f"no batch {index} on disk")
        time.sleep(self.delay)
        self.read.append(index)
        rows = slice(index * 32, (index + 1) * 32)
        return self.x[rows], self.y[rows]


def our_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("asyncfit-read") or
            t.name.startswith("asyncfit-pydataset")]


def assert_nothing_left():
    deadline = time.monotonic() + 10
    while (our_threads() or multiprocessing.active_children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert our_threads() == []
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("workers, processes", [(4, False), (2, True)])
async def test_pydataset_workers_train_as_one_reader_does(toy, workers, processes):
    x, y = toy
    reference = make_program()
    await reference.fit(Rows(x, y), epochs=2, verbose=0, shuffle=True, seed=3)
    program = make_program()
    dataset = Rows(x, y, workers=workers, use_multiprocessing=processes, max_queue_size=3)
    history = await program.fit(dataset, epochs=2, verbose=0, shuffle=True, seed=3)
    assert len(history.history["loss"]) == 2
    for ours, theirs in zip(weights_of(program), weights_of(reference)):
        np.testing.assert_array_equal(ours, theirs)  # same batches in the same order
    if not processes:
        assert dataset.read[0] == 0  # the first batch, read once to check the program before any step
        assert sorted(dataset.read[1:]) == sorted(list(range(8)) * 2)
    assert_nothing_left()
    assert program.step_count == 16


async def test_pydataset_honours_max_queue_size(toy):
    x, y = toy
    started = threading.Event()

    class Slow(Rows):
        def __getitem__(self, index):
            started.set()
            return super().__getitem__(index)

    dataset = Slow(x, y, workers=2, max_queue_size=2)
    reads_before_first_step = []

    class Look(Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                time.sleep(0.3)  # the readers run ahead meanwhile, as far as they may
                reads_before_first_step.append(len(dataset.read))

    await make_program().fit(dataset, epochs=1, verbose=0, callbacks=[Look()])
    # The check's read, 1 batch taken by the step, 1 ready in the reader's queue, 2 in the pool.
    assert reads_before_first_step[0] <= 1 + 1 + 1 + 2
    assert_nothing_left()


@pytest.mark.parametrize("workers, processes", [(1, False), (3, False), (2, True)])
async def test_a_failing_read_surfaces_unchanged_and_cleans_up(toy, workers, processes):
    x, y = toy
    errors = []

    class Seen(Callback):
        def on_train_error(self, error):
            errors.append(error)

    program = make_program()
    dataset = Rows(x, y, fail_at=5, workers=workers, use_multiprocessing=processes)
    with pytest.raises(KeyError, match="no batch 5 on disk"):
        await program.fit(dataset, epochs=2, verbose=0, shuffle=False, callbacks=[Seen()])
    assert len(errors) == 1 and isinstance(errors[0], KeyError)
    assert program.step_count == 5  # batches 0-4 trained, in order
    assert_nothing_left()
    await program.fit(x, y, epochs=1, verbose=0)  # still usable


@pytest.mark.parametrize("workers, processes", [(1, False), (2, True)])
async def test_cancel_while_a_batch_loads_cleans_up_and_keeps_the_program(toy, workers, processes):
    x, y = toy
    program = make_program()
    task = asyncio.ensure_future(program.fit(Rows(x, y, delay=0.2, workers=workers, use_multiprocessing=processes),
                                             epochs=3, verbose=0))
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_nothing_left()
    before = program.step_count
    await program.fit(x, y, epochs=1, verbose=0)
    assert program.step_count == before + 8


async def test_a_blocking_generator_does_not_block_the_event_loop(toy):
    x, y = toy

    def slow_batches():
        for i in range(6):
            time.sleep(0.25)  # a blocking read
            yield x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]

    program = make_program()
    await program.fit(x, y, epochs=1, verbose=0)  # compiled: what is left to see is the reads
    gaps, last = [], time.perf_counter()
    done = False

    async def ticker():
        nonlocal last
        while not done:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    await program.fit(slow_batches(), epochs=1, verbose=0)
    done = True
    await tick
    assert sum(gaps) > 1.2 and len(gaps) > 40  # the ticker ran all along
    assert max(gaps) < 0.2  # a read takes 0.25 s: it never held the loop


async def test_evaluate_and_predict_read_a_pydataset_with_workers(toy):
    x, y = toy
    program = make_program()
    await program.fit(x, y, epochs=1, verbose=0)
    expected = await program.evaluate(x, y, verbose=0)
    got = await program.evaluate(Rows(x, y, workers=3), verbose=0)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    predicted = await program.predict(Rows(x, y, workers=2, use_multiprocessing=True), verbose=0)
    np.testing.assert_allclose(predicted, await program.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert_nothing_left()


async def test_infinite_pydataset_needs_steps_per_epoch_and_runs_on(toy):
    x, y = toy

    class Endless(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.read = []

        @property
        def num_batches(self):
            return None

        def __getitem__(self, index):
            self.read.append(index)
            i = index % 8
            return x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]

    with pytest.raises(ValueError, match="steps_per_epoch"):
        await make_program().fit(Endless(), epochs=1, verbose=0)
    dataset = Endless()
    await make_program().fit(dataset, epochs=2, steps_per_epoch=3, verbose=0)
    assert dataset.read == [0, 0, 1, 2, 3, 4, 5]  # the check's read, then a running index, as Keras'


async def test_bad_pydataset_settings_are_refused_before_any_step(toy):
    x, y = toy
    program = make_program()
    dataset = Rows(x, y)
    dataset._workers = -1
    with pytest.raises(ValueError, match="workers=-1"):
        await program.fit(dataset, epochs=1, verbose=0)
    assert program.step_count == 0


# -- resuming --------------------------------------------------------------------------------------

async def _crash_then_resume(make_data, tmp_path, *, crash_at=11, epochs=2, **fit_kwargs):
    backup_dir = str(tmp_path / "backup")
    program = make_program()
    with pytest.raises(RuntimeError, match="simulated crash"):
        await program.fit(make_data(), epochs=epochs, verbose=0,
                          callbacks=[BackupAndRestore(backup_dir, save_freq=1), CrashAt(crash_at)], **fit_kwargs)
    resumed = make_program()
    await resumed.fit(make_data(), epochs=epochs, verbose=0, callbacks=[BackupAndRestore(backup_dir, save_freq=1)],
                      **fit_kwargs)
    reference = make_program()
    await reference.fit(make_data(), epochs=epochs, verbose=0, **fit_kwargs)
    return resumed, reference


async def test_pydataset_with_workers_resumes_exactly(toy, tmp_path):
    x, y = toy
    resumed, reference = await _crash_then_resume(lambda: Rows(x, y, workers=3), tmp_path, shuffle=True, seed=5)
    assert resumed.step_count == reference.step_count == 16
    for ours, theirs in zip(weights_of(resumed), weights_of(reference)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


async def test_a_reiterable_resumes_at_its_batch(toy, tmp_path):
    x, y = toy
    batches = [(x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]) for i in range(8)]
    resumed, reference = await _crash_then_resume(lambda: batches, tmp_path)
    assert resumed.step_count == 16
    for ours, theirs in zip(weights_of(resumed), weights_of(reference)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


async def test_a_generator_restarts_the_epoch_with_a_warning(toy, tmp_path):
    x, y = toy

    def batches():
        for _ in range(2):
            for i in range(8):
                yield x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]

    backup_dir = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="simulated crash"):
        await make_program().fit(batches(), epochs=2, steps_per_epoch=8, verbose=0,
                                 callbacks=[BackupAndRestore(backup_dir, save_freq=1), CrashAt(11)])
    resumed = make_program()
    restored = []

    class Restored(Callback):
        def on_train_begin(self, logs=None):
            restored.append(self._program.step_count)  # after BackupAndRestore put the backup back

    with pytest.warns(UserWarning, match="one-shot iterator.*starts again from its first batch"):
        await resumed.fit(batches(), epochs=2, steps_per_epoch=8, verbose=0,
                          callbacks=[BackupAndRestore(backup_dir, save_freq=1), Restored()])
    assert 8 < restored[0] < 16  # the backup is in the middle of epoch 2 (index 1) ...
    assert resumed.step_count == restored[0] + 8  # ... which trained again from its first batch


# -- other libraries' pipelines ----------------------------------------------------------------------

def _grain_datasets(x, y):
    grain = pytest.importorskip("grain")
    rows = grain.MapDataset.source(list(range(len(x)))).map(lambda i: (x[i], y[i]))
    map_ds = rows.batch(32)
    iter_ds = rows.to_iter_dataset().batch(32)
    loader = grain.DataLoader(
        data_source=_Pairs(x, y), sampler=grain.samplers.IndexSampler(len(x), num_epochs=1, shuffle=True, seed=0),
        operations=[grain.transforms.Batch(32)], worker_count=0)
    return {"MapDataset": map_ds, "IterDataset": iter_ds, "DataLoader": loader}


class _Pairs:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __repr__(self):  # grain checks that a state comes from the same source by its repr
        return f"_Pairs({len(self.x)} rows)"


@pytest.mark.parametrize("kind", ["MapDataset", "IterDataset", "DataLoader"])
async def test_grain_trains_and_resumes_from_its_iterator_state(toy, tmp_path, kind):
    x, y = toy
    _grain_datasets(x, y)  # skips without grain
    resumed, reference = await _crash_then_resume(lambda: _grain_datasets(x, y)[kind], tmp_path)
    assert resumed.step_count == reference.step_count == 16
    for ours, theirs in zip(weights_of(resumed), weights_of(reference)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    assert_nothing_left()


async def test_grain_state_is_in_the_backup(toy, tmp_path):
    x, y = toy
    datasets = _grain_datasets(x, y)
    from callbacks.safe_state import loads

    backup_dir = tmp_path / "backup"
    with pytest.raises(RuntimeError, match="simulated crash"):
        await make_program().fit(datasets["IterDataset"], epochs=2, verbose=0,
                                 callbacks=[BackupAndRestore(str(backup_dir), save_freq=1), CrashAt(11)])
    newest = max(backup_dir.glob("*.npz"), key=lambda p: p.stat().st_mtime)
    with np.load(newest, allow_pickle=False) as archive:
        meta = loads(archive["__meta__"].tobytes())
    assert meta["epoch"] == 1 and meta["batch"] > 0 and meta["source_state"] is not None


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.data: the tensorflow env (Keras takes it on every backend)")
async def test_tf_data_trains_evaluates_and_resumes(toy, tmp_path):
    import tensorflow as tf

    x, y = toy
    make = lambda: tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # noqa: E731
    resumed, reference = await _crash_then_resume(make, tmp_path)
    assert resumed.step_count == 16
    for ours, theirs in zip(weights_of(resumed), weights_of(reference)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    logs = await resumed.evaluate(make(), verbose=0)
    assert np.isfinite(logs["loss"])
    assert_nothing_left()


async def test_torch_dataloader_with_worker_processes(toy, tmp_path):
    torch = pytest.importorskip("torch")
    x, y = toy
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=2)
    program = make_program()
    history = await program.fit(loader, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and program.step_count == 16
    reference = make_program()
    await reference.fit(x, y, epochs=2, verbose=0, shuffle=False, batch_size=32)
    for ours, theirs in zip(weights_of(program), weights_of(reference)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert_nothing_left()
    shuffled = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True)
    backup_dir = str(tmp_path / "b")
    with pytest.raises(RuntimeError, match="simulated crash"):
        await make_program().fit(shuffled, epochs=2, verbose=0,
                                 callbacks=[BackupAndRestore(backup_dir, save_freq=1), CrashAt(11)])
    with pytest.warns(UserWarning, match="RandomSampler draws a new order"):
        await make_program().fit(shuffled, epochs=2, verbose=0, callbacks=[BackupAndRestore(backup_dir, save_freq=1)])
