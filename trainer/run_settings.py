"""Process-wide settings held while any `fit`, `evaluate` or `predict` runs.

- `FAST_GIL_HANDOFF` (in `callbacks.threads`): the GIL changes hands every 0.5 ms.
- `FROZEN_OLD_OBJECTS`: objects older than the run are left out of garbage collection.
- a short scheduler slice for the event loop's thread (`trainer/prompt_wakeups.py`).

Each is a `SharedSetting`: concurrent runs nest and the last one out restores it.
"""
from __future__ import annotations

import functools
import gc
import threading

from callbacks.threads import FAST_GIL_HANDOFF, SharedSetting
from trainer.prompt_wakeups import restore_slice, shorten_slice


# A full collection of a large heap (Keras, JAX and MLflow loaded) holds the GIL for
# 100-400 ms. While training, objects that existed before it began are left out of
# collections (gc.freeze); young generations are still collected as usual. A process
# that froze objects itself (before a fork, say) is left as it is.
def _freeze_old_objects() -> bool:
    if gc.get_freeze_count():
        return False
    gc.freeze()
    return True


def _unfreeze(froze: bool) -> None:
    if froze:
        gc.unfreeze()


FROZEN_OLD_OBJECTS = SharedSetting(_freeze_old_objects, _unfreeze)

# The event loop's thread gets a short scheduler slice while it trains; a per-thread
# setting, one SharedSetting per thread that ever ran a fit.
_SHORT_SLICES: dict[int, SharedSetting] = {}


def short_slice_here() -> SharedSetting:
    """The short-slice setting of the calling thread."""
    tid = threading.get_native_id()
    if tid not in _SHORT_SLICES:
        _SHORT_SLICES[tid] = SharedSetting(functools.partial(shorten_slice, tid), functools.partial(restore_slice, tid))
    return _SHORT_SLICES[tid]


def with_run_settings(method):
    """Decorator for the engine's entry points: old objects out of GC, a short scheduler
    slice for the event loop's thread, and the fast GIL hand-off (a worker thread may
    run steps or load data while the loop awaits it)."""

    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        with FROZEN_OLD_OBJECTS.held(), short_slice_here().held(), FAST_GIL_HANDOFF.held():
            return await method(*args, **kwargs)

    return wrapper


__all__ = ["FAST_GIL_HANDOFF", "FROZEN_OLD_OBJECTS", "SharedSetting", "short_slice_here", "with_run_settings"]
