"""The shared monitor/mode base: names checked before the first step, directions known."""
import keras
import pytest

from callbacks import Callback, MonitorCallback
from callbacks.monitor_base import metric_direction
from conftest import make_program


class Watch(MonitorCallback):
    def on_epoch_end(self, epoch, logs=None):
        if self.is_better(logs[self.monitor], self.best):
            self.best = logs[self.monitor]


class Steps(Callback):
    count = 0

    def on_train_batch_begin(self, batch, logs=None):
        Steps.count += 1


async def test_wrong_monitor_fails_before_a_step_with_the_valid_names(toy):
    Steps.count = 0
    with pytest.raises(ValueError) as info:
        await make_program().fit(*toy, epochs=2, verbose=0, validation_split=0.2,
                                 callbacks=[Watch(monitor="val_acuracy"), Steps()])
    message = str(info.value)
    assert "Did you mean 'val_accuracy'?" in message
    assert "The keys it logs are: loss, accuracy, val_loss, val_accuracy." in message
    assert Steps.count == 0


async def test_val_monitor_without_validation_explains_why(toy):
    with pytest.raises(ValueError, match="val_\\* keys exist only when fit has validation"):
        await make_program().fit(*toy, epochs=1, verbose=0, callbacks=[Watch(monitor="val_loss")])


async def test_named_evaluator_keys_are_valid_monitors(toy):
    x, y = toy
    watch = Watch(monitor="val_tail_accuracy")
    await make_program().fit(x, y, epochs=2, verbose=0, validation_data={"tail": (x[-64:], y[-64:])},
                             callbacks=[watch])
    assert watch.direction == "max" and watch.best is not None


async def test_contradicting_mode_warns(toy):
    with pytest.warns(UserWarning, match="better when it goes up"):
        await make_program().fit(*toy, epochs=1, verbose=0, validation_split=0.2,
                                 callbacks=[Watch(monitor="val_accuracy", mode="min")])


@pytest.mark.parametrize("name, direction", [
    ("loss", "min"), ("val_loss", "min"), ("val_head_loss", "min"), ("mean_squared_error", "min"),
    ("val_mae", "min"), ("accuracy", "max"), ("val_sparse_categorical_accuracy", "max"), ("auc", "max"),
    ("val_reward", "max"), ("precision", "max"), ("val_recall", "max"), ("f1_score", "max"),
])
def test_auto_directions(name, direction):
    assert metric_direction(name) == direction


@keras.saving.register_keras_serializable(package="tests")
class Goodness(keras.metrics.MeanMetricWrapper):
    def __init__(self, name="goodness", dtype=None):
        super().__init__(fn=lambda t, p: 1 - keras.ops.abs(t - p), name=name, dtype=dtype)
        self._direction = "up"


async def test_any_metric_whose_keras_direction_is_up_is_max(toy):
    program = make_program(metrics=[Goodness()])
    watch = Watch(monitor="val_goodness")
    await program.fit(*toy, epochs=1, verbose=0, validation_split=0.2, callbacks=[watch])
    assert watch.direction == "max"


async def test_unknown_direction_in_auto_mode_fails_before_a_step(toy):
    program = make_program(metrics=[keras.metrics.MeanMetricWrapper(lambda t, p: p, name="zorp")])
    with pytest.raises(ValueError, match="cannot tell whether 'zorp'"):
        await program.fit(*toy, epochs=1, verbose=0, callbacks=[Watch(monitor="zorp")])
    assert program.step_count == 0


def test_min_delta_and_baseline():
    watch = Watch(monitor="loss", min_delta=0.1, baseline=1.0)
    assert watch.is_better(0.5, 0.7) and not watch.is_better(0.65, 0.7)
    assert watch.beats_baseline(0.8) and not watch.beats_baseline(0.95)
    assert not watch.is_better(float("nan"), None)


async def test_logged_keys_are_known_before_a_step_in_keras_order(toy):
    """On JAX the keys come from the metrics' results traced abstractly (computing them
    eagerly cost three compiles at a fit's start), in get_metrics_result's order."""
    x, y = toy
    program = make_program(metrics=["accuracy", keras.metrics.AUC(name="auc"), keras.metrics.Precision(name="p")])
    await program.fit(x, y, epochs=1, verbose=0)
    assert program.expected_log_keys(("val",)) == [
        "loss", "accuracy", "auc", "p", "val_loss", "val_accuracy", "val_auc", "val_p"]
    assert program.expected_log_keys() == list(program.get_metrics_result())
