"""Data adapters: every supported input becomes a `Source` of `(x, y, sample_weight)` batches.

Array-like inputs (NumPy, dicts of arrays, pandas, lists) are held in memory; an
epoch's order is a permutation drawn from `(seed, epoch)`, so it is the same every
time and a run can resume at any batch of any epoch. `keras.utils.PyDataset`,
iterables, generators, `tf.data.Dataset`, `torch.utils.data.DataLoader` and grain
datasets stream batches: `Source.open` reads them in a thread of their own, a bounded
number of batches ahead (`trainer.prefetch`). Async iterables stay on the event loop.
"""
from __future__ import annotations

import base64
import contextlib
import contextvars
import inspect
import itertools
import json
import math
from typing import Any, AsyncIterator, Iterator

import keras
import numpy as np
from keras import tree

from trainer.prefetch import Prefetch, ordered_items

Batch = tuple  # (x, y, sample_weight)
PREFETCH_DEPTH = 4  # batches read ahead of the step for streamed sources (PyDataset: its max_queue_size)


def _to_array(value: Any) -> np.ndarray:
    if hasattr(value, "to_numpy"):  # pandas DataFrame / Series
        value = value.to_numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise ValueError(
            f"could not turn the data into a numeric array (got dtype=object from "
            f"{type(value).__name__}); pass NumPy arrays, DataFrames or lists of numbers."
        )
    if np.issubdtype(array.dtype, np.floating) and array.dtype != np.dtype(keras.config.floatx()):
        array = array.astype(keras.config.floatx())  # as Keras' adapters do
    return array


def standardize_arrays(data: Any) -> Any:
    """Arrays, dicts/lists of arrays and pandas objects -> a structure of np.ndarrays."""
    if data is None:
        return None
    if isinstance(data, dict):
        return {key: _to_array(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)) and data and all(
        isinstance(item, np.ndarray) or hasattr(item, "to_numpy") for item in data
    ):
        return tuple(_to_array(item) for item in data)  # one array per program input
    return _to_array(data)


def is_array_like(data: Any) -> bool:
    if isinstance(data, list) and data and isinstance(data[0], tuple):
        return False  # a list of (x, y) batches
    if isinstance(data, (np.ndarray, list, tuple)) or hasattr(data, "to_numpy"):
        return True
    if isinstance(data, dict):
        return all(isinstance(v, (np.ndarray, list)) or hasattr(v, "to_numpy") for v in data.values())
    return hasattr(data, "__array__") and not isinstance(data, keras.utils.PyDataset)


def _num_samples(structure: Any) -> int:
    return len(tree.flatten(structure)[0])


def _foreign_to_numpy(value: Any) -> Any:
    """A torch or TensorFlow tensor given to another backend -> a NumPy array (as Keras'
    adapters convert them); anything else as it is."""
    module = type(value).__module__
    if module.startswith("torch") and keras.backend.backend() != "torch":
        return value.detach().cpu().numpy()
    if module.startswith("tensorflow") and keras.backend.backend() != "tensorflow":
        return value.numpy()
    return value


def unpack_batch(item: Any) -> Batch:
    """A streamed element -> `(x, y, sample_weight)` (as Keras accepts them: a list is
    taken as a tuple; torch/TensorFlow tensors meant for another backend become arrays)."""
    if isinstance(item, list):
        item = tuple(item)
    item = tree.map_structure(_foreign_to_numpy, item)
    if isinstance(item, tuple):
        if len(item) == 1:
            return (item[0], None, None)
        if len(item) == 2:
            return (item[0], item[1], None)
        if len(item) == 3:
            return item
        raise ValueError(
            f"a batch must be x, (x,), (x, y) or (x, y, sample_weight); got a tuple of {len(item)} items."
        )
    return (item, None, None)


class Source:
    """Batches for one `fit`/`evaluate`/`predict` call."""

    is_async = False
    # Why a resumed run cannot start exactly at the batch where it stopped (the epoch then
    # restarts, with a warning); None when it can.
    inexact_resume: str | None = None

    def steps(self) -> int | None:
        """Batches per epoch, or None when unknown."""
        raise NotImplementedError

    def first_batch(self) -> Batch:
        """One batch, for building and checking the program before the first step."""
        raise NotImplementedError

    def epoch(self, epoch: int, start_batch: int = 0):
        """An iterator (or async iterator when `is_async`) over one epoch's batches."""
        raise NotImplementedError

    # Reads ahead in threads of its own (tf.data): a consumer off the event loop (the
    # torch/TensorFlow backend thread) may then read it directly.
    reads_ahead_itself = False

    def open(self, epoch: int, start_batch: int = 0, state: Any = None, *, off_loop_consumer: bool = False):
        """What the loop reads one epoch from: by default `epoch()` read ahead in a thread
        (a `Prefetch`, which the loop closes when it is done with it). `state` is what a
        `Prefetch.state` held when a backup was taken (grain's iterator state).
        `off_loop_consumer`: the batches are taken off the event loop's thread."""
        if off_loop_consumer and self.reads_ahead_itself:
            return self.epoch(epoch, start_batch)
        return Prefetch(self.epoch(epoch, start_batch), PREFETCH_DEPTH, name=f"asyncfit-read-{type(self).__name__}")

    def fingerprint(self) -> dict:
        return {"kind": type(self).__name__}

    def close(self) -> None:
        """Let go of what the source holds between epochs (a grain iterator kept from
        `first_batch`); called when the fit/evaluate/predict call ends, however it ends."""


class ArraySource(Source):
    """In-memory arrays; shuffled per epoch by a permutation drawn from (seed, epoch)."""

    def __init__(self, x: Any, y: Any = None, sample_weight: Any = None, *, batch_size: int = 32,
                 shuffle: bool = False, seed: int = 0, steps_per_epoch: int | None = None):
        self.x = standardize_arrays(x)
        self.y = standardize_arrays(y)
        self.sample_weight = standardize_arrays(sample_weight)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_samples = _num_samples(self.x)
        self._check_lengths()
        full = math.ceil(self.num_samples / batch_size)
        if steps_per_epoch is not None and steps_per_epoch > full:
            raise ValueError(
                f"steps_per_epoch={steps_per_epoch} is more than the {full} batches of "
                f"{batch_size} that {self.num_samples} samples give; pass steps_per_epoch<={full} or None."
            )
        self._steps = steps_per_epoch or full
        self._prepared: tuple[int, Batch] | None = None  # (epoch, its gathered arrays), see prepare_epoch

    def _check_lengths(self) -> None:
        lengths = {}
        for name, part in (("x", self.x), ("y", self.y), ("sample_weight", self.sample_weight)):
            if part is not None:
                for leaf in tree.flatten(part):
                    lengths.setdefault(name, set()).add(len(leaf))
        all_lengths = set().union(*lengths.values())
        if len(all_lengths) > 1:
            detail = ", ".join(f"{k} has {sorted(v)}" for k, v in lengths.items())
            raise ValueError(
                f"x and y must have the same number of samples: {detail}. "
                "Pass arrays whose first dimensions agree."
            )
        if self.num_samples == 0:
            raise ValueError("the data is empty (0 samples); pass at least one sample.")

    def steps(self) -> int:
        return self._steps

    def order(self, epoch: int) -> np.ndarray | None:
        if not self.shuffle:
            return None
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        return rng.permutation(self.num_samples)

    def _take(self, index) -> Batch:
        def take(part):
            return None if part is None else tree.map_structure(lambda a: a[index], part)

        return (take(self.x), take(self.y), take(self.sample_weight))

    def first_batch(self) -> Batch:
        return self._take(slice(0, self.batch_size))

    def epoch_gather_bytes(self) -> int:
        """How many bytes an epoch's shuffle copies (0 without shuffling)."""
        if not self.shuffle:
            return 0
        return sum(leaf.nbytes for part in (self.x, self.y, self.sample_weight) if part is not None
                   for leaf in tree.flatten(part))

    def prepare_epoch(self, epoch: int) -> None:
        """Gather this epoch's order now, for the next `epoch`/`epoch_chunks` call (the loop
        runs this in a worker thread for large data)."""
        self._prepared = (epoch, self._gather(epoch))

    def _gather(self, epoch: int) -> Batch:
        order = self.order(epoch)
        return (self.x, self.y, self.sample_weight) if order is None else self._take(order)

    def _epoch_arrays(self, epoch: int) -> Batch:
        """The data in this epoch's order, gathered once: each batch is then a cheap view."""
        prepared, self._prepared = self._prepared, None  # taken once: no second copy kept
        if prepared is not None and prepared[0] == epoch:
            return prepared[1]
        return self._gather(epoch)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        x, y, sw = self._epoch_arrays(epoch)
        bs = self.batch_size

        def view(part, lo, hi):
            if part is None:
                return None
            if type(part) is np.ndarray:  # the common case, without a tree walk
                return part[lo:hi]
            return tree.map_structure(lambda a: a[lo:hi], part)

        for i in range(start_batch, self._steps):
            lo, hi = i * bs, min((i + 1) * bs, self.num_samples)
            yield (view(x, lo, hi), view(y, lo, hi), view(sw, lo, hi))

    def open(self, epoch: int, start_batch: int = 0, state: Any = None, *,
             off_loop_consumer: bool = False) -> Iterator[Batch]:
        return self.epoch(epoch, start_batch)  # views of memory: nothing to read ahead

    def can_chunk(self) -> bool:
        """Whether batches can be stacked as views: plain arrays, no dict/tuple structure."""
        return all(part is None or type(part) is np.ndarray for part in (self.x, self.y, self.sample_weight))

    def epoch_chunks(self, epoch: int, start_batch: int, size: int):
        """Like `epoch`, but runs of `size` full batches come stacked, as ("chunk", (xs, ys, sws))
        with a leading axis of `size` (views, no copy); the rest come as ("batch", batch)."""
        x, y, sw = self._epoch_arrays(epoch)
        bs, n = self.batch_size, self.num_samples
        full = min(self._steps, n // bs)
        i = start_batch
        while i + size <= full:
            lo, hi = i * bs, (i + size) * bs

            def stack(part):
                return None if part is None else part[lo:hi].reshape((size, bs) + part.shape[1:])

            yield "chunk", (stack(x), stack(y), stack(sw))
            i += size
        while i < self._steps:
            lo, hi = i * bs, min((i + 1) * bs, n)
            yield "batch", tuple(None if part is None else part[lo:hi] for part in (x, y, sw))
            i += 1

    def split(self, fraction: float) -> tuple["ArraySource", "ArraySource"]:
        """The last `fraction` of samples (before shuffling) become validation, as in Keras
        (which rounds the training part down, so any fraction > 0 validates on >= 1 sample)."""
        n_train = int(math.floor(self.num_samples * (1.0 - fraction)))
        n_val = self.num_samples - n_train
        if n_val == 0 or n_train == 0:
            raise ValueError(
                f"validation_split={fraction} of {self.num_samples} samples leaves "
                f"{n_train} for training and {n_val} for validation; both need at least one. "
                "Pick a split strictly between 0 and 1 that leaves samples on both sides."
            )

        def part(lo, hi):
            def cut(p):
                return None if p is None else tree.map_structure(lambda a: a[lo:hi], p)
            return cut(self.x), cut(self.y), cut(self.sample_weight)

        train = ArraySource(*part(0, n_train), batch_size=self.batch_size, shuffle=self.shuffle, seed=self.seed)
        val = ArraySource(*part(n_train, self.num_samples), batch_size=self.batch_size)
        return train, val

    def fingerprint(self) -> dict:
        leaves = [leaf for leaf in tree.flatten((self.x, self.y, self.sample_weight)) if leaf is not None]
        # 1024 rows spread over the whole data (first and last included), so a change anywhere
        # in a large part of it shows.
        rows = np.unique(np.linspace(0, self.num_samples - 1, num=min(1024, self.num_samples)).astype(np.int64))
        sample = [np.ascontiguousarray(np.asarray(leaf)[rows]).tobytes() for leaf in leaves]
        import hashlib

        return {
            "kind": "arrays",
            "length": self.num_samples,
            "shapes": [list(leaf.shape[1:]) for leaf in leaves],
            "dtypes": [str(leaf.dtype) for leaf in leaves],
            "sample_hash": hashlib.sha256(b"".join(sample)).hexdigest()[:16],
            "batch_size": self.batch_size,
            "shuffle": bool(self.shuffle),
            "steps_per_epoch": self._steps,
        }


class PyDatasetSource(Source):
    """`keras.utils.PyDataset`: `num_batches` (or `len()`) batches, `ds[i]`,
    `on_epoch_begin()` / `on_epoch_end()`.

    The batch order is drawn from `(seed, epoch)` (shuffled or not), so a resumed run
    starts exactly where it stopped. `workers`, `use_multiprocessing` and
    `max_queue_size` are honoured as in Keras: with `workers > 1` (or processes), a pool
    computes up to `max_queue_size` batches at once and they come in order; otherwise one
    reader thread reads up to `max_queue_size` batches ahead. A dataset whose
    `num_batches` is None (infinite) needs `steps_per_epoch`; epoch `e` then reads
    indices `e * steps_per_epoch` onwards, as Keras' running index does.
    """

    def __init__(self, dataset: keras.utils.PyDataset, *, shuffle: bool = False, seed: int = 0,
                 steps_per_epoch: int | None = None):
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = seed
        workers = getattr(dataset, "workers", 1)
        max_queue_size = getattr(dataset, "max_queue_size", 10)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"the PyDataset's workers={workers!r}; it must be an int >= 0 (1: read in one thread).")
        if isinstance(max_queue_size, bool) or not isinstance(max_queue_size, int) or max_queue_size < 1:
            raise ValueError(f"the PyDataset's max_queue_size={max_queue_size!r}; it must be an int >= 1.")
        self.workers, self.max_queue_size = workers, max_queue_size
        self.use_multiprocessing = bool(getattr(dataset, "use_multiprocessing", False))
        n = dataset.num_batches
        if n is None and steps_per_epoch is None:
            raise ValueError("the PyDataset has num_batches=None (infinite); pass steps_per_epoch.")
        if n == 0:
            raise ValueError("the PyDataset is empty (len() == 0); it must give at least one batch.")
        self.num_batches = n
        self._steps = _epoch_steps(steps_per_epoch, n)

    def steps(self) -> int:
        return self._steps

    def first_batch(self) -> Batch:
        return unpack_batch(self.dataset[0])

    def indices(self, epoch: int, start_batch: int = 0) -> list[int]:
        """The dataset indices epoch `epoch` reads, from its batch `start_batch` on."""
        if self.num_batches is None:
            base = epoch * self._steps
            return list(range(base + start_batch, base + self._steps))
        order = np.arange(self.num_batches)
        if self.shuffle:
            order = np.random.default_rng(np.random.SeedSequence([self.seed, epoch])).permutation(order)
        return [int(i) for i in order[start_batch:self._steps]]

    @property
    def pooled(self) -> bool:
        """Whether a pool reads the batches (Keras' rule for starting its enqueuer)."""
        return self.workers > 1 or (self.workers > 0 and self.use_multiprocessing)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        dataset = self.dataset
        dataset.on_epoch_begin()
        indices = self.indices(epoch, start_batch)
        if self.pooled:
            items = ordered_items(dataset.__getitem__, indices, workers=self.workers,
                                  use_multiprocessing=self.use_multiprocessing, max_queue_size=self.max_queue_size)
        else:
            items = (dataset[i] for i in indices)
        try:
            for item in items:
                yield unpack_batch(item)
        finally:
            items.close()  # a pool's threads or processes end with the epoch, however it ends
        dataset.on_epoch_end()

    def fingerprint(self) -> dict:
        return {"kind": "PyDataset", "class": type(self.dataset).__name__, "batches": self.num_batches,
                "shuffle": bool(self.shuffle), "steps_per_epoch": self._steps}

    def open(self, epoch: int, start_batch: int = 0, state: Any = None, *,
             off_loop_consumer: bool = False) -> Prefetch:
        # A pool already holds max_queue_size batches in flight: one more ready is enough.
        depth = 1 if self.pooled else self.max_queue_size
        return Prefetch(self.epoch(epoch, start_batch), depth, name="asyncfit-read-PyDataset")


class IterableSource(Source):
    """Python iterables and generators of batches.

    A re-iterable object (a list of batches, an object whose `__iter__` gives a
    new iterator) starts again each epoch. A one-shot generator goes on where the
    previous epoch stopped; once it is exhausted, training ends with a warning,
    as in Keras. With `steps_per_epoch`, each epoch takes that many batches.
    """

    def __init__(self, iterable: Any, *, steps_per_epoch: int | None = None):
        self.iterable = iterable
        self.one_shot = iter(iterable) is iterable
        self._iterator = iter(iterable)
        self._steps = steps_per_epoch
        self._peeked: list = []
        try:
            self._peeked.append(next(self._iterator))
        except StopIteration:
            raise ValueError("the data is empty: the iterable gave no batch.") from None
        if steps_per_epoch is None and not self.one_shot:
            try:
                self._steps = len(iterable)
            except TypeError:  # no len(), or a tf.data.Dataset of infinite or unknown cardinality
                pass
        self.exhausted = False
        self.inexact_resume = self._why_inexact()
        self.reads_ahead_itself = _is_tf_dataset(iterable)

    def _why_inexact(self) -> str | None:
        name = type(self.iterable).__name__
        if self.one_shot:
            return f"a {name} (a one-shot iterator) cannot be rewound to a batch"
        sampler = getattr(self.iterable, "sampler", None)
        if sampler is not None and type(sampler).__name__ not in ("SequentialSampler", "_InfiniteConstantSampler"):
            return f"the {name}'s {type(sampler).__name__} draws a new order on every pass"
        return None  # a re-iterable: taken to give the same batches on every pass

    def steps(self) -> int | None:
        return self._steps

    def first_batch(self) -> Batch:
        return unpack_batch(self._peeked[0])

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        count = 0
        if self._peeked:
            iterator = itertools.chain(self._peeked, self._iterator)
            self._peeked = []
        elif self.one_shot:
            iterator = self._iterator
        elif start_batch and _is_tf_dataset(self.iterable):
            iterator, count = iter(self.iterable.skip(start_batch)), start_batch  # skipped inside tf.data
        else:
            iterator = iter(self.iterable)
        for item in iterator:
            if count >= start_batch:
                yield unpack_batch(item)
            count += 1
            if self._steps is not None and count >= self._steps:
                return
        if self.one_shot:
            self.exhausted = True


class AsyncIterableSource(Source):
    """Async iterables and async generators of batches (same epoch rules as IterableSource)."""

    is_async = True

    def __init__(self, iterable: Any, *, steps_per_epoch: int | None = None):
        self.iterable = iterable
        self._iterator = iterable.__aiter__()
        self.one_shot = self._iterator is iterable
        self._steps = steps_per_epoch
        self._peeked: list = []
        self.exhausted = False
        if self.one_shot:
            self.inexact_resume = (f"a {type(iterable).__name__} (a one-shot async iterator) cannot be rewound "
                                   "to a batch")

    async def prime(self) -> None:
        if not self._peeked:
            try:
                self._peeked.append(await self._iterator.__anext__())
            except StopAsyncIteration:
                raise ValueError("the data is empty: the async iterable gave no batch.") from None

    def steps(self) -> int | None:
        return self._steps

    def first_batch(self) -> Batch:
        return unpack_batch(self._peeked[0])

    def open(self, epoch: int, start_batch: int = 0, state: Any = None, *,
             off_loop_consumer: bool = False) -> AsyncIterator[Batch]:
        return self.epoch(epoch, start_batch)  # read on the event loop: it awaits its own I/O

    async def epoch(self, epoch: int, start_batch: int = 0) -> AsyncIterator[Batch]:
        if not self.one_shot and not self._peeked and epoch > 0:
            self._iterator = self.iterable.__aiter__()
        count = 0
        while self._steps is None or count < self._steps:
            if self._peeked:
                item = self._peeked.pop()
            else:
                try:
                    item = await self._iterator.__anext__()
                except StopAsyncIteration:
                    self.exhausted = self.one_shot
                    return
            if count >= start_batch:
                yield unpack_batch(item)
            count += 1


class GrainSource(Source):
    """A grain `MapDataset`, `IterDataset` or `DataLoader` of batches.

    Each epoch is a new pass (`iter(dataset)`), read ahead in a thread (grain's own
    prefetch and workers do the rest). A backup keeps the grain iterator's state after
    the last batch trained, so a resumed run starts exactly there."""

    def __init__(self, dataset: Any, *, steps_per_epoch: int | None = None):
        self.dataset = dataset
        try:
            length = len(dataset)
        except TypeError:
            length = None
        self._steps = _epoch_steps(steps_per_epoch, length)
        self._first: Batch | None = None
        # The iterator that gave the first batch, kept for the first epoch: a new grain
        # iterator starts its own read-ahead, which a discarded one would have wasted.
        self._peeked: tuple | None = None

    def steps(self) -> int | None:
        return self._steps

    def fingerprint(self) -> dict:
        return {"kind": "grain", "class": type(self.dataset).__name__, "steps_per_epoch": self._steps}

    def first_batch(self) -> Batch:
        if self._first is None:
            iterator = iter(self.dataset)
            try:
                item = next(iterator)
            except StopIteration:
                _close_grain_iterator(iterator)
                raise ValueError("the data is empty: the grain dataset gave no batch.") from None
            self._first = unpack_batch(item)
            self._peeked = (iterator, item)
        return self._first

    def _iterator(self, start_batch: int, state: Any):
        peeked, self._peeked = self._peeked, None
        if peeked is not None:
            if start_batch == 0 and state is None:
                return _Unread(*peeked)
            _close_grain_iterator(peeked[0])
        iterator = iter(self.dataset)
        if state is not None:
            iterator.set_state(_grain_state_from_json(state))
        else:
            for _ in range(start_batch):  # no state (a backup taken at an epoch's end): read up to the batch
                next(iterator)
        return iterator

    def _read(self, iterator, start_batch: int) -> Iterator[Batch]:
        try:
            limit = None if self._steps is None else self._steps - start_batch
            for item in itertools.islice(iterator, limit):
                yield unpack_batch(item)
        finally:
            _close_grain_iterator(iterator)

    def epoch(self, epoch: int, start_batch: int = 0, state: Any = None) -> Iterator[Batch]:
        return self._read(self._iterator(start_batch, state), start_batch)

    def close(self) -> None:
        peeked, self._peeked = self._peeked, None
        if peeked is not None:
            _close_grain_iterator(peeked[0])

    def open(self, epoch: int, start_batch: int = 0, state: Any = None, *,
             off_loop_consumer: bool = False) -> Prefetch:
        iterator = self._iterator(start_batch, state)
        return Prefetch(self._read(iterator, start_batch), PREFETCH_DEPTH, name="asyncfit-read-grain",
                        state=lambda: _grain_state_to_json(iterator.get_state()))


class _Unread:
    """A grain iterator with the item already taken from it put back in front."""

    def __init__(self, iterator, item):
        self.iterator, self.item = iterator, [item]

    def __iter__(self):
        return self

    def __next__(self):
        return self.item.pop() if self.item else next(self.iterator)

    def get_state(self):
        return self.iterator.get_state()

    def close(self):
        _close_grain_iterator(self.iterator)


def _epoch_steps(steps_per_epoch: int | None, length: int | None) -> int | None:
    """Batches per epoch: `steps_per_epoch` capped at the source's length, whichever is known."""
    if steps_per_epoch and length:
        return min(steps_per_epoch, length)
    return steps_per_epoch or length


def _close_grain_iterator(iterator) -> None:
    close = getattr(iterator, "close", None)  # a DataLoader's iterator stops its worker processes
    if close is not None:
        close()


def _grain_state_to_json(state: Any) -> Any:
    """A grain iterator state (a dict, or JSON bytes for a DataLoader) as JSON-able data."""
    if isinstance(state, bytes):
        return {"grain_bytes": base64.b64encode(state).decode("ascii")}
    return json.loads(json.dumps(state))


def _grain_state_from_json(state: Any) -> Any:
    if isinstance(state, dict) and set(state) == {"grain_bytes"}:
        return base64.b64decode(state["grain_bytes"])
    return state


def _is_tf_dataset(data: Any) -> bool:
    return type(data).__module__.startswith("tensorflow") and hasattr(data, "element_spec")


def _is_grain(data: Any) -> bool:
    if not type(data).__module__.startswith("grain"):
        return False
    import grain

    return isinstance(data, (grain.MapDataset, grain.IterDataset, grain.DataLoader))


_CALL_SOURCES: contextvars.ContextVar[list | None] = contextvars.ContextVar("asyncfit_call_sources", default=None)


@contextlib.contextmanager
def closing_sources():
    """Every source `make_source` makes inside this block is closed when it ends."""
    sources: list = []
    token = _CALL_SOURCES.set(sources)
    try:
        yield
    finally:
        _CALL_SOURCES.reset(token)
        for source in sources:
            source.close()


def make_source(x: Any, y: Any = None, **options) -> Source:
    """Pick the adapter for `x` (and `y`); see `_make_source`."""
    source = _make_source(x, y, **options)
    sources = _CALL_SOURCES.get()
    if sources is not None:
        sources.append(source)
    return source


def _make_source(x: Any, y: Any = None, *, batch_size: int, shuffle: bool = False, seed: int = 0,
                 steps_per_epoch: int | None = None, sample_weight: Any = None) -> Source:
    """Pick the adapter for `x` (and `y`)."""
    if x is None:
        raise ValueError("x is None; pass the training data as x (and y).")
    if isinstance(x, keras.utils.PyDataset):
        _no_y(x, y)
        return PyDatasetSource(x, shuffle=shuffle, seed=seed, steps_per_epoch=steps_per_epoch)
    if _is_grain(x):
        _no_y(x, y)
        return GrainSource(x, steps_per_epoch=steps_per_epoch)
    if hasattr(x, "__aiter__"):
        _no_y(x, y)
        return AsyncIterableSource(x, steps_per_epoch=steps_per_epoch)
    if inspect.isgenerator(x) or (not is_array_like(x) and hasattr(x, "__iter__")):
        _no_y(x, y)
        return IterableSource(x, steps_per_epoch=steps_per_epoch)
    return ArraySource(x, y, sample_weight, batch_size=batch_size, shuffle=shuffle, seed=seed,
                       steps_per_epoch=steps_per_epoch)


def _no_y(x: Any, y: Any) -> None:
    if y is not None:
        raise ValueError(
            f"y must be None when x is a {type(x).__name__}: the batches it gives carry "
            "their own targets as (x, y) or (x, y, sample_weight)."
        )
