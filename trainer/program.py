"""`Program`: a `keras.Model` whose `fit`, `evaluate` and `predict` are awaited."""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import numbers
import os

import keras
import keras.src.backend
import numpy as np
from keras import tree
from keras.src.models.functional import Functional
from keras.src.models.model import functional_init_arguments

from callbacks import sharded_state
from callbacks.callback_list import CallbackList
from callbacks.processes import agree
from callbacks.progress_bar import ProgressBar, resolve_verbose
from callbacks.threads import in_worker_thread
from trainer.backends import on_backend_thread
from trainer.benchmark import Benchmark
from trainer.data import ArraySource, AsyncIterableSource, Source, closing_sources, make_source
from trainer.history import History
from trainer.host_constants import host_constant_initializers
from trainer.keras_saving import cache_keras_skipsets, save_keras_file, save_weights_file
from trainer.loop import Engine, RunState
from trainer.observability import with_monitor
from trainer.reward import RewardLoss, RewardMetric

FIT_KEYWORDS = (
    "batch_size", "epochs", "verbose", "callbacks", "validation_split", "validation_data", "shuffle",
    "seed", "initial_epoch", "steps_per_epoch", "validation_freq", "max_attempts",
)


def _unknown_keywords(method: str, unknown: dict, known: tuple) -> TypeError:
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return TypeError(f"{method}() got unknown keyword argument(s) {', '.join(parts)}; it accepts {', '.join(known)}.")


# The programs whose fit/evaluate/predict the current task is inside (a hook's code runs
# in the fit's task, so it sees the fit's entry here).
_INSIDE: contextvars.ContextVar[frozenset] = contextvars.ContextVar("asyncfit_inside", default=frozenset())


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        more = " or None" if allow_none else ""
        raise ValueError(f"{name}={value!r} ({type(value).__name__}); it must be an integer >= {minimum}{more}.")


@keras.saving.register_keras_serializable(package="asyncfit")
class Program(keras.Model):
    """A Keras 3 model trained by an awaited loop with an ordered list of callbacks.

    Build it in any Keras style:

    - functional: `Program(inputs=inputs, outputs=outputs)`;
    - Sequential-like: `Program([layers.Dense(64), layers.Dense(1)])`;
    - subclassing: `class Net(Program)` with layers in `__init__` and a `call`.

    Then `compile(...)` and `await fit(...)`. See DESIGN.md for every hook.

    Example:
        ```python
        inputs = keras.Input((64,))
        outputs = keras.layers.Dense(10, activation="softmax")(inputs)
        program = Program(inputs=inputs, outputs=outputs)
        program.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        history = await program.fit(x, y, epochs=5, validation_split=0.2)
        ```
    """

    def __new__(cls, *args, **kwargs):
        # Pick the concrete class here rather than let Keras rewrite Program's bases
        # (keras.Model injects Functional into a subclass's hierarchy, for good).
        if cls is Program:
            if functional_init_arguments(args, kwargs):
                return super().__new__(FunctionalProgram)
            if (args and isinstance(args[0], (list, tuple))) or "layers" in kwargs:
                return super().__new__(SequentialProgram)
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._step_count = 0

    # -- compile -----------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, reward=None, **kwargs) -> None:
        """Configure training, as `keras.Model.compile`, plus `reward`.

        Args:
            optimizer: a Keras optimizer or its name.
            loss: a Keras loss (name, function or object). Give `loss` or `reward`, not both.
            metrics: Keras metrics.
            reward: a differentiable score `reward(y_true, y_pred)` to maximise. The loss
                becomes its negative; the reward is logged as `reward` / `val_reward`,
                and monitors in `mode="auto"` know that higher is better.
            **kwargs: passed to `keras.Model.compile`.
        """
        if loss is not None and reward is not None:
            raise ValueError("compile() got both loss= and reward=; give one: a loss to minimise or a reward to maximise.")
        if loss is None and reward is None:
            raise ValueError(
                "compile() needs loss= (to minimise, e.g. 'mse') or reward= (a score to maximise); got neither."
            )
        if reward is not None:
            if not callable(reward):
                raise TypeError(f"reward= must be a callable reward(y_true, y_pred); got {reward!r}.")
            loss = RewardLoss(reward)
            metrics = [RewardMetric(reward)] + list(metrics or [])
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        self.__dict__.pop("_asyncfit_compiled", None)  # compiled steps belong to the old config

    # Keras only restores the compile config on load when both are defined next to compile().
    def get_compile_config(self) -> dict:
        return super().get_compile_config()

    def compile_from_config(self, config: dict) -> None:
        from keras.src.saving import serialization_lib

        self.compile(**serialization_lib.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)  # so saved optimizer state can load

    # -- state -------------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        """Global optimizer step: monotonic across `fit` calls, restored on resume."""
        return self.__dict__.get("_step_count", 0)

    @step_count.setter
    def step_count(self, value: int) -> None:
        object.__setattr__(self, "_step_count", int(value))

    def jax_state_sync(self) -> None:
        """Write the running loop's state back into the variables (JAX keeps it outside)."""
        stepper = self.__dict__.get("_asyncfit_stepper")
        if stepper is not None:
            stepper.push()
        elif hasattr(super(), "jax_state_sync"):
            super().jax_state_sync()  # keras.Model's own (sync) fit/evaluate/predict on JAX

    def get_variables(self) -> list[np.ndarray]:
        """All variables' values as NumPy arrays (as `get_weights`)."""
        self.jax_state_sync()
        return self.get_weights()

    def set_variables(self, values: list) -> None:
        """Set all variables from `get_variables()`'s output."""
        self.jax_state_sync()
        self.set_weights(values)

    def save_variables(self, path: str) -> None:
        """Save the variables to `path`: a `.weights.h5` file (the one `save_weights`
        writes), or, on JAX, an `.orbax` folder written by orbax-checkpoint, where each
        process writes the shards its devices hold (for sharded variables: nothing is
        gathered on one host; every process must call it)."""
        self.jax_state_sync()
        path = os.fspath(path)
        if path.endswith(".orbax"):
            _require_jax_for_orbax(path)
            sharded_state.save_variables(path, self.weights)
            return
        cache_keras_skipsets()
        if not (self.built and path.endswith(".weights.h5") and "://" not in path and save_weights_file(self, path)):
            self.save_weights(path)

    def load_variables(self, path: str) -> None:
        """Load variables saved by `save_variables`; from an `.orbax` folder each value is
        laid out like its variable now (another device layout works too)."""
        self.jax_state_sync()
        path = os.fspath(path)
        if path.endswith(".orbax"):
            _require_jax_for_orbax(path)
            sharded_state.load_variables(path, self.weights)
            return
        cache_keras_skipsets()
        self.load_weights(path)

    def save(self, filepath, overwrite: bool = True, **kwargs) -> None:
        """Save the whole program (architecture, variables, optimizer, compile config) as `.keras`.

        The file is the one `keras.Model.save` writes; after the first save of a program, it is
        written without Keras' walk of the program (see `trainer.keras_saving`)."""
        self.jax_state_sync()
        cache_keras_skipsets()
        path = os.fspath(filepath) if isinstance(filepath, (str, os.PathLike)) else None
        if (path is not None and not kwargs and self.built and path.endswith(".keras") and "://" not in path
                and (overwrite or not os.path.exists(path)) and save_keras_file(self, path)):
            return
        super().save(filepath, overwrite=overwrite, **kwargs)

    def get_module(self, name: str):
        """The layer called `name`."""
        return self.get_layer(name)

    # -- checks before the first step -------------------------------------------------------
    def _require_compiled(self, method: str) -> None:
        if not self.compiled:
            raise RuntimeError(f"call program.compile(optimizer=..., loss=...) before {method}().")

    def _check_source(self, source: Source, with_targets: bool = True) -> None:
        """`_check_features` on the source's first batch (read here, off the event loop)."""
        batch = source.first_batch()
        self._check_features(batch if with_targets else (batch[0], None, None), with_targets)

    def _check_features(self, batch, with_targets: bool = True) -> None:
        """Build the program on a symbolic batch; data that does not fit fails here, before any step.

        With `with_targets`, the loss, metrics and optimizer are built too (fit, evaluate)."""
        x = batch[0]
        if isinstance(self, Functional):
            expected = self._inputs_struct
            flat_expected = tree.flatten(expected)
            if isinstance(expected, dict) and isinstance(x, dict):
                missing = sorted(set(expected) - set(x))
                if missing:
                    raise ValueError(f"x is missing program input(s) {missing}; x has {sorted(x)}.")
                flat_x = [x[k] for k in expected]
            else:
                flat_x = tree.flatten(x)
            if len(flat_x) != len(flat_expected):
                raise ValueError(
                    f"the program has {len(flat_expected)} input(s) but x gives {len(flat_x)} array(s)."
                )
            for got, want in zip(flat_x, flat_expected):
                got_shape, want_shape = tuple(got.shape[1:]), tuple(want.shape[1:])
                if len(got_shape) != len(want_shape) or any(
                    w is not None and g != w for g, w in zip(got_shape, want_shape)
                ):
                    raise ValueError(
                        f"the features do not fit the program's input {want.name!r}: each sample "
                        f"has shape {got_shape}, the program expects {want_shape}."
                    )
        try:
            if self.compiled and with_targets:
                with host_constant_initializers():  # the optimizer's zeros without compiling
                    self._symbolic_build(data_batch=batch)
            if not isinstance(self, Functional) or not with_targets:
                spec = tree.map_structure(
                    lambda a: keras.KerasTensor((None,) + tuple(a.shape[1:]), keras.backend.standardize_dtype(a.dtype)),
                    x,
                )
                keras.src.backend.compute_output_spec(self, spec, training=False)
        except (ValueError, RuntimeError, TypeError) as error:
            text = str(error)
            for part in ("loss", "metric"):
                if f"interpret {part}" in text or f"Unknown {part}" in text:
                    raise ValueError(f"compile({'loss' if part == 'loss' else 'metrics'}=...) names something Keras "
                                     f"does not know: {text}") from error
            raise ValueError(f"the features do not fit the program: {error}") from error
        if with_targets and getattr(self, "optimizer", None) is not None and not self.optimizer.built:
            with host_constant_initializers():
                self.optimizer.build(self.trainable_variables)

    def expected_log_keys(self, evaluators: tuple[str, ...] = ()) -> list[str]:
        """The keys that `fit` will log, known once the program is built."""
        self.jax_state_sync()
        keys = self._metrics_result_keys()
        full = list(keys)
        for name in evaluators:
            prefix = "val_" if name == "val" else f"val_{name}_"
            full += [prefix + key for key in keys]
        return full

    def _metrics_result_keys(self) -> list:
        """`get_metrics_result()`'s keys, without computing it where that costs compiles.

        On JAX each eager op compiles on first use: computing the results (divide_no_nan)
        took three compiles, ~80 ms of a fit's start, to learn a few names."""
        if keras.backend.backend() == "jax":
            import jax

            traced: list = []  # the dict as built (eval_shape's output would come back key-sorted)
            try:
                jax.eval_shape(lambda: traced.append(self.get_metrics_result()) or 0)
                return list(traced[0])
            except Exception:  # a metric that needs concrete values: compute them
                pass
        return list(self.get_metrics_result())

    # -- one call at a time -------------------------------------------------------------------
    @contextlib.contextmanager
    def _one_call(self, method: str):
        """Refuse a second fit/evaluate/predict while one runs, except evaluate and predict
        called from inside the running call (a hook): those run on the current variables
        and leave the running call's metrics as they were. Yields True when nested."""
        running = self.__dict__.get("_asyncfit_running")
        inside = id(self) in _INSIDE.get()
        if running is not None and not (inside and method != "fit"):
            where = " from a hook of the running fit" if inside else ""
            hint = "" if inside else "; evaluate() and predict() may be called from its hooks"
            raise RuntimeError(
                f"{method}() was called{where} while this program's {running}() is running; a program runs one "
                f"fit / evaluate / predict at a time. Await the running call first{hint}.")
        if running is not None:  # nested in a hook: keep the running call's metric state
            self.jax_state_sync()
            saved = [keras.ops.convert_to_numpy(v.value).copy() for v in self.metrics_variables]
            try:
                yield True
            finally:
                for variable, value in zip(self.metrics_variables, saved):
                    variable.assign(value)
            return
        object.__setattr__(self, "_asyncfit_running", method)
        token = _INSIDE.set(_INSIDE.get() | {id(self)})
        try:
            yield False
        finally:
            _INSIDE.reset(token)
            self.__dict__.pop("_asyncfit_running", None)

    # -- fit / evaluate / predict ------------------------------------------------------------
    async def fit(self, x=None, y=None, *, batch_size: int = 32, epochs: int = 1, verbose="auto",
                  callbacks: list | None = None, validation_split: float = 0.0, validation_data=None,
                  shuffle: bool = True, seed: int | None = None, initial_epoch: int = 0,
                  steps_per_epoch: int | None = None, validation_freq: int = 1, max_attempts: int = 100,
                  **unknown) -> History:
        """Train the program; returns a `History`.

        Args:
            x, y: training data: NumPy arrays, dicts of arrays, pandas objects, lists;
                or (with y=None) a generator, iterable, async iterable or
                `keras.utils.PyDataset` of `(x, y)` / `(x, y, sample_weight)` batches.
            batch_size: samples per step for array data.
            epochs: index of the last epoch (as Keras: training runs epochs
                `initial_epoch` .. `epochs - 1`).
            verbose: 0 silent, 1 a bar per batch, 2 a line per epoch, "auto".
            callbacks: `Callback`s, `keras.callbacks.Callback`s, or callables
                `(step, logs, program) -> bool` (False stops training).
            validation_split: fraction of array data, taken from the end before
                shuffling, used for validation.
            validation_data: `(x, y)` or a dict `{name: (x, y)}` of named evaluators,
                logged as `val_{name}_{metric}`.
            shuffle: shuffle array data each epoch. With `seed`, the order is the same every run.
            seed: seed of the shuffling order (a random one is drawn and kept in
                `params["seed"]` when None).
            initial_epoch: epoch to start at.
            steps_per_epoch: batches per epoch (default: all of them).
            validation_freq: validate every this many epochs.
            max_attempts: how many times one step may be rejected by
                `on_compute_update_end` before `fit` fails.
        """
        if unknown:
            raise _unknown_keywords("fit", unknown, FIT_KEYWORDS)
        with self._one_call("fit"), closing_sources():
            return await self._fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks,
                                   validation_split=validation_split, validation_data=validation_data,
                                   shuffle=shuffle, seed=seed, initial_epoch=initial_epoch,
                                   steps_per_epoch=steps_per_epoch, validation_freq=validation_freq,
                                   max_attempts=max_attempts)

    async def _fit(self, x, y, *, batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle,
                   seed, initial_epoch, steps_per_epoch, validation_freq, max_attempts) -> History:
        if callbacks is not None and not isinstance(callbacks, (list, tuple)):
            raise TypeError(f"callbacks= must be a list; got {type(callbacks).__name__}.")
        self._require_compiled("fit")
        _check_int("batch_size", batch_size, 1)
        _check_int("epochs", epochs, 1)
        _check_int("initial_epoch", initial_epoch, 0)
        if epochs < initial_epoch:
            raise ValueError(
                f"epochs={epochs} is less than initial_epoch={initial_epoch}; epochs is the index of the "
                f"last epoch to reach, so pass epochs >= initial_epoch."
            )
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split={validation_split!r} ({type(validation_split).__name__}); it must be "
                             "a number in [0, 1).")
        if not isinstance(shuffle, (bool, np.bool_)):
            raise ValueError(f"shuffle={shuffle!r}; it must be True or False (Keras' shuffle='batch' is not "
                             "supported: arrays are shuffled by sample).")
        if seed is not None:
            _check_int("seed", seed, 0)
        if validation_split and validation_data is not None:
            raise ValueError("give validation_split or validation_data, not both.")
        _check_int("validation_freq", validation_freq, 1)
        _check_int("max_attempts", max_attempts, 1)
        _check_int("steps_per_epoch", steps_per_epoch, 1, allow_none=True)
        verbose = resolve_verbose(verbose)
        if seed is None:  # drawn once for all processes training together
            seed = agree(int(np.random.SeedSequence().entropy % (2**31)))

        source = await _source(x, y, batch_size=batch_size, shuffle=shuffle, seed=seed,
                               steps_per_epoch=steps_per_epoch)
        if validation_split:
            if not isinstance(source, ArraySource):
                raise ValueError(
                    f"validation_split needs array data, not a {type(x).__name__}; pass validation_data instead."
                )
            source, val_source = source.split(validation_split)
            validation = {"val": val_source}
        else:
            validation = await in_worker_thread(self._validation_sources, validation_data, batch_size)
        await on_backend_thread(self._check_source, source)
        for name, val_source in ({} if validation_split else validation).items():  # fails here, not after an epoch
            if isinstance(val_source, AsyncIterableSource):
                await val_source.prime()
            try:
                await on_backend_thread(self._check_source, val_source)
            except ValueError as error:
                what = "validation_data" if name == "val" else f"validation_data[{name!r}]"
                raise ValueError(f"{what}: {error}") from error
        # Eager metric reads compile small ops on first use: keep them off the event loop.
        log_keys = await on_backend_thread(self.expected_log_keys, tuple(validation))
        history = History()
        callback_list = self._callback_list([history, *with_monitor(callbacks)], verbose)
        params = {
            "epochs": epochs, "steps": source.steps(), "batch_size": batch_size, "verbose": verbose,
            "initial_epoch": initial_epoch, "seed": seed, "shuffle": shuffle,
            "validation_freq": validation_freq, "do_validation": bool(validation),
            "evaluators": tuple(validation), "log_keys": log_keys,
        }
        callback_list.set_params(params)
        _check_monitors(callback_list, params["log_keys"])
        run = RunState(epochs=epochs, seed=seed, source=source, validation=validation)
        await Engine(self, callback_list).fit(run, initial_epoch=initial_epoch, validation_freq=validation_freq,
                                              max_attempts=max_attempts)
        self.history = history
        return history

    def _validation_sources(self, validation_data, batch_size: int) -> dict[str, Source]:
        if validation_data is None:
            return {}
        if isinstance(validation_data, list):
            validation_data = tuple(validation_data)  # Keras takes [x_val, y_val] as (x_val, y_val)
        if isinstance(validation_data, dict):  # named evaluators {name: (x, y)}
            validation_data = {name: tuple(data) if isinstance(data, list) else data
                               for name, data in validation_data.items()}
            for name, data in validation_data.items():
                if isinstance(data, Benchmark):
                    if data.y is None:
                        raise ValueError(f"validation_data[{name!r}] is a Benchmark without y; a named evaluator "
                                         "needs targets to score (Experiment(benchmarks=...) takes one without).")
                    continue
                if not isinstance(data, tuple):
                    raise ValueError(
                        f"validation_data[{name!r}] is a {type(data).__name__}; a dict of validation data "
                        "maps evaluator names to (x, y) tuples."
                    )
            return {name: self._one_validation(data, batch_size) for name, data in validation_data.items()}
        return {"val": self._one_validation(validation_data, batch_size)}

    @staticmethod
    def _one_validation(data, batch_size: int) -> Source:
        if isinstance(data, Benchmark):
            source = make_source(data.x, data.y, batch_size=data.batch_size or batch_size)
            source.benchmark = data  # scored with its predictions at every validation (trainer/benchmark.py)
            return source
        if isinstance(data, tuple):
            if len(data) not in (2, 3):
                raise ValueError(f"validation_data must be (x, y) or (x, y, sample_weight); got {len(data)} items.")
            return make_source(data[0], data[1], sample_weight=data[2] if len(data) == 3 else None,
                               batch_size=batch_size)
        return make_source(data, batch_size=batch_size)

    def _callback_list(self, callbacks: list, verbose: int) -> CallbackList:
        entries = list(callbacks)
        if verbose and not any(isinstance(cb, keras.callbacks.ProgbarLogger) for cb in entries):
            entries.append(ProgressBar(verbose=verbose))  # as Keras: a user's ProgbarLogger replaces ours
        return CallbackList(entries, program=self)

    async def evaluate(self, x=None, y=None, *, batch_size: int = 32, verbose="auto", callbacks=None,
                       steps: int | None = None, return_dict: bool = True, return_digest: bool = False,
                       digest_every: int | None = None, **unknown):
        """Evaluate on `x`, `y`; returns `{metric: value}` (same inputs as `fit`).

        `return_dict=False` gives Keras' other form: the loss alone when nothing else
        is logged, else the list of values in the logged order.

        `return_digest=True` returns a `trainer.Digest` instead: mean, variance and a
        standard error corrected for correlated batches (blocking) of every logged name,
        from the per-batch values. `digest_every=N` fires `on_digest(digest)` on the
        callbacks every N batches with the running digest (`final=False`) and once at the
        end (`final=True`). Without either, nothing extra is computed."""
        if unknown:
            raise _unknown_keywords("evaluate", unknown, ("batch_size", "verbose", "callbacks", "steps",
                                                          "return_dict", "return_digest", "digest_every"))
        _check_int("digest_every", digest_every, 1, allow_none=True)
        with self._one_call("evaluate"), closing_sources():
            logs = await self._evaluate(x, y, batch_size=batch_size, verbose=verbose, callbacks=callbacks,
                                        steps=steps, digest=bool(return_digest) or digest_every is not None,
                                        digest_every=digest_every)
        if return_digest:
            return logs[1]
        if isinstance(logs, tuple):
            logs = logs[0]
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    async def _evaluate(self, x, y, *, batch_size, verbose, callbacks, steps, digest=False, digest_every=None):
        self._require_compiled("evaluate")
        _check_int("batch_size", batch_size, 1)
        self.jax_state_sync()  # called from a callback mid-fit: start from the live variables
        _check_int("steps", steps, 1, allow_none=True)
        source = await _source(x, y, batch_size=batch_size, steps_per_epoch=steps)
        await on_backend_thread(self._check_source, source)
        verbose = resolve_verbose(verbose)
        callback_list = CallbackList([*with_monitor(callbacks), *([ProgressBar(verbose)] if verbose else [])],
                                     program=self)
        callback_list.set_params({"steps": source.steps(), "batch_size": batch_size, "verbose": verbose})
        engine = Engine(self, callback_list)
        logs = await engine.evaluate(source, digest=digest, digest_every=digest_every)
        engine.stepper.push()
        return logs

    async def predict(self, x=None, *, batch_size: int = 32, verbose="auto", callbacks=None,
                      steps: int | None = None, **unknown):
        """Outputs for `x` as NumPy arrays (same input kinds as `fit`)."""
        if unknown:
            raise _unknown_keywords("predict", unknown, ("batch_size", "verbose", "callbacks", "steps"))
        with self._one_call("predict"), closing_sources():
            return await self._predict(x, batch_size=batch_size, verbose=verbose, callbacks=callbacks, steps=steps)

    async def _predict(self, x, *, batch_size, verbose, callbacks, steps):
        _check_int("batch_size", batch_size, 1)
        self.jax_state_sync()
        _check_int("steps", steps, 1, allow_none=True)
        source = await _source(x, batch_size=batch_size, steps_per_epoch=steps)
        await on_backend_thread(self._check_source, source, False)
        verbose = resolve_verbose(verbose)
        callback_list = CallbackList(with_monitor(callbacks), program=self)
        callback_list.set_params({"steps": source.steps(), "batch_size": batch_size, "verbose": verbose})
        return await Engine(self, callback_list).predict(source)


async def _source(x, y=None, **options) -> Source:
    """`make_source` in a worker thread (it reads a generator's first batch and copies
    arrays), the first batch of an async iterable awaited here."""
    source = await in_worker_thread(functools.partial(make_source, x, y, **options))
    if isinstance(source, AsyncIterableSource):
        await source.prime()
    return source


def _check_monitors(callback_list: CallbackList, keys: list[str]) -> None:
    """Every callback with a `monitor=` checks its name against the keys fit will log."""
    for cb in callback_list:
        check = getattr(cb, "check_log_keys", None)
        if check is not None:
            check(keys)


@keras.saving.register_keras_serializable(package="asyncfit")
class FunctionalProgram(Program, Functional):
    """A `Program` built from `inputs` and `outputs` (created by `Program(inputs=..., outputs=...)`)."""

    def __init__(self, inputs, outputs, name=None, **kwargs):
        from keras.src.models.model import Trainer

        Trainer.__init__(self)
        Functional.__init__(self, inputs, outputs, name=name, **kwargs)
        self._step_count = 0

    @classmethod
    def from_config(cls, config, custom_objects=None):
        from keras.src.models.functional import functional_from_config

        return functional_from_config(cls, config, custom_objects=custom_objects)


@keras.saving.register_keras_serializable(package="asyncfit")
class SequentialProgram(Program, keras.Sequential):
    """A `Program` that is a stack of layers (created by `Program([layer, ...])`)."""

    def __init__(self, layers=None, trainable: bool = True, name=None):
        keras.Sequential.__init__(self, layers=layers, trainable=trainable, name=name)
        self._step_count = 0


def _require_jax_for_orbax(path: str) -> None:
    if keras.backend.backend() != "jax":
        raise ValueError(f"{path!r}: `.orbax` folders hold JAX arrays; on the {keras.backend.backend()} backend "
                         "save variables to a `.weights.h5` file.")
