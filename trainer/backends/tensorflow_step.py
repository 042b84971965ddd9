"""TensorFlow steps: `tf.function`s over the Keras variables (state stays in them)."""
from __future__ import annotations

import tensorflow as tf
from keras import tree

from trainer.backends import EagerStepper


def _first_dim(x):
    return tf.shape(next(i for i in tree.flatten(x) if i is not None))[0]


class Stepper(EagerStepper):
    def __init__(self, program):
        super().__init__(program)
        cache = program.__dict__.setdefault("_asyncfit_compiled", {})
        if "tensorflow" not in cache:
            cache["tensorflow"] = self._build()
        self.fns = cache["tensorflow"]

    def _build(self) -> dict:
        p = self.program

        def forward(x, training):
            return p(x, training=training) if p._call_has_training_arg else p(x)

        def compute(x, y, sample_weight):
            with tf.GradientTape() as tape:
                y_pred = forward(x, True)
                loss = p._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
                scaled = p.optimizer.scale_loss(loss) if p.optimizer is not None else loss
            grads = tape.gradient(scaled, p.trainable_weights)
            return loss, grads, tf.linalg.global_norm([g for g in grads if g is not None]), y_pred

        def apply(grads, loss, x, y, y_pred, sample_weight):
            p.optimizer.apply(grads, p.trainable_weights)
            p._loss_tracker.update_state(loss, sample_weight=_first_dim(x))
            return p.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

        def fused(x, y, sample_weight):
            loss, grads, _, y_pred = compute(x, y, sample_weight)
            return apply(grads, loss, x, y, y_pred, sample_weight), loss

        return {
            "compute": tf.function(compute, reduce_retracing=True),
            "apply": tf.function(apply, reduce_retracing=True),
            "fused": tf.function(fused, reduce_retracing=True),
            "test": tf.function(lambda data: p.test_step(data), reduce_retracing=True),
            "predict": tf.function(lambda x: forward(x, False), reduce_retracing=True),
        }

    def snapshot(self):
        return [tf.identity(v.value) for v in self.program.non_trainable_variables]

    def restore(self, snapshot) -> None:
        for v, value in zip(self.program.non_trainable_variables, snapshot):
            v.assign(value)

    def compute(self, batch):
        x, y, sample_weight = batch
        loss, grads, grad_norm, y_pred = self.fns["compute"](x, y, sample_weight)
        return loss, list(grads), grad_norm, (loss, y_pred, batch)

    def apply(self, grads, aux):
        loss, y_pred, (x, y, sample_weight) = aux
        return self.fns["apply"](grads, loss, x, y, y_pred, sample_weight)

    def train_step(self, batch):
        return self.fns["fused"](*batch)

    def grad_norm(self, grads):
        return tf.linalg.global_norm([g for g in grads if g is not None])

    def test_step(self, batch):
        return self.fns["test"](batch)

    def predict_step(self, x):
        return self.fns["predict"](x)
