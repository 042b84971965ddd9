"""Sharded variables in backups: orbax-checkpoint, on JAX under a `keras.distribution`.

Each process writes the shards its own devices hold (nothing is gathered on one host),
in the background after a device-to-host copy; orbax commits the folder atomically (a
temporary name, renamed when every process is done). Restoring lays every value out
with the sharding its variable has now, so a backup also resumes on another device
layout: orbax reads the slices each device needs, at the cost of reading across shards.
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import keras

from callbacks.processes import is_chief, process_count

EXTRA = "asyncfit[distributed]"


def in_use() -> bool:
    """Whether variables are laid out by a distribution (JAX), so backups go through orbax."""
    return keras.backend.backend() == "jax" and keras.distribution.distribution() is not None


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError as error:
        raise ImportError(
            "BackupAndRestore under a keras.distribution writes the sharded variables with orbax-checkpoint, "
            f"which is not installed: pip install '{EXTRA}' (or orbax-checkpoint).") from error
    return ocp


def is_temporary(name: str) -> bool:
    """A folder orbax was writing when the process died (it is never read)."""
    return ".orbax-checkpoint-tmp" in name


class ShardedWriter:
    """One orbax checkpointer for a run's backups: `start` copies the values to host
    memory and returns; `wait` blocks until the folder is committed."""

    def __init__(self):
        self._checkpointer = _orbax().StandardCheckpointer()

    def start(self, path: str, values: dict[str, Any]) -> None:
        # force: a backup at the same step as one already written (a signal right after
        # a resume) replaces it; the metadata file that names it is written after.
        self._checkpointer.save(os.path.abspath(path), values, force=True)

    def wait(self) -> None:
        self._checkpointer.wait_until_finished()

    def close(self) -> None:
        self._checkpointer.close()


def restore(path: str, variables: dict[str, Any]) -> dict[str, Any]:
    """The values saved in `path`, each laid out like the variable of the same key now."""
    import jax

    target = {key: jax.ShapeDtypeStruct(tuple(variable.shape), variable.value.dtype, sharding=variable.value.sharding)
              for key, variable in variables.items()}
    checkpointer = _orbax().StandardCheckpointer()
    try:
        return checkpointer.restore(os.path.abspath(path), target)
    finally:
        checkpointer.close()


def save_variables(path: str, variables: list) -> None:
    """`variables`' values as an orbax folder at `path`, each process writing its own shards.

    The folder is committed under a new name and then put in place, so a kill at any
    instant leaves the previous folder at `path` (or, between the two renames, at
    `path + ".prev"`, which `load_variables` falls back to)."""
    path = os.path.abspath(path)
    writer = ShardedWriter()
    try:
        writer.start(path + ".next", {"variables": [variable.value for variable in variables]})
        writer.wait()
    finally:
        writer.close()
    if is_chief():
        previous = path + ".prev"
        if os.path.exists(path):
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(path, previous)
        os.rename(path + ".next", path)
        shutil.rmtree(previous, ignore_errors=True)
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"asyncfit save_variables {path}")  # the folder is in place everywhere


def load_variables(path: str, variables: list) -> None:
    """Set `variables` from a folder `save_variables` wrote, each laid out as it is now
    (another device layout than the one that saved it works too)."""
    import jax

    path = os.path.abspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".prev"):
        path += ".prev"  # a save was cut between its two renames
    target = {"variables": [jax.ShapeDtypeStruct(tuple(v.shape), v.value.dtype, sharding=v.value.sharding)
                            for v in variables]}
    checkpointer = _orbax().StandardCheckpointer()
    try:
        metadata = checkpointer.metadata(path)
        saved = _saved_count(metadata)
        if saved is not None and saved != len(variables):
            raise ValueError(f"{path} holds {saved} variables; this program has {len(variables)}.")
        values = checkpointer.restore(path, target)["variables"]
    finally:
        checkpointer.close()
    for variable, value in zip(variables, values):
        variable.assign(value)


def _saved_count(metadata) -> int | None:
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    try:
        return len(tree["variables"])
    except (TypeError, KeyError):
        return None
