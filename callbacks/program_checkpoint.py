"""`ProgramCheckpoint`: save the program (or its variables) as training goes."""
from __future__ import annotations

import os
import shutil
import string
import time

from callbacks.atomic import atomic_write, remove_stale_temps
from callbacks.callback import ManifestRow
from callbacks.monitor_base import MonitorCallback
from callbacks.threads import in_worker_thread, to_host


class ProgramCheckpoint(MonitorCallback):
    """Save the program every epoch or every N batches, optionally only when it improves.

    Every file is written atomically (temp file, fsync, rename): a kill at any instant
    leaves the previous checkpoint readable. Each save fires `on_checkpoint(ManifestRow)`.

    Args:
        filepath: where to save; `.keras` for the whole program (load it with
            `trainer.load_program`), `.weights.h5` with `save_variables_only=True`,
            or, on JAX, an `.orbax` folder with `save_variables_only=True`: sharded
            variables are written by every process, each its own shards, with
            orbax-checkpoint (nothing gathered on one host; `program.load_variables`
            reads it back onto any device layout).
            Format fields: `{epoch}` (1-based), `{batch}` (1-based batch within the
            epoch, with `save_freq=N`), and any log key, e.g.
            `"ckpt-{epoch:02d}-{val_loss:.3f}.keras"`. An unknown field fails before
            the first step.
        monitor: the log key that decides "best" (with `save_best_only`).
        mode: "auto", "min" or "max".
        save_best_only: save only when `monitor` improves on the best so far.
        save_variables_only: save only the variables (`save_variables`); Keras'
            `save_weights_only` is accepted too.
        save_freq: "epoch", or an int N to save every N batches this callback has seen
            (as Keras counts them; a program trained before does not shift the saves).
        max_to_keep: keep only the newest N files this callback wrote (None keeps all).
        initial_value_threshold: with `save_best_only`, a value the first save must beat
            (Keras' argument).

    `best` is in `state_dict`, so a resumed run does not overwrite a better checkpoint.

    Example:
        ```python
        ProgramCheckpoint("best.program.keras", monitor="val_accuracy", save_best_only=True)
        ```
    """

    callback_order = 10
    chief_only = True  # several processes: written by process 0 alone (callbacks.processes)
    keras_name = "ModelCheckpoint"  # in messages Keras users search for

    def __init__(self, filepath: str, monitor: str = "val_loss", mode: str = "auto", save_best_only: bool = False,
                 save_variables_only: bool = False, save_freq="epoch", max_to_keep: int | None = None,
                 initial_value_threshold: float | None = None, save_weights_only: bool | None = None):
        super().__init__(monitor=monitor, mode=mode)
        if save_weights_only is not None:  # Keras' name for it
            save_variables_only = save_weights_only
        self.initial_value_threshold = initial_value_threshold
        self.best = initial_value_threshold
        self._batches_seen = 0
        self.filepath = os.fspath(filepath)
        suffix = ".weights.h5" if save_variables_only else ".keras"
        if save_variables_only and self.filepath.endswith(".orbax"):
            suffix = ".orbax"
            self.chief_only = False  # every process writes its own shards
        if not self.filepath.endswith(suffix):
            other = "save_variables_only=True" if suffix == ".keras" else "save_variables_only=False"
            orbax = " or '.orbax' (a sharded folder, JAX)" if save_variables_only else ""
            raise ValueError(
                f"ProgramCheckpoint(filepath={self.filepath!r}): with save_variables_only={save_variables_only} "
                f"the path must end in {suffix!r}{orbax} (or pass {other})."
            )
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise ValueError(f"Unrecognized save_freq: {save_freq!r}; use 'epoch' or a number of batches >= 1.")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep={max_to_keep}; use None (keep all) or >= 1.")
        self.suffix = suffix
        self.save_best_only = save_best_only
        self.save_variables_only = save_variables_only
        self.save_freq = save_freq
        self.max_to_keep = max_to_keep
        self.kept: list[str] = []
        self._fields = [name for _, name, _, _ in string.Formatter().parse(self.filepath) if name]
        if save_freq == "epoch":
            self.on_train_batch_end = None  # no per-batch call at all

    def _state_key_args(self) -> str:
        return f"[{self.filepath}]"

    def check_log_keys(self, keys: list[str]) -> None:
        unknown = [field for field in self._fields if field.split(".")[0].split("[")[0] not in {"epoch", "batch", *keys}]
        if unknown:
            raise ValueError(
                f"ProgramCheckpoint(filepath={self.filepath!r}): unknown format field(s) {unknown}; "
                f"use epoch, batch or a logged key: {', '.join(keys)}."
            )
        try:  # a bad format spec ({epoch:zz}) fails here, not at the first save
            self.filepath.format(**{key: 0.5 for key in keys}, epoch=1, batch=1)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            raise ValueError(
                f"ProgramCheckpoint(filepath={self.filepath!r}) cannot be formatted: {error}. Fields take Python "
                "format specs: {epoch:02d} (an int), {val_loss:.3f} (a float)."
            ) from error
        if self.save_best_only:
            super().check_log_keys(keys)

    def on_train_begin(self, logs=None):
        remove_stale_temps(self.filepath)  # what a kill left of this callback's writes

    async def on_train_batch_end(self, batch, logs=None):
        # As Keras: every save_freq batches this callback has seen (across fits), not the
        # program's global step count.
        self._batches_seen += 1
        if self.save_freq == "epoch" or self._batches_seen % self.save_freq:
            return
        run = self.run_state
        await self._save(run.epoch if run else 0, batch + 1, to_host(logs))

    async def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            await self._save(epoch, None, logs or {})

    async def _save(self, epoch: int, batch: int | None, logs: dict) -> None:
        value = self.scalar(logs.get(self.monitor)) if self.monitor in logs else None
        if self.save_best_only:
            if value is None or not self.is_better(value, self.best):
                return
            self.best = value
        try:
            path = self.filepath.format(epoch=epoch + 1, batch=batch if batch is not None else 0, **logs)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"ProgramCheckpoint could not fill {self.filepath!r} from the logs: {error!r}") from error
        program = self.program  # writes the loop's state back (JAX) before saving
        save = program.save_variables if self.save_variables_only else program.save
        # The loop waits here (no step runs while the file is written), the event loop does not.
        started = time.perf_counter()
        if self.suffix == ".orbax":  # a folder that orbax commits atomically
            await in_worker_thread(save, path)
        else:
            await in_worker_thread(atomic_write, path, save, self.suffix)
        seconds = time.perf_counter() - started
        if path in self.kept:
            self.kept.remove(path)
        self.kept.append(path)
        if self.max_to_keep is not None:
            while len(self.kept) > self.max_to_keep:
                old = self.kept.pop(0)
                if os.path.isdir(old):
                    shutil.rmtree(old, ignore_errors=True)
                elif os.path.exists(old):
                    os.remove(old)
        kind = "variables" if self.save_variables_only else "program"
        await self.notify_checkpoint(ManifestRow(path=path, kind=kind, epoch=epoch, step=program.step_count,
                                                 monitor=self.monitor, value=None if value is None else float(value),
                                                 seconds=seconds))

    def state_dict(self) -> dict:
        return {"best": self.best, "kept": list(self.kept), "batches_seen": self._batches_seen}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self._batches_seen = int(state.get("batches_seen", 0))
        self.kept = list(state.get("kept", []))
