"""Small process-wide helpers that the loop and the callbacks both use.

They live on the callbacks' side because imports run one way (`trainer` uses
`callbacks`, never the reverse): writers hand their file work to a worker thread with
`in_worker_thread`, and copy device logs to the host with `to_host`.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from typing import Any, Callable

import numpy as np


class SharedSetting:
    """A process-wide setting held while any user needs it: concurrent fits nest, and
    the last one out restores the original."""

    def __init__(self, apply: Callable[[], Any], restore: Callable[[Any], None]):
        self.apply, self.restore = apply, restore
        self.users = 0
        self.saved = None
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def held(self):
        with self.lock:
            if self.users == 0:
                self.saved = self.apply()
            self.users += 1
        try:
            yield
        finally:
            with self.lock:
                self.users -= 1
                if self.users == 0:
                    self.restore(self.saved)


def _fast_handoff() -> float:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, 0.0005))
    return previous


# A worker thread that runs Python for long (tracing, compiling, an eager step) holds the
# GIL; meanwhile the interpreter hands it over every 0.5 ms instead of 5 ms, so the event
# loop gets it back soon.
FAST_GIL_HANDOFF = SharedSetting(_fast_handoff, sys.setswitchinterval)


async def await_to_the_end(future: asyncio.Future) -> Any:
    """Await `future` (work running in another thread) to its end, even if the awaiting
    task is cancelled meanwhile: the work cannot be stopped halfway, and what runs after
    a cancellation (cleanup, the next call) must not overlap it. The cancellation is
    raised once the work is done."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not future.cancelled():
            future.exception()  # retrieved: what the caller sees is the cancellation
        raise asyncio.CancelledError
    return future.result()


async def in_worker_thread(fn: Callable, *args) -> Any:
    """Run `fn(*args)` in a worker thread, handing the GIL back to the event loop often.
    A cancelled caller waits for `fn` to finish first (`await_to_the_end`)."""
    with FAST_GIL_HANDOFF.held():
        return await await_to_the_end(asyncio.ensure_future(asyncio.to_thread(fn, *args)))


def to_host(logs: dict | None) -> dict:
    """Device scalars -> Python floats (one copy per value; used once per epoch)."""
    if not logs:
        return {}
    host = {}
    for key, value in logs.items():
        array = np.asarray(value)
        host[key] = float(array) if array.ndim == 0 else array.tolist()
    return host


__all__ = ["SharedSetting", "FAST_GIL_HANDOFF", "await_to_the_end", "in_worker_thread", "to_host"]
