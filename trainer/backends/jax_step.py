"""JAX steps: jitted, stateless, with the training state's buffers donated.

The state `(trainable, non_trainable, optimizer, metrics)` lives here, outside the
Keras variables, for the whole loop (as in Keras' own JAX trainer). `push()` writes
it back; whoever then changes a variable (a callback, ReduceLROnPlateau) is seen,
because the next step reads the state from the variables again.

Under a `keras.distribution` (DataParallel, ModelParallel), each batch is laid out with
the distribution's data layout before it reaches a step (`trainer.distributed`), and
the jitted steps keep every state variable's sharding (`out_shardings`, as Keras' JAX
trainer does); logs, losses and predictions come back replicated, so every process can
read them whole.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from keras import tree

from trainer import distributed
from trainer.backends import batch_signature


def _global_norm(grads):
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in grads if g is not None))


def _has_convolutions(program) -> bool:
    return any(type(layer).__module__.startswith("keras.src.layers.convolutional")
               for layer in program._flatten_layers(include_self=False))


def _build_functions(program, layout: distributed.Layout | None) -> dict:
    def gradients(state, batch):
        trainable, non_trainable, optimizer_vars, metrics_vars = state
        x, y, sample_weight = batch
        grad_fn = jax.value_and_grad(program.compute_loss_and_updates, has_aux=True)
        (_, aux), grads = grad_fn(trainable, non_trainable, metrics_vars, x, y, sample_weight,
                                  training=True, optimizer_variables=optimizer_vars)
        unscaled_loss, y_pred, new_non_trainable, new_metrics = aux
        return unscaled_loss, grads, (unscaled_loss, y_pred, new_non_trainable, new_metrics, batch)

    def compute(state, batch):
        loss, grads, aux = gradients(state, batch)
        norm = _global_norm(grads)
        if layout is not None:  # read by hooks on every process
            norm = jax.lax.with_sharding_constraint(norm, layout.replicated)
        return loss, grads, norm, aux

    def apply(state, grads, aux):
        trainable, _, optimizer_vars, _ = state
        unscaled_loss, y_pred, non_trainable, metrics_vars, (x, y, sample_weight) = aux
        trainable, optimizer_vars = program.optimizer.stateless_apply(optimizer_vars, grads, trainable)
        logs, metrics_vars = program._update_metrics_variables(metrics_vars, unscaled_loss, x, y, y_pred, sample_weight)
        return logs, (trainable, non_trainable, optimizer_vars, metrics_vars)

    def fused(state, batch):
        loss, grads, aux = gradients(state, batch)  # no gradient norm: nobody sees it here
        logs, state = apply(state, grads, aux)
        return logs, loss, state

    # Inside an XLA while loop, CPU convolutions lose their fast path (25x slower here), so
    # programs with convolutions get the scan unrolled. Others keep it rolled: a small module
    # to lower (lowering a 16x unrolled step holds the GIL long enough to stall the event
    # loop), and faster.
    unroll = _has_convolutions(program)

    def chunk(state, batches):
        # Several steps in one dispatch: the same fused step, scanned over stacked batches.
        def body(state, batch):
            logs, loss, state = fused(state, batch)
            return state, (logs, loss)

        state, (logs, losses) = jax.lax.scan(body, state, batches, unroll=unroll)
        return jax.tree_util.tree_map(lambda v: v[-1], logs), losses, state

    def test(trainable, non_trainable, metrics_vars, batch):
        logs, (_, _, metrics_vars) = program.test_step((trainable, non_trainable, metrics_vars), batch)
        return logs, metrics_vars

    def predict(trainable, non_trainable, x):
        outputs, _ = program.predict_step((trainable, non_trainable), (x,))
        return outputs

    if layout is None:
        out = dict.fromkeys(("compute", "apply", "fused", "chunk", "test", "predict", "grad_norm"))
    else:  # the state keeps its variables' shardings; what the host reads is replicated
        state, every = layout.state_shardings(program), layout.replicated
        out = {"compute": None, "apply": (every, state), "fused": (every, every, state),
               "chunk": (every, every, state), "test": (every, state[3]), "predict": every, "grad_norm": every}
        unconstrained_gradients = gradients

        def gradients(state_values, batch):
            # The gradients laid out like their variables; `aux` (predictions, the batch)
            # stays as computed: an out_shardings entry of None would gather it everywhere.
            loss, grads, aux = unconstrained_gradients(state_values, batch)
            constrain = jax.lax.with_sharding_constraint
            return constrain(loss, every), constrain(grads, state[0]), aux

    def jit(fn, kind: str, **kwargs):
        if out[kind] is None:
            return jax.jit(fn, **kwargs)
        return jax.jit(fn, out_shardings=out[kind], **kwargs)

    return {
        "compute": jit(compute, "compute"),
        "apply": jit(apply, "apply", donate_argnums=0),
        "fused": jit(fused, "fused", donate_argnums=0),
        "chunk": jit(chunk, "chunk", donate_argnums=0),
        "test": jit(test, "test"),  # no donation: the metric variables keep readable values
        "predict": jit(predict, "predict"),
        "grad_norm": jit(_global_norm, "grad_norm"),
    }


class Stepper:
    off_loop = False  # dispatched from the event loop's thread: JAX runs it asynchronously

    def __init__(self, program):
        self.program = program
        # The distribution active where the call was made (Keras keeps it per thread).
        self.layout = distributed.Layout.current()
        key = "jax" if self.layout is None else f"jax@{self.layout.key}"
        cache = program.__dict__.setdefault("_asyncfit_compiled", {})
        if key not in cache:
            cache[key] = _build_functions(program, self.layout)
        self.fns = cache[key]
        self.state = None
        self.eval_metrics = None
        self._stale = True  # the variables may be newer than self.state
        self._synced = True  # the variables hold self.state
        # Kept with the compiled functions, so a program's later fits know what is compiled
        # (and compile() forgets it with them).
        self.seen: set = cache.setdefault(f"{key}_seen", set())
        self.background: dict = cache.setdefault(f"{key}_background", {})  # signature -> a compile under way
        self.compile_seconds: dict = cache.setdefault(f"{key}_compile_seconds", {})  # kind -> seconds it took
        self.single_seconds: dict = cache.setdefault(f"{key}_single_seconds", {})  # chunk signature -> seconds

    # -- state ---------------------------------------------------------------------
    def _pull(self):
        p = self.program
        optimizer_vars = p.optimizer.variables if getattr(p, "optimizer", None) is not None else []
        self.state = (
            [v.value for v in p.trainable_variables],
            [v.value for v in p.non_trainable_variables],
            [v.value for v in optimizer_vars],
            [v.value for v in p.metrics_variables],
        )
        self._stale = False

    def _current(self):
        if self._stale:
            self._pull()
        return self.state

    def push(self) -> None:
        if self._synced or self.state is None:
            return
        p = self.program
        optimizer_vars = p.optimizer.variables if getattr(p, "optimizer", None) is not None else []
        for refs, values in zip(
            (p.trainable_variables, p.non_trainable_variables, optimizer_vars, p.metrics_variables), self.state
        ):
            for ref, value in zip(refs, values):
                ref.assign(value)
        self._synced = True
        self._stale = True  # a caller may change the variables now

    def reset_metrics(self) -> None:
        self.push()
        self.program.reset_metrics()
        self._stale = True

    def snapshot(self):
        return None  # a rejected attempt never touches the state: compute is pure

    def restore(self, snapshot) -> None:
        pass

    def signature(self, kind: str, batch) -> tuple:
        return (kind, batch_signature(batch))

    # -- compiling ---------------------------------------------------------------------
    def _placed(self, batch, stacked: bool = False):
        """`batch` laid out with the distribution's data layout (as it is, without one)."""
        return batch if self.layout is None else self.layout.place(batch, stacked)

    def _jitted_call(self, kind: str, *args) -> tuple:
        """The jitted function and its arguments behind the step method of `kind`."""
        if kind in ("fused", "chunk", "compute"):  # (state, batch)
            return self.fns[kind], (self._current(), self._placed(args[0], stacked=kind == "chunk"))
        if kind == "apply":  # (state, grads, aux)
            return self.fns[kind], (self._current(), *args)
        trainable, non_trainable, _, _ = self._current()
        if kind == "test":
            return self.fns["test"], (trainable, non_trainable, self.eval_metrics, self._placed(args[0]))
        if kind == "predict":
            return self.fns["predict"], (trainable, non_trainable, self._placed(args[0]))
        raise ValueError(f"unknown step kind {kind!r}")

    def compile_job(self, kind: str, *args, again: bool = False):
        """A function that compiles the step of `kind` for these arguments without running
        it, for a worker thread. Its arguments are taken here, on the caller's thread; the
        compile reads only their shapes (a buffer donated meanwhile is fine), and donates or
        changes nothing, so a cancelled caller loses nothing. The next call on these shapes
        finds the compiled step in JAX's caches (about 1-5 ms to look up). With `again`, the
        next step reads the state from the variables again (they may change before it)."""
        fn, fn_args = self._jitted_call(kind, *args)
        if again and self._synced:
            self._stale = True
        return lambda: fn.lower(*fn_args).compile()

    # -- steps -----------------------------------------------------------------------
    def compute(self, batch):
        loss, grads, grad_norm, aux = self.fns["compute"](self._current(), self._placed(batch))
        return loss, grads, grad_norm, aux

    def apply(self, grads, aux):
        logs, self.state = self.fns["apply"](self._current(), grads, aux)
        self._synced = False
        return logs

    def train_step(self, batch):
        logs, loss, self.state = self.fns["fused"](self._current(), self._placed(batch))
        self._synced = False
        return logs, loss

    supports_chunks = True

    def train_chunk(self, batches):
        """len(batches[0]) steps in one dispatch; returns (logs after the last, per-step losses)."""
        logs, losses, self.state = self.fns["chunk"](self._current(), self._placed(batches, stacked=True))
        self._synced = False
        return logs, losses

    def metrics_result(self) -> dict:
        self.push()
        return self.program.get_metrics_result()

    def grad_norm(self, grads):
        return self.fns["grad_norm"](grads)

    def begin_eval(self) -> None:
        self.reset_metrics()
        self.eval_metrics = [v.value for v in self.program.metrics_variables]

    def test_step(self, batch):
        trainable, non_trainable, _, _ = self._current()
        logs, self.eval_metrics = self.fns["test"](trainable, non_trainable, self.eval_metrics, self._placed(batch))
        return logs

    def predict_step(self, x):
        trainable, non_trainable, _, _ = self._current()
        return self.fns["predict"](trainable, non_trainable, self._placed(x))

    def wait(self, value) -> None:
        """Block until `value` (any pytree of arrays) is computed."""
        jax.block_until_ready(value)

    def is_ready(self, value) -> bool:
        leaves = tree.flatten(value)
        return all(leaf.is_ready() for leaf in leaves if hasattr(leaf, "is_ready"))
