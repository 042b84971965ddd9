"""`CallbackList`: sorts callbacks once by `callback_order` and dispatches hooks.

The dispatch table is built once: for every hook, the bound methods of the
callbacks that override it, in order, each marked sync or async. The loop asks
`wants(hook)` before building any arguments, so a hook nobody overrides costs a
dict lookup and nothing else.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Iterable

import keras
import numpy as np

from callbacks.callback import ALL_HOOKS, KERAS_HOOKS, Callback, StopTraining, Update, overrides
from callbacks.processes import is_chief
from callbacks.threads import to_host


class CallableCallback(Callback):
    """Wraps a plain callable `(step, logs, program) -> bool` given in `callbacks=`.

    It runs at `before_parameter_update`; returning False stops training after
    the current step (other return values, None included, continue).
    """

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn
        self._is_async = inspect.iscoroutinefunction(fn)
        name = getattr(fn, "__qualname__", type(fn).__qualname__)
        self._name = name

    @property
    def state_key(self) -> str:
        return f"callable:{self._name}"

    async def before_parameter_update(self, step, update):
        logs = dict(update.logs)
        logs["loss"] = update.loss
        result = self.fn(step, logs, self._program)
        if self._is_async or inspect.isawaitable(result):
            result = await result
        if result is False or (isinstance(result, np.bool_) and not result):
            # Like program.stop_training: this step's update is applied, then the loop ends.
            self._program.stop_training = True
            object.__setattr__(self._program, "stop_reason", f"callable {self._name} returned False at step {step}")


BATCH_ALIASES = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}


def _as_callback(obj: Any) -> Any:
    if isinstance(obj, (Callback, keras.callbacks.Callback)):
        return obj
    if callable(obj) and not isinstance(obj, type):
        return CallableCallback(obj)
    raise TypeError(
        f"callbacks= got {obj!r} of type {type(obj).__name__}. Each entry must be a "
        "callbacks.Callback, a keras.callbacks.Callback, or a callable "
        "(step, logs, program) -> bool."
    )


def _order(callback: Any, hook: str) -> int:
    order = getattr(callback, "callback_order", 0)
    return getattr(callback, "hook_order", {}).get(hook, order)


class CallbackList:
    """An ordered list of callbacks with one dispatch table.

    Args:
        callbacks: `Callback`s, `keras.callbacks.Callback`s, or plain callables.
        program: the program, set on every callback.
        params: the `params` dict, set on every callback.
    """

    def __init__(self, callbacks: Iterable = (), program=None, params: dict | None = None):
        converted = [_as_callback(cb) for cb in callbacks or ()]
        if not is_chief():  # several processes: what is written once is written by process 0
            converted = [cb for cb in converted if not getattr(cb, "chief_only", False)]
        # sorted() is stable: ties keep list order.
        self.callbacks = sorted(converted, key=lambda cb: getattr(cb, "callback_order", 0))
        self._table: dict[str, tuple] = {}
        for hook in ALL_HOOKS:
            entries = []
            for cb in sorted(self.callbacks, key=lambda cb: _order(cb, hook)):
                if isinstance(cb, keras.callbacks.Callback) and hook not in KERAS_HOOKS:
                    continue
                fn = None
                if overrides(cb, hook):
                    fn = getattr(cb, hook)
                elif hook in BATCH_ALIASES and overrides(cb, BATCH_ALIASES[hook]):
                    # Keras' older names (on_batch_begin / on_batch_end), which keras.fit
                    # calls through on_train_batch_*; LambdaCallback(on_batch_end=...) too.
                    fn = getattr(cb, BATCH_ALIASES[hook])
                if fn is None:
                    continue
                is_async = inspect.iscoroutinefunction(fn)
                if isinstance(cb, keras.callbacks.Callback) and not is_async:
                    fn = self._synced(fn)  # its `self.model` is the program itself: show it the live variables
                entries.append((fn, is_async))
            self._table[hook] = tuple(entries)
        for cb in self.callbacks:
            if isinstance(cb, Callback):
                cb._callback_list = self
        self.program = None
        if program is not None:
            self.set_program(program)
        if params is not None:
            self.set_params(params)

    def _synced(self, fn: Callable) -> Callable:
        """`fn` of a Keras callback, called after the running loop's state is written back
        into the variables (on JAX it lives outside them), as Keras' JAX trainer does
        before its callbacks read the model, with its logs as Python numbers (Keras'
        CallbackList pythonifies them too)."""

        def call(*args):
            sync = getattr(self.program, "jax_state_sync", None)
            if sync is not None:
                sync()
            if args and isinstance(args[-1], dict):
                # As Keras' CallbackList: Python numbers, not tensors; in place, since Keras
                # callbacks add keys (LearningRateScheduler's learning_rate) for later ones.
                logs = args[-1]
                device = {k: v for k, v in logs.items() if not isinstance(v, (int, float, str, list))}
                if device:
                    logs.update(to_host(device))
            return fn(*args)

        call.__qualname__ = getattr(fn, "__qualname__", "keras_callback_hook")
        return call

    def set_program(self, program) -> None:
        self.program = program
        for cb in self.callbacks:
            if isinstance(cb, Callback):
                cb.set_program(program)
            else:
                cb.set_model(program)

    def set_params(self, params: dict) -> None:
        for cb in self.callbacks:
            cb.set_params(params)

    def state_keys(self) -> list[str]:
        """One distinct key per callback: `state_key`, with `#2`, `#3`... for repeats."""
        keys, counts = [], {}
        for cb in self.callbacks:
            key = cb.state_key if isinstance(cb, Callback) else f"keras:{type(cb).__qualname__}"
            counts[key] = counts.get(key, 0) + 1
            keys.append(key if counts[key] == 1 else f"{key}#{counts[key]}")
        return keys

    def state_dicts(self) -> dict[str, dict]:
        """Every callback's `state_dict`, by its distinct key (what BackupAndRestore stores)."""
        return {
            key: cb.state_dict()
            for key, cb in zip(self.state_keys(), self.callbacks)
            if isinstance(cb, Callback)
        }

    def load_state_dicts(self, states: dict[str, dict]) -> None:
        for key, cb in zip(self.state_keys(), self.callbacks):
            if isinstance(cb, Callback) and key in states:
                cb.load_state_dict(states[key])

    def wants(self, hook: str) -> bool:
        """Whether any callback overrides `hook`."""
        return bool(self._table[hook])

    async def fire(self, hook: str, *args) -> None:
        """Call `hook` on every callback that overrides it, in order.

        A `StopTraining` from one callback lets the others finish this hook (so an
        epoch that ends with a stop is still logged, checkpointed and backed up),
        then ends the loop; one with `keep_backup=True` (a NaN) ends it at once.
        """
        stop = None
        for fn, is_async in self._table[hook]:
            try:
                if is_async:
                    await fn(*args)
                else:
                    fn(*args)
            except StopTraining as raised:
                if raised.keep_backup:
                    raise  # a bad stop (NaN): nobody else may write from this state
                stop = stop or raised
        if stop is not None:
            raise stop

    async def fire_all(self, hook: str, *args) -> None:
        """Call `hook` on every callback that overrides it, in order, even when one raises:
        for cleanup hooks (`on_train_end`), where every callback must release what it holds.
        The first error is raised once all have run (a `StopTraining` is not an error here)."""
        first = None
        for fn, is_async in self._table[hook]:
            try:
                if is_async:
                    await fn(*args)
                else:
                    fn(*args)
            except StopTraining:
                pass
            except BaseException as error:  # noqa: B036 (re-raised below, after the others ran)
                first = first or error
        if first is not None:
            raise first

    async def reject(self, step: int, update: Update) -> bool:
        """Fire `on_compute_update_end`; True when any callback rejects the update."""
        rejected = False
        for fn, is_async in self._table["on_compute_update_end"]:
            answer = await fn(step, update) if is_async else fn(step, update)
            if not isinstance(answer, (bool, np.bool_)):
                raise TypeError(
                    f"{fn.__qualname__} returned {answer!r} ({type(answer).__name__}); "
                    "on_compute_update_end must return a bool: True to reject the "
                    "update and recompute it, False to accept it."
                )
            rejected = rejected or bool(answer)
        return rejected

    async def fire_error(self, error: BaseException) -> None:
        """Fire `on_train_error` on every callback; a failing handler only warns."""
        for fn, is_async in self._table["on_train_error"]:
            try:
                if is_async:
                    await fn(error)
                else:
                    fn(error)
            except BaseException as handler_error:  # noqa: B036 (the original error must propagate; the others still clean up)
                warnings.warn(f"{fn.__qualname__} failed while handling {error!r}: {handler_error!r}")

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)
