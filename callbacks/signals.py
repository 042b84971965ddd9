"""One process-wide SIGTERM/SIGINT handler that tells every run that registered.

Runs that overlap (two fits with their own BackupAndRestore) each register a target;
the handler is installed when the first registers and the handler that was there
before is put back when the last one leaves, whatever order they end in.
`signal.signal` is used rather than the event loop's handler so the flag is set at once
and the step running when the signal came is the last one.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_targets: list[Callable[[int], None]] = []
_previous: dict[int, object] = {}
_lock = threading.Lock()


def _dispatch(sig: int, frame=None) -> None:
    for target in list(_targets):
        target(sig)


def register(target: Callable[[int], None]) -> bool:
    """Call `target(sig)` on SIGTERM and SIGINT until `unregister(target)`. Only the main
    thread can install signal handlers: elsewhere nothing is registered (returns False)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        if not _targets:
            for sig in SIGNALS:
                _previous[sig] = signal.signal(sig, _dispatch)
        _targets.append(target)
    return True


def unregister(target: Callable[[int], None]) -> None:
    with _lock:
        if target not in _targets:
            return
        _targets.remove(target)
        if not _targets:
            for sig, previous in _previous.items():
                signal.signal(sig, previous)
            _previous.clear()


__all__ = ["register", "unregister"]
