"""Reading synchronous data sources off the event loop's thread.

`Prefetch` runs a source's batch iterator in a thread of its own, a bounded number of
batches ahead, so the next batch loads while the current step runs and a slow read
never blocks the loop. `ordered_items` computes `getitem(i)` for a list of indices
with a pool of threads or processes and gives the results in order (a
`keras.utils.PyDataset` with `workers`).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from typing import Any, Callable, Iterable, Iterator

from callbacks.threads import in_worker_thread

_END = object()


class Prefetch:
    """Iterate `iterator` in a thread, up to `depth` items ahead.

    The event loop awaits `__anext__`; the torch/TensorFlow backend thread, which runs
    several steps per hand-off, may call `__next__` (blocking). An exception raised by
    the source is raised to the consumer unchanged, at the position where it happened.
    `aclose()` stops the reader, waits for the read in progress (a thread cannot be
    stopped halfway) and closes the iterator (a generator's `finally` runs, so pools it
    started are shut down). With `state`, a callable run in the reader after each item
    (a grain iterator's `get_state`), `self.state` is the state after the last item
    consumed: where a resumed run starts.
    """

    def __init__(self, iterator: Iterator, depth: int, *, name: str = "asyncfit-prefetch",
                 state: Callable[[], Any] | None = None):
        self._iterator = iterator
        self._depth = max(1, int(depth))
        self._items: collections.deque = collections.deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._waiter: tuple | None = None  # (loop, future) of a consumer awaiting an item
        self._state_fn = state
        self.state = None
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    # -- the reader thread ------------------------------------------------------------------------
    def _read(self) -> None:
        try:
            while True:
                with self._changed:  # room first, then read: never more than `depth` read ahead
                    while len(self._items) >= self._depth and not self._stopping:
                        self._changed.wait()
                    if self._stopping:
                        return
                try:
                    item = next(self._iterator)
                except StopIteration:
                    break
                state = self._state_fn() if self._state_fn is not None else None
                with self._changed:
                    self._push((item, state, None))
            with self._changed:
                self._push((_END, None, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            with self._changed:
                self._push((_END, None, error))
        finally:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing after an error: the first error is what counts
                    pass

    def _push(self, entry: tuple) -> None:
        """Append an entry and wake the consumer (called with `_changed` held)."""
        self._items.append(entry)
        self._changed.notify_all()
        if self._waiter is not None:
            loop, future = self._waiter
            self._waiter = None
            try:
                loop.call_soon_threadsafe(_set_done, future)
            except RuntimeError:
                pass  # the loop is closed: nobody awaits any more

    # -- the consumer ------------------------------------------------------------------------------
    def _take(self) -> Any:
        """The next entry's item (called with `_changed` held and an entry there)."""
        item, state, error = self._items[0]
        if item is _END:
            if error is not None:
                self._items[0] = (_END, None, None)  # raised once; after that, the end
                raise error
            raise StopIteration
        self._items.popleft()
        self._changed.notify_all()
        if self._state_fn is not None:
            self.state = state
        return item

    def __iter__(self) -> "Prefetch":
        return self

    def __next__(self) -> Any:
        with self._changed:
            while not self._items:
                self._changed.wait()
            return self._take()

    def __aiter__(self) -> "Prefetch":
        return self

    async def __anext__(self) -> Any:
        while True:
            with self._changed:
                if self._items:
                    try:
                        return self._take()
                    except StopIteration:
                        raise StopAsyncIteration from None
                loop = asyncio.get_running_loop()
                future = loop.create_future()
                self._waiter = (loop, future)
            await future

    # -- stopping -----------------------------------------------------------------------------------
    def _stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._items.clear()
            self._changed.notify_all()

    def close(self) -> None:
        """Stop reading and wait for the reader thread to end (blocking)."""
        self._stop()
        self._thread.join()

    async def aclose(self) -> None:
        """`close()` without blocking the event loop; a cancellation meanwhile is raised
        once the reader has ended."""
        self._stop()
        if self._thread.is_alive():
            await in_worker_thread(self._thread.join)


def _set_done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


# -- a pool that keeps the order -------------------------------------------------------------------
_WORKER_GETITEM: Callable | None = None  # in a worker process: the dataset's __getitem__


def _init_worker(getitem: Callable) -> None:
    global _WORKER_GETITEM
    _WORKER_GETITEM = getitem


def _item_in_worker(index: int) -> Any:
    return _WORKER_GETITEM(index)


def ordered_items(getitem: Callable[[int], Any], indices: Iterable[int], *, workers: int,
                  use_multiprocessing: bool, max_queue_size: int) -> Iterator[Any]:
    """`getitem(i)` for each `i` of `indices`, in that order, computed by `workers` threads
    (or processes) with up to `max_queue_size` requests in flight.

    Processes are started with multiprocessing's default context, as Keras' own
    PyDataset workers are, and receive `getitem` once, when they start (a fork
    inherits it). The pool is shut down, its threads or processes joined, when the
    generator ends or is closed."""
    if use_multiprocessing:
        pool = concurrent.futures.ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(getitem,))
        task = _item_in_worker
    else:
        pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="asyncfit-pydataset")
        task = getitem
    pending: collections.deque = collections.deque()
    indices = iter(indices)
    try:
        for index in indices:
            pending.append(pool.submit(task, index))
            if len(pending) >= max_queue_size:
                break
        while pending:
            result = pending.popleft().result()
            for index in indices:  # one more request in flight for the one done
                pending.append(pool.submit(task, index))
                break
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
