"""The callback engine: hook order, step stages, reject/retry, stop and error paths."""
import asyncio

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callbacks import Callback, CallbackList, ManifestRow, StopTraining
from callbacks.callback import ALL_HOOKS
from conftest import BACKEND, make_program, weights_of

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))


class Recorder(Callback):
    """Records every hook it receives (all of them overridden)."""

    def __init__(self, log=None, name="rec"):
        super().__init__()
        self.log = log if log is not None else []
        self.name = name

    def _state_key_args(self):
        return f"[{self.name}]"


def _recording(hook):
    def record(self, *args):
        self.log.append(hook)
        return False if hook == "on_compute_update_end" else None
    return record


for _hook in ALL_HOOKS:
    setattr(Recorder, _hook, _recording(_hook))


async def test_hook_order_for_one_fit(toy):
    x, y = toy
    rec = Recorder()
    await make_program().fit(x[:64], y[:64], epochs=2, batch_size=32, verbose=0, callbacks=[rec],
                             validation_data=(x[:32], y[:32]))
    per_batch = ["on_train_batch_begin", "on_compute_update_begin", "on_compute_update_end",
                 "before_parameter_update", "on_train_batch_end"]
    validation = ["on_test_begin", "on_test_batch_begin", "on_test_batch_end", "on_test_end", "on_eval"]
    epoch = ["on_epoch_begin", *per_batch, *per_batch, *validation, "on_epoch_end"]
    assert rec.log == ["on_train_begin", *epoch, *epoch, "on_train_end"]


async def test_predict_and_evaluate_hooks_pair(toy):
    x, y = toy
    rec = Recorder()
    program = make_program()
    await program.evaluate(x[:64], y[:64], batch_size=32, verbose=0, callbacks=[rec])
    await program.predict(x[:64], batch_size=32, verbose=0, callbacks=[rec])
    assert rec.log == ["on_test_begin", "on_test_batch_begin", "on_test_batch_end", "on_test_batch_begin",
                       "on_test_batch_end", "on_test_end", "on_predict_begin", "on_predict_batch_begin",
                       "on_predict_batch_end", "on_predict_batch_begin", "on_predict_batch_end", "on_predict_end"]


def test_a_hook_nobody_overrides_is_never_called(monkeypatch):
    class OnlyEpochEnd(Callback):
        def on_epoch_end(self, epoch, logs=None):
            pass

    callbacks = CallbackList([OnlyEpochEnd()])
    assert [h for h in ALL_HOOKS if callbacks.wants(h)] == ["on_epoch_end"]


async def test_unused_base_hooks_cost_nothing(monkeypatch, toy):
    def explode(*args):
        raise AssertionError("a hook nobody overrides was called")

    for hook in ALL_HOOKS:
        if hook != "on_epoch_end":
            monkeypatch.setattr(Callback, hook, explode)

    class OnlyEpochEnd(Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.seen = epoch

    cb = OnlyEpochEnd()
    await make_program().fit(*toy, epochs=2, verbose=0, callbacks=[cb])
    assert cb.seen == 1


async def test_replacing_the_batch_in_compute_update_begin(toy):
    x, y = toy
    injected = (x[:32] * 0 + 1, np.ones_like(y[:32]), None)
    losses = []

    class Inject(Callback):
        def on_compute_update_begin(self, step, update):
            update.batch = injected

        def on_compute_update_end(self, step, update):
            losses.append(float(update.loss))
            return False

    program = make_program()
    start = weights_of(program)
    await program.fit(x, y, epochs=1, batch_size=32, steps_per_epoch=1, verbose=0, callbacks=[Inject()])
    reference = make_program()
    reference.set_variables(start)
    expected = await reference.evaluate(injected[0], injected[1], verbose=0)
    assert losses[0] == pytest.approx(expected["loss"], rel=1e-5)


async def test_before_parameter_update_sees_old_variables_and_step_count(toy):
    x, y = toy
    seen = []

    class Peek(Callback):
        def before_parameter_update(self, step, update):
            seen.append((step, self.program.step_count, [w.copy() for w in self.program.get_variables()]))

        def on_train_batch_end(self, batch, logs=None):
            seen.append(("after", self.program.step_count, [w.copy() for w in self.program.get_variables()]))

    await make_program().fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[Peek()])
    befores, afters = seen[0::2], seen[1::2]
    for i, ((step, count, before), (_, after_count, after)) in enumerate(zip(befores, afters)):
        assert step == count == i and after_count == i + 1
        assert not all(np.array_equal(a, b) for a, b in zip(before, after))
        if i:
            prev_after = afters[i - 1][2]
            assert all(np.array_equal(a, b) for a, b in zip(before, prev_after))


async def test_update_exposes_loss_grads_norm_and_logs_reach_batch_logs(toy):
    x, y = toy
    batch_logs = []

    class Inspect(Callback):
        def before_parameter_update(self, step, update):
            assert update.attempt == 0 and update.batch[0].shape == (64, 8)
            grads = [np.asarray(g) for g in update.grads]
            expected_norm = np.sqrt(sum((g.astype("float64") ** 2).sum() for g in grads))
            assert float(update.grad_norm) == pytest.approx(expected_norm, rel=1e-4)
            assert np.isfinite(float(update.loss))
            update.logs["grad_norm"] = update.grad_norm

        def on_train_batch_end(self, batch, logs=None):
            batch_logs.append(dict(logs))

    await make_program().fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[Inspect()])
    assert len(batch_logs) == 4 and all("grad_norm" in logs and "loss" in logs for logs in batch_logs)


async def test_editing_grads_changes_the_update(toy):
    class ZeroGrads(Callback):
        def before_parameter_update(self, step, update):
            update.grads = [g * 0 for g in update.grads]

    program = make_program()  # plain SGD: zero gradients move nothing
    before = weights_of(program)
    await program.fit(*toy, epochs=1, verbose=0, callbacks=[ZeroGrads()])
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(program)))


class RejectPattern(Callback):
    """Rejects step s `pattern[s]` times, then accepts; counts computations."""

    def __init__(self, pattern):
        super().__init__()
        self.pattern = pattern
        self.computed = 0
        self.attempts = []

    def on_compute_update_end(self, step, update):
        self.computed += 1
        self.attempts.append((step, update.attempt))
        return update.attempt < self.pattern[step % len(self.pattern)]


class AcceptAll(Callback):
    def on_compute_update_end(self, step, update):
        return False


_PAIR = {}


def _fresh_pair():
    """Two compiled programs, reset to one starting point (compiling once keeps hypothesis fast)."""
    if not _PAIR:
        _PAIR["programs"] = [make_program(optimizer=keras.optimizers.Adam(0.01)) for _ in range(2)]
        first = _PAIR["programs"][0]
        first.optimizer.build(first.trainable_variables)
        _PAIR["start"] = weights_of(first)
        _PAIR["optimizer"] = [np.asarray(v).copy() for v in first.optimizer.variables]
    for program in _PAIR["programs"]:
        program.set_variables(_PAIR["start"])
        if not program.optimizer.built:
            program.optimizer.build(program.trainable_variables)
        for v, value in zip(program.optimizer.variables, _PAIR["optimizer"]):
            v.assign(value)
        program.step_count = 0
    return _PAIR["programs"]


@given(pattern=st.lists(st.integers(0, 3), min_size=1, max_size=6))
@SETTINGS
def test_rejected_attempts_leave_no_trace(pattern):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    rejected, plain = _fresh_pair()
    rejector = RejectPattern(pattern)
    for program, callback in ((rejected, rejector), (plain, AcceptAll())):
        asyncio.run(program.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0, callbacks=[callback]))
    assert rejected.step_count == plain.step_count == 6
    assert rejector.computed == sum(pattern[s % len(pattern)] + 1 for s in range(6))
    for step in range(6):
        tries = [a for s, a in rejector.attempts if s == step]
        assert tries == list(range(pattern[step % len(pattern)] + 1))
    for a, b in zip(weights_of(rejected), weights_of(plain)):
        np.testing.assert_array_equal(a, b)  # variables untouched by rejected attempts
    for a, b in zip(rejected.optimizer.variables, plain.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # and optimizer state


async def test_endless_rejection_fails_clearly_and_fires_on_train_error(toy):
    errors = []

    class Never(Callback):
        def on_compute_update_end(self, step, update):
            return True

        def on_train_error(self, error):
            errors.append(error)

    program = make_program()
    with pytest.raises(RuntimeError, match=r"rejected 5 times in a row \(max_attempts=5\)"):
        await program.fit(*toy, epochs=1, verbose=0, max_attempts=5, callbacks=[Never()])
    assert len(errors) == 1 and program.step_count == 0


async def test_non_bool_from_compute_update_end_is_a_type_error(toy):
    class Sloppy(Callback):
        def on_compute_update_end(self, step, update):
            return None

    with pytest.raises(TypeError, match="must return a bool"):
        await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[Sloppy()])


@given(
    specs=st.lists(st.tuples(st.integers(-2, 12), st.booleans()), min_size=1, max_size=8),
)
@SETTINGS
def test_hooks_run_sorted_by_callback_order_stably_sync_and_async(specs):
    log = []

    def make(index, order, is_async):
        if is_async:
            class Hooked(Callback):
                callback_order = order

                async def on_epoch_end(self, epoch, logs=None):
                    await asyncio.sleep(0)
                    log.append(index)
        else:
            class Hooked(Callback):
                callback_order = order

                def on_epoch_end(self, epoch, logs=None):
                    log.append(index)
        return Hooked()

    callbacks = CallbackList([make(i, order, is_async) for i, (order, is_async) in enumerate(specs)])
    asyncio.run(callbacks.fire("on_epoch_end", 0, {}))
    expected = [i for i, _ in sorted(enumerate(specs), key=lambda item: item[1][0])]
    assert log == expected


async def test_user_callbacks_fill_logs_before_writers(toy):
    seen = []

    class Writer(Callback):
        callback_order = 10

        def on_epoch_end(self, epoch, logs=None):
            seen.append(logs.get("custom"))

    class Filler(Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["custom"] = epoch * 2

    history = await make_program().fit(*toy, epochs=2, verbose=0, callbacks=[Writer(), Filler()])
    assert seen == [0, 2]
    assert history.history["custom"] == [0, 2]  # History is a writer too


@pytest.mark.parametrize("hook", ["on_train_begin", "on_epoch_begin", "on_train_batch_end",
                                  "before_parameter_update", "on_epoch_end"])
async def test_stop_training_from_any_hook_ends_cleanly(hook, toy):
    ended = []

    class Stopper(Callback):
        pass

    def stop(self, *args):
        raise StopTraining(f"stop from {hook}")

    setattr(Stopper, hook, stop)

    class Watch(Callback):
        def on_train_end(self, logs=None):
            ended.append("end")

        def on_train_error(self, error):
            ended.append("error")

    program = make_program()
    history = await program.fit(*toy, epochs=3, verbose=0, callbacks=[Stopper(), Watch()])
    assert ended == ["end"]
    if hook == "on_epoch_end":
        assert history.epoch == [0]  # the other callbacks (History) still saw that epoch end
    assert program.stop_reason == f"stop from {hook}"
    assert len(history.epoch) <= 1
    assert program.stop_training is False


async def test_async_hook_raising_stop_training(toy):
    class AsyncStop(Callback):
        async def on_train_batch_end(self, batch, logs=None):
            await asyncio.sleep(0)
            if batch == 2:
                raise StopTraining("enough")

    program = make_program()
    await program.fit(*toy, epochs=3, verbose=0, callbacks=[AsyncStop()])
    assert program.step_count == 3


async def test_error_in_on_train_begin_fires_on_train_error_and_propagates_unchanged(toy, tmp_path):
    boom = KeyError("boom")
    events = []

    class Fails(Callback):
        def on_train_begin(self, logs=None):
            raise boom

    class FileWriter(Callback):
        def on_train_begin(self, logs=None):
            self.file = open(tmp_path / "log.txt", "w")

        def on_train_error(self, error):
            events.append(error)
            self.file.close()

        def on_train_end(self, logs=None):
            events.append("end")

    writer = FileWriter()
    with pytest.raises(KeyError) as info:
        await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[writer, Fails()])
    assert info.value is boom
    assert events == [boom] and writer.file.closed


async def test_plain_callable_runs_before_update_and_false_stops(toy):
    calls = []

    def until_three(step, logs, program):
        calls.append((step, program.step_count, "loss" in logs))
        return step < 3

    program = make_program()
    await program.fit(*toy, epochs=2, verbose=0, callbacks=[until_three])
    assert calls == [(0, 0, True), (1, 1, True), (2, 2, True), (3, 3, True)]
    assert program.step_count == 4  # the step that returned False is applied, then training stops
    assert "until_three" in program.stop_reason


def test_state_keys_are_distinct():
    a, b = Recorder(name="a"), Recorder(name="b")
    assert a.state_key != b.state_key
    same1, same2 = Recorder(), Recorder()
    keys = CallbackList([same1, same2]).state_keys()
    assert len(set(keys)) == 2


def test_state_dicts_round_trip():
    class Counter(Callback):
        def __init__(self):
            super().__init__()
            self.count = 0

        def state_dict(self):
            return {"count": self.count}

        def load_state_dict(self, state):
            self.count = state["count"]

    a, b = Counter(), Counter()
    a.count, b.count = 3, 7
    states = CallbackList([a, b]).state_dicts()
    c, d = Counter(), Counter()
    CallbackList([c, d]).load_state_dicts(states)
    assert (c.count, d.count) == (3, 7)
    assert Callback().state_dict() == {}


async def test_on_checkpoint_reaches_every_callback(toy, tmp_path):
    rows = []

    class TinyWriter(Callback):
        async def on_epoch_end(self, epoch, logs=None):
            path = tmp_path / f"e{epoch}.weights.h5"
            self.program.save_variables(str(path))
            await self.notify_checkpoint(ManifestRow(str(path), "variables", epoch, self.program.step_count,
                                                     "loss", logs["loss"]))

    class Listener(Callback):
        def on_checkpoint(self, row):
            rows.append(row)

    await make_program().fit(*toy, epochs=2, verbose=0, callbacks=[TinyWriter(), Listener()])
    assert [(r.kind, r.epoch, r.step) for r in rows] == [("variables", 0, 8), ("variables", 1, 16)]
    assert all(isinstance(r.value, float) and r.time > 0 for r in rows)


async def test_callbacks_must_be_callbacks_or_callables(toy):
    with pytest.raises(TypeError, match="callbacks.Callback, a keras.callbacks.Callback, or a callable"):
        await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[42])


async def test_fused_and_staged_steps_agree(toy):
    x, y = toy
    fused = make_program(optimizer=keras.optimizers.Adam(0.01))
    staged = make_program(optimizer=keras.optimizers.Adam(0.01))
    h1 = await fused.fit(x, y, epochs=3, seed=0, verbose=0)
    h2 = await staged.fit(x, y, epochs=3, seed=0, verbose=0, callbacks=[AcceptAll()])
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-5)
    for a, b in zip(weights_of(fused), weights_of(staged)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# -- keras.callbacks run unchanged ---------------------------------------------------------------

async def test_keras_reduce_lr_on_plateau_lowers_the_learning_rate(toy):
    program = make_program(optimizer=keras.optimizers.SGD(0.1))
    reduce = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0,
                                               verbose=0)
    history = await program.fit(*toy, epochs=3, verbose=0, callbacks=[reduce])
    # epoch 0 sets the best; epochs 1 and 2 do not beat it by min_delta=10: two halvings
    assert float(program.optimizer.learning_rate) == pytest.approx(0.1 * 0.5 ** 2)
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.05])


async def test_keras_learning_rate_scheduler_changes_training(toy):
    x, y = toy
    seen = []

    class ReadLR(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                seen.append(float(self.program.optimizer.learning_rate))

    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.0 if epoch == 1 else 0.1)
    program = make_program(optimizer=keras.optimizers.SGD(0.1))
    weights = []

    class Snap(Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights.append(weights_of(self.program))

    await program.fit(x, y, epochs=3, verbose=0, callbacks=[schedule, ReadLR(), Snap()])
    assert seen == pytest.approx([0.1, 0.0, 0.1])
    # with learning rate 0 in epoch 1, the variables do not move in that epoch
    assert all(np.array_equal(a, b) for a, b in zip(weights[0], weights[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(weights[1], weights[2]))


async def test_keras_lambda_callback(toy):
    events = []
    cb = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: events.append(("epoch", epoch, round(logs["loss"], 6))),
        on_train_batch_end=lambda batch, logs: events.append(("batch", batch)),
        on_train_end=lambda logs: events.append(("end",)),
    )
    history = await make_program().fit(*toy, epochs=2, batch_size=128, verbose=0, callbacks=[cb])
    assert events == [("batch", 0), ("batch", 1), ("epoch", 0, round(history.history["loss"][0], 6)),
                      ("batch", 0), ("batch", 1), ("epoch", 1, round(history.history["loss"][1], 6)), ("end",)]


@pytest.mark.skipif(BACKEND == "tensorflow", reason="BatchNormalization snapshot checked on jax/torch")
async def test_rejected_attempts_do_not_move_batchnorm_statistics(toy):
    x, y = toy

    def build():
        keras.utils.set_random_seed(0)
        from trainer import Program

        inputs = keras.Input((8,))
        h = keras.layers.BatchNormalization()(keras.layers.Dense(8)(inputs))
        program = Program(inputs=inputs, outputs=keras.layers.Dense(1, activation="sigmoid")(h))
        program.compile(optimizer="sgd", loss="binary_crossentropy")
        return program

    a, b = build(), build()
    await a.fit(x, y, epochs=1, shuffle=False, verbose=0, callbacks=[RejectPattern([2])])
    await b.fit(x, y, epochs=1, shuffle=False, verbose=0, callbacks=[AcceptAll()])
    for va, vb in zip(a.non_trainable_variables, b.non_trainable_variables):
        np.testing.assert_allclose(np.asarray(va), np.asarray(vb), rtol=1e-6)


@pytest.mark.parametrize("at_once", [True, False], ids=["chunks-from-the-start", "chunks-when-they-pay"])
async def test_fused_chunks_equal_single_steps(toy, monkeypatch, at_once):
    """With no per-batch hook, JAX runs 16 steps per dispatch (lax.scan); results must not change,
    whether the chunk is compiled at once or (as by default) trains as single steps until its
    compile pays and is ready."""
    import trainer.loop

    monkeypatch.setattr(trainer.loop, "CHUNKS_AT_ONCE", at_once)
    x = np.concatenate([toy[0]] * 5)[:1000]  # 31 full batches + a partial one: chunks, singles, a remainder
    y = np.concatenate([toy[1]] * 5)[:1000]

    class PerBatch(Callback):  # any per-batch hook turns chunking off
        def on_train_batch_end(self, batch, logs=None):
            pass

    chunked = make_program(optimizer=keras.optimizers.Adam(0.01))
    single = make_program(optimizer=keras.optimizers.Adam(0.01))
    h1 = await chunked.fit(x, y, epochs=3, seed=0, verbose=0, validation_split=0.1)
    h2 = await single.fit(x, y, epochs=3, seed=0, verbose=0, validation_split=0.1, callbacks=[PerBatch()])
    assert chunked.step_count == single.step_count == 3 * 29
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-6)
    np.testing.assert_allclose(h1.history["val_loss"], h2.history["val_loss"], rtol=1e-6)
    for a, b in zip(weights_of(chunked), weights_of(single)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    if at_once and keras.backend.backend() == "jax":  # the chunk did run
        assert any(kind == "chunk" for kind, _ in chunked.__dict__["_asyncfit_compiled"]["jax_seen"])
