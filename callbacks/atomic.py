"""Atomic file writes: temp file in the same folder, fsync, `os.replace`, fsync the folder.

A kill at any instant leaves either the previous version or the new one, never a torn file.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable


def temp_prefix(path: str) -> str:
    """The name prefix of `path`'s temp files: `.tmp-` and the target's name, so a writer
    can find and remove what a kill left of its own writes (`remove_stale_temps`)."""
    return f".tmp-{os.path.basename(path)}-"


def atomic_write(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """Call `write(tmp_path)`, then put the finished file at `path` in one step.

    `suffix` keeps the temp name's ending (Keras checks `.keras` / `.weights.h5`). An
    error names `path`, the target, not the temp file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix, dir=folder)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        if error.errno is None:
            raise
        raise type(error)(error.errno, f"{error.strerror} (writing {path})", path) from error
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(folder)


def _remove(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.remove(tmp)


def remove_stale_temps(path_pattern: str) -> None:
    """Remove the temp files a kill left behind for targets named like `path_pattern`:
    its name up to the first format field, in its folder (when that has no field and the
    name does not start with one)."""
    folder, name = os.path.split(os.path.abspath(path_pattern))
    static = name.split("{", 1)[0]
    if "{" in folder or not static or not os.path.isdir(folder):
        return
    prefix = temp_prefix(static) if static == name else temp_prefix(static)[:-1]
    for entry in os.listdir(folder):
        if entry.startswith(prefix):
            try:
                os.remove(os.path.join(folder, entry))
            except OSError:
                pass


def fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    atomic_write(path, write)


