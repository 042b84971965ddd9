"""Bad input fails with a clear error before the first step, and no step runs."""
import numpy as np
import pytest

from callbacks import Callback
from conftest import make_program, weights_of


class CountSteps(Callback):
    def __init__(self):
        super().__init__()
        self.steps = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.steps += 1


@pytest.fixture
def fresh(toy):
    program = make_program()
    return program, weights_of(program), CountSteps()


def assert_no_step(program, before, counter):
    assert counter.steps == 0
    assert program.step_count == 0
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(program)))


CASES = {
    "different_lengths": (lambda x, y: dict(x=x, y=y[:-1]), ValueError, "same number of samples"),
    "features_do_not_fit": (lambda x, y: dict(x=x[:, :5], y=y), ValueError, r"do not fit.*\(5,\).*\(8,\)"),
    "empty": (lambda x, y: dict(x=x[:0], y=y[:0]), ValueError, "empty"),
    # Keras rounds the training part down, so only "no training data" can happen.
    "split_leaves_no_training": (lambda x, y: dict(x=x[:1], y=y[:1], validation_split=0.5), ValueError,
                                 "leaves 0 for training and 1 for validation"),
    "split_out_of_range": (lambda x, y: dict(x=x, y=y, validation_split=1.0), ValueError, r"in \[0, 1\)"),
    "unknown_keyword": (lambda x, y: dict(x=x, y=y, epoch=3), TypeError, "'epoch' \\(did you mean 'epochs'\\?\\)"),
    "batch_size_zero": (lambda x, y: dict(x=x, y=y, batch_size=0), ValueError, "batch_size=0"),
    "epochs_before_initial_epoch": (lambda x, y: dict(x=x, y=y, epochs=2, initial_epoch=3), ValueError,
                                    "epochs=2 is less than initial_epoch=3"),
    "not_a_callback": (lambda x, y: dict(x=x, y=y, callbacks=["early"]), TypeError, "must be a callbacks.Callback"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_fit_input(case, fresh, toy):
    program, before, counter = fresh
    make_kwargs, error, pattern = CASES[case]
    kwargs = make_kwargs(*toy)
    kwargs["callbacks"] = kwargs.get("callbacks", []) + [counter]
    with pytest.raises(error, match=pattern):
        await program.fit(verbose=0, epochs=kwargs.pop("epochs", 2), **kwargs)
    assert_no_step(program, before, counter)


async def test_fit_before_compile(toy):
    program = make_program(compile=False)
    counter = CountSteps()
    with pytest.raises(RuntimeError, match=r"compile\(.*\) before fit"):
        await program.fit(*toy, callbacks=[counter], verbose=0)
    assert counter.steps == 0 and program.step_count == 0


def test_loss_and_reward_both_or_neither():
    program = make_program(compile=False)
    with pytest.raises(ValueError, match="both"):
        program.compile(optimizer="sgd", loss="mse", reward=lambda t, p: p)
    with pytest.raises(ValueError, match="neither"):
        program.compile(optimizer="sgd")
    assert not program.compiled


async def test_subclassed_program_with_wrong_features_fails_before_a_step(toy):
    from test_program import TwoLayer

    x, y = toy
    program = TwoLayer()
    program.compile(optimizer="sgd", loss="binary_crossentropy")
    await program.fit(x, y, epochs=1, verbose=0)
    steps = program.step_count
    with pytest.raises(ValueError, match="do not fit"):
        await program.fit(x[:, :5], y, epochs=1, verbose=0)
    assert program.step_count == steps
