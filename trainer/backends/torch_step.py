"""PyTorch steps: eager, state kept in the Keras variables themselves."""
from __future__ import annotations

import torch
from keras import ops, tree

from trainer.backends import EagerStepper, first_dim


def _to_tensors(structure):
    return tree.map_structure(lambda a: None if a is None else ops.convert_to_tensor(a), structure)


class Stepper(EagerStepper):
    def snapshot(self):
        # Forward passes update non-trainable state in place (BatchNorm statistics).
        return [v.value.detach().clone() for v in self.program.non_trainable_variables]

    def restore(self, snapshot) -> None:
        with torch.no_grad():
            for v, value in zip(self.program.non_trainable_variables, snapshot):
                v.assign(value)

    def _forward(self, x, training: bool):
        p = self.program
        return p(x, training=training) if p._call_has_training_arg else p(x)

    def compute(self, batch):
        p = self.program
        x, y, sample_weight = _to_tensors(batch)
        y_pred = self._forward(x, training=True)
        p.zero_grad()
        loss = p._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        scaled = p.optimizer.scale_loss(loss) if p.optimizer is not None else loss
        grads = None
        if p.trainable_weights:
            scaled.backward()
            grads = [v.value.grad for v in p.trainable_weights]
        loss = loss.detach()
        return loss, grads, None, (loss, y_pred.detach() if hasattr(y_pred, "detach") else tree.map_structure(
            lambda t: t.detach(), y_pred), (x, y, sample_weight))

    def apply(self, grads, aux):
        p = self.program
        loss, y_pred, (x, y, sample_weight) = aux
        if grads is not None:
            with torch.no_grad():
                p.optimizer.apply(grads, p.trainable_weights[:])
        p._loss_tracker.update_state(loss, sample_weight=first_dim(x))
        return p.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def train_step(self, batch):
        loss, grads, _, aux = self.compute(batch)
        return self.apply(grads, aux), loss

    def grad_norm(self, grads):
        return torch.sqrt(sum(torch.sum(g * g) for g in grads if g is not None))

    def test_step(self, batch):
        with torch.no_grad():
            return self.program.test_step(_to_tensors(batch))

    def predict_step(self, x):
        with torch.no_grad():
            return self._forward(_to_tensors(x), training=False)
