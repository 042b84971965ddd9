"""A short scheduler slice for the event loop's thread while it trains (Linux 6.12+).

While XLA compiles a step, its threads keep both cores of a small machine busy. Linux's
EEVDF scheduler lets a waking thread run at once only if its deadline comes first, and a
deadline is a slice away (1.4 ms here); the event loop, woken by its timer, waited for
one or more slices of the compiler's threads: gaps of 3-10 ms for a 1 ms ticker.

A thread may ask for a shorter slice (`sched_setattr`, `sched_runtime` with the normal
policy; no privilege needed). With 0.1 ms its deadline comes first and it preempts when
it wakes: in the event-loop bench the p99 gap fell from about 5.0 to 4.2 ms. The slice
costs nothing when a core is free; it only decides who runs first when none is.

The setting is per thread; trainer/run_settings.py holds it while any fit, evaluate or predict
runs on the thread (they nest); the thread's own slice comes back after. It is set with
"reset on fork", so the threads it starts (executor workers) get the normal slice. Anywhere else (other kernels,
other systems, a sandbox that refuses the call) it does nothing.
"""
from __future__ import annotations

import ctypes
import platform
import struct
import sys

SHORT_SLICE_NS = 100_000
_SCHED_FLAG_RESET_ON_FORK = 0x01
_ATTR = struct.Struct("IIQiIQQQII")  # struct sched_attr, version 1 (56 bytes)
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}  # (sched_setattr, sched_getattr)


def _libc():
    if not sys.platform.startswith("linux") or platform.machine() not in _SYSCALLS:
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def _get(tid: int) -> tuple | None:
    buf = ctypes.create_string_buffer(_ATTR.size)
    if _LIBC.syscall(_SYSCALLS[platform.machine()][1], tid, buf, _ATTR.size, 0) != 0:
        return None
    return _ATTR.unpack(buf.raw)


def _set(tid: int, policy: int, flags: int, nice: int, runtime_ns: int) -> bool:
    attr = _ATTR.pack(_ATTR.size, policy, flags, nice, 0, runtime_ns, 0, 0, 0, 0)
    return _LIBC.syscall(_SYSCALLS[platform.machine()][0], tid, ctypes.c_char_p(attr), 0) == 0


def thread_slice_ns(tid: int = 0) -> int | None:
    """The scheduler slice of thread `tid` (0: the calling one); None where unknown."""
    attr = _get(tid) if _LIBC is not None else None
    return None if attr is None else attr[5]


def shorten_slice(tid: int):
    """Give thread `tid` the short slice; returns what `restore_slice` needs (None: unchanged)."""
    if _LIBC is None:
        return None
    attr = _get(tid)
    # Only the normal policy (0) has slices; a shorter slice set by the user stays.
    if attr is None or attr[1] != 0 or attr[5] <= SHORT_SLICE_NS:
        return None
    _, policy, flags, nice = attr[:4]
    if not _set(tid, policy, flags | _SCHED_FLAG_RESET_ON_FORK, nice, SHORT_SLICE_NS):
        return None
    return attr


def restore_slice(tid: int, saved) -> None:
    """Undo `shorten_slice(tid)`, given what it returned."""
    if saved is not None:
        _, policy, flags, nice, _, runtime = saved[:6]
        _set(tid, policy, flags, nice, runtime)


__all__ = ["SHORT_SLICE_NS", "restore_slice", "shorten_slice", "thread_slice_ns"]
