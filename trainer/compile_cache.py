"""Opt-in: JAX's persistent compilation cache, for steps compiled again in a new process.

A first fit spends most of its start compiling its steps (about 0.3 s of XLA for the
bench MLP on a 2-core CPU, several seconds for large programs). A process that trains
the same program again (a run resumed after a kill, the next run of an Experiment, a
Ray worker, the same script tomorrow) compiles the same XLA programs again. With the
cache on, each compiled program is written to `directory`, keyed by a hash of the
program, its compile options, the devices and the JAX version, and a later process
loads it instead of compiling: the executable is the same, so results are bitwise the
same. Tracing and lowering still run (about a quarter of a compile).

It is JAX's own cache (`jax_compilation_cache_dir`), a process-wide setting, so it is
opt-in: asyncfit never turns it on by itself.
"""
from __future__ import annotations

import os

import keras


def enable_compile_cache(directory: str | os.PathLike, min_compile_seconds: float = 0.0) -> None:
    """Keep every XLA program this process compiles in `directory`, and load it from
    there in later processes instead of compiling it again (JAX only).

    Args:
        directory: a folder (created if missing). Processes may share it, at once too:
            JAX writes each entry whole under its own name.
        min_compile_seconds: programs that compiled faster than this are not written.
            JAX's default is 1 s, which leaves out the steps of a small program;
            0 keeps them all.

    Call it before the first fit (programs compiled earlier are not written). With the
    Ray engine, call it in the Experiment's `build` function too: it then holds in each
    worker process.

    Example:

    ```python
    from trainer.compile_cache import enable_compile_cache

    enable_compile_cache("~/.cache/asyncfit-xla")
    await program.fit(x, y, epochs=3)  # the second process to run this compiles nothing
    ```
    """
    if keras.backend.backend() != "jax":
        raise ValueError(
            f"enable_compile_cache() is JAX's persistent compilation cache; KERAS_BACKEND is "
            f"{keras.backend.backend()!r}. Use it with KERAS_BACKEND=jax (torch and TensorFlow steps are not "
            "compiled by XLA here).")
    if isinstance(min_compile_seconds, bool) or not isinstance(min_compile_seconds, (int, float)) \
            or min_compile_seconds < 0:
        raise ValueError(f"min_compile_seconds={min_compile_seconds!r}; it must be a number of seconds >= 0.")
    path = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"directory={os.fspath(directory)!r} is a file; give a folder for the compiled programs.")
    os.makedirs(path, exist_ok=True)
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _reset_jax_cache()


def disable_compile_cache() -> None:
    """Stop reading and writing the folder given to `enable_compile_cache`."""
    if keras.backend.backend() != "jax":
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", None)
    _reset_jax_cache()


def _reset_jax_cache() -> None:
    # JAX opens its cache once per process, at the first compile; a folder set after that
    # (or a second one) is taken only once the open cache is dropped.
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()


__all__ = ["enable_compile_cache", "disable_compile_cache"]
