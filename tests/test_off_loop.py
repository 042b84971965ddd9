"""Who runs where: torch and TensorFlow steps run off the event loop's thread, the loop
only awaits, hooks still run on it in order, and the results do not depend on it."""
import asyncio
import threading
import time

import keras
import numpy as np
import pytest

from callbacks import Callback
from trainer import Program

BACKEND = keras.backend.backend()
SLOW_STEP_S = 0.25


class RecordThread(keras.layers.Layer):
    """Identity that notes the thread running it (each eager call; a trace on TF/JAX)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.threads = set()

    def call(self, x):
        self.threads.add(threading.get_ident())
        return x


class Sleep(keras.layers.Layer):
    """Identity that blocks its thread for SLOW_STEP_S on every call (torch, TensorFlow)."""

    def call(self, x):
        def slow(value):
            time.sleep(SLOW_STEP_S)
            return value

        if BACKEND == "tensorflow":
            import tensorflow as tf

            out = tf.stop_gradient(tf.numpy_function(slow, [x], x.dtype))
            out.set_shape(x.shape)
            return x + 0.0 * out  # gradients flow through x
        return slow(x)


def _mlp(extra=None):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    if extra is not None:
        h = extra(h)
    program = Program(inputs=inputs, outputs=keras.layers.Dense(1)(h))
    program.compile(optimizer="adam", loss="mse")
    return program


def _data(n=96):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype("float32")
    return x, x.sum(axis=1, keepdims=True).astype("float32")


class BatchThreads(Callback):
    def __init__(self):
        super().__init__()
        self.hook_threads = set()
        self.order = []

    def on_train_batch_begin(self, batch, logs=None):
        self.hook_threads.add(threading.get_ident())
        self.order.append(("begin", batch))

    def before_parameter_update(self, step, update):
        self.hook_threads.add(threading.get_ident())
        self.order.append(("before", step))

    def on_train_batch_end(self, batch, logs=None):
        self.hook_threads.add(threading.get_ident())
        self.order.append(("end", batch))


@pytest.mark.skipif(BACKEND == "jax", reason="JAX dispatches from the loop's thread asynchronously")
@pytest.mark.parametrize("with_hooks", [False, True])
async def test_steps_run_off_the_event_loop_and_hooks_on_it(with_hooks):
    recorder = RecordThread()
    program = _mlp(recorder)
    x, y = _data()
    hooks = BatchThreads()
    loop_thread = threading.get_ident()
    recorder.threads.clear()  # building the functional program called it symbolically, here
    await program.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False, callbacks=[hooks] if with_hooks else [])
    await program.evaluate(x, y, verbose=0)
    await program.predict(x, verbose=0)
    assert recorder.threads and loop_thread not in recorder.threads
    if with_hooks:
        assert hooks.hook_threads == {loop_thread}
        # per step: begin, before (step count still old), end
        assert hooks.order[:6] == [("begin", 0), ("before", 0), ("end", 0), ("begin", 1), ("before", 1), ("end", 1)]


@pytest.mark.skipif(BACKEND == "jax", reason="JAX on the CPU runs a step with a host callback inline at dispatch; "
                    "its heavy steps are dispatched asynchronously (bench/event_loop.py, heavy CNN rows)")
async def test_a_ticker_advances_while_a_slow_step_runs():
    program = _mlp(Sleep())
    x, y = _data(64)
    await program.fit(x, y, batch_size=32, epochs=1, verbose=0)  # compiles, so the next fit is warm
    ticks = []
    done = asyncio.Event()

    async def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    await program.fit(x, y, batch_size=32, epochs=2, verbose=0)
    elapsed = time.perf_counter() - started
    done.set()
    await task
    assert elapsed >= 4 * SLOW_STEP_S
    # A step blocks its thread for 250 ms; had it run on the loop's thread, the ticker
    # could tick only between steps (about 4 times in 4 steps). Generous margin for CI.
    assert len(ticks) >= 40, f"{len(ticks)} ticks in {elapsed:.2f} s"
    inside = [t for t in ticks if started + 0.05 < t < started + elapsed - 0.05]
    assert inside and max(np.diff(inside)) < SLOW_STEP_S * 0.8


async def test_results_do_not_depend_on_how_steps_are_handed_off():
    """Several steps per hand-off (no hooks), one step per hand-off (a batch hook), and the
    staged path (compute, hooks, apply) give the same variables, bitwise."""
    x, y = _data(160)
    results = []
    for callbacks in ([], [BatchThreads()], [lambda step, logs, program: True]):
        program = _mlp()
        history = await program.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=3, callbacks=callbacks)
        results.append((program.get_variables(), history.history["loss"]))
    for variables, losses in results[1:]:
        assert losses == results[0][1]
        for a, b in zip(variables, results[0][0]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(BACKEND == "jax", reason="torch and TensorFlow only")
async def test_steps_on_the_loop_thread_and_off_it_agree_bitwise():
    """The same steps run directly on the calling thread (the path before steps moved off the
    loop) give the same variables as a fit."""
    from trainer.backends import make_stepper

    x, y = _data(96)
    program = _mlp()
    await program.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False)
    reference = _mlp()
    stepper = make_stepper(reference)
    reference._check_features((x[:32], y[:32], None))
    for _ in range(2):
        stepper.reset_metrics()
        for start in range(0, 96, 32):
            stepper.train_step((x[start:start + 32], y[start:start + 32], None))
    for a, b in zip(program.get_variables(), reference.get_variables()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(BACKEND == "jax", reason="torch and TensorFlow only")
async def test_a_cancelled_fit_waits_for_its_step_and_leaves_the_program_usable():
    program = _mlp(Sleep())
    x, y = _data(64)
    task = asyncio.create_task(program.fit(x, y, batch_size=32, epochs=50, verbose=0))
    await asyncio.sleep(SLOW_STEP_S * 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    steps = program.step_count
    assert steps >= 1
    before = program.get_variables()
    await program.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert program.step_count == steps + 2
    assert any(not np.array_equal(a, b) for a, b in zip(before, program.get_variables()))
