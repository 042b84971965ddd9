"""`BackupAndRestore`: resume an interrupted run exactly where it stopped."""
from __future__ import annotations

import asyncio
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
import warnings

import keras
import numpy as np

from callbacks import sharded_state, signals
from callbacks.atomic import atomic_write, fsync_dir
from callbacks.callback import Callback, ManifestRow
from callbacks.processes import any_process, is_chief, process_count, process_index
from callbacks.safe_state import decode, dumps, encode, loads

# Format 2: the metadata and every callback's state as JSON, arrays beside it; nothing is
# pickled. Format 1 (before) pickled the metadata: it is read only on explicit opt-in.
BACKUP_FORMAT = 2
_PICKLE_FORMAT = 1


class LegacyBackupError(ValueError):
    """A backup in the old pickled format, refused unless `allow_legacy_pickle=True`."""


_NAME = re.compile(r"backup-(\d+)\.npz$")


def global_rng_state() -> dict:
    """Global generators a step may draw from outside Keras' seed variables (torch's
    dropout without a seed uses torch's global RNG, user code may use NumPy's or Python's),
    as arrays and numbers only."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": np.asarray(internal, dtype=np.uint32), "gauss": gauss},
             "numpy": {"kind": kind, "keys": np.asarray(keys, dtype=np.uint32), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if "torch" in sys.modules:
        state["torch"] = sys.modules["torch"].get_rng_state().numpy().copy()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        state["tensorflow"] = tf.random.get_global_generator().state.numpy().copy()
    return state


def set_global_rng_state(state: dict) -> None:
    python, np_state = state.get("python"), state.get("numpy")
    if isinstance(python, dict):
        random.setstate((python["version"], tuple(int(v) for v in python["state"]), python["gauss"]))
    elif python is not None:  # a format-1 backup: the tuple itself
        random.setstate(python)
    if isinstance(np_state, dict):
        np.random.set_state((np_state["kind"], np.asarray(np_state["keys"], dtype=np.uint32), np_state["pos"],
                             np_state["has_gauss"], np_state["cached"]))
    elif np_state is not None:
        np.random.set_state(np_state)
    if "torch" in state and "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_rng_state(torch.from_numpy(np.asarray(state["torch"], dtype=np.uint8).copy()))
    if "tensorflow" in state and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.random.get_global_generator().reset(state["tensorflow"])


def host_view(value) -> np.ndarray:
    """A variable's value as a NumPy array, with no copy where the backend allows it
    (JAX and torch on CPU share the buffer; Keras' `convert_to_numpy` copies for JAX)."""
    if keras.backend.backend() == "jax":
        return np.asarray(value)
    return keras.ops.convert_to_numpy(value)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_fingerprint(program, run) -> dict:
    """What a backup must match to be resumed: program, optimizer, dataset, epochs."""
    layers = [type(layer).__name__ for layer in program._flatten_layers(include_self=False)]
    variables = [(tuple(v.shape), str(v.dtype)) for v in program.trainable_variables + program.non_trainable_variables]
    optimizer = program.optimizer
    optimizer_config = {k: v for k, v in optimizer.get_config().items() if k != "name"} if optimizer else None
    return {
        "program": {"class": type(program).__name__, "layers": _digest(layers), "variables": _digest(variables),
                    "num_variables": len(variables)},
        "optimizer": {"class": type(optimizer).__name__, "config": _digest(optimizer_config)},
        "dataset": run.source.fingerprint(),
        "epochs": run.epochs,
        "loss": _digest(program.get_compile_config().get("loss") if program.compiled else None),
    }


def _first_difference(saved: dict, current: dict) -> str | None:
    for field in ("program", "optimizer", "dataset", "epochs", "loss", "training"):
        if field not in saved and saved.get("legacy"):
            continue  # a format-1 backup (opted in) did not record it
        a, b = saved.get(field), current.get(field)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            detail = "; ".join(f"{field}.{k}: backup {a.get(k)!r}, this run {b.get(k)!r}" for k in keys)
            return f"a different {field} ({detail})"
        return f"a different {field} (backup {a!r}, this run {b!r})"
    return None


class BackupAndRestore(Callback):
    """Back up the whole run regularly; a restarted script resumes exactly where it stopped.

    A backup holds the variables, optimizer state, running metrics, `step_count`,
    the position (epoch and batch: a mid-epoch backup resumes at the next batch of the
    same shuffled order), the shuffle seed, the global RNG states (Python, NumPy, torch;
    Keras' own seed generators are variables), and every callback's `state_dict` (History,
    EarlyStopping's patience, CSVLogger's rows, checkpoints' best...).

    - Contract: a backup made by a different program, optimizer, dataset (length,
      shapes, dtypes, a hash of a sample) or `epochs` is refused, naming the field.
    - A `backup_dir` in use by another live run is refused (a lock file with its pid).
    - Files are written atomically; the two newest are kept, and when the newest is
      torn or corrupt the previous one is used, with a warning.
    - SIGTERM or SIGINT during `fit` finishes the current step, writes a backup and
      ends `fit` with `TrainingInterrupted` (a script exits non-zero); a second
      signal ends the process at once.
    - The variables are copied to host memory at the backup point; the file is
      written in a worker thread while training goes on.
    - Under a `keras.distribution` (JAX), the variables go to an orbax-checkpoint
      folder beside the file (`backup-<step>.orbax`): each process writes its own
      shards, nothing is gathered on one host. Several processes share one
      `backup_dir` (a shared file system across hosts); process 0 writes the file
      that names the folder, once every process has written its part. A backup
      resumes on the same device layout exactly, and on another one too (orbax reads
      the slices each device needs).

    Args:
        backup_dir: folder for the backups and the lock file.
        save_freq: "epoch", or N to back up every N optimizer steps (when N steps
            end an epoch, the backup is taken at that epoch's end instead).
        save_time_interval: seconds between backups; a backup is written when both
            it and `save_freq` are due. So with save_freq="epoch" it is checked at each
            epoch end; for time-based backups mid-epoch, pass save_freq=1.
        delete_checkpoint: delete the backups when training ends well (kept when
            TerminateOnNaN stopped it, or on an error or a signal).
        double_checkpoint: accepted for Keras' sake; the two newest backups are always kept
            (a torn newest one falls back to the other).
        allow_legacy_pickle: read a backup written before format 2, whose metadata is
            pickled (reading a pickle can run code: only for a backup you made yourself).
            Off by default: such a backup is refused with a message. The next backup is
            written in the new format, so the opt-in is needed once.

    Backups hold arrays and JSON only (`.npz` read with `allow_pickle=False`): the run's
    metadata and every callback's `state_dict`, which may hold JSON values, NumPy arrays
    and nested dicts, lists and tuples of them; anything else is refused when the backup
    is written, naming the callback and the key.

    Example:
        ```python
        await program.fit(x, y, epochs=50, callbacks=[BackupAndRestore("./backup", save_freq=200)])
        # kill it, run the same script again: it goes on from the last backup
        ```
    """

    callback_order = 100  # back up after every other callback has updated its state
    hook_order = {"on_train_begin": -100}  # restore before any other callback starts

    def __init__(self, backup_dir: str, save_freq="epoch", save_time_interval: float | None = None,
                 delete_checkpoint: bool = True, keep: int = 2, allow_legacy_pickle: bool = False,
                 double_checkpoint: bool = True):
        super().__init__()
        if backup_dir is None or not os.fspath(backup_dir):
            raise ValueError(f"Empty `backup_dir` argument passed: BackupAndRestore(backup_dir={backup_dir!r}); "
                             "give the folder for the backups.")
        self.double_checkpoint = double_checkpoint  # Keras' argument; two backups are always kept
        if save_freq != "epoch" and not (isinstance(save_freq, int) and not isinstance(save_freq, bool)
                                         and save_freq > 0):
            raise ValueError(f"Invalid value for argument `save_freq`: save_freq={save_freq!r}; use 'epoch' or a "
                             "number of steps >= 1 (False, which Keras took as 'every batch', is refused).")
        if save_time_interval is not None and save_time_interval <= 0:
            raise ValueError(f"save_time_interval={save_time_interval}; use seconds > 0 or None.")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.save_time_interval = save_time_interval
        self.delete_checkpoint = delete_checkpoint
        self.allow_legacy_pickle = bool(allow_legacy_pickle)
        self.keep = max(2, keep)
        self.restored_from: str | None = None
        self._pending: asyncio.Task | None = None
        self._signal: int | None = None
        self._installed: list = []
        self._last_step = 0
        self._last_time = 0.0
        self._fingerprint = None
        self._host_buffers: dict[str, np.ndarray] = {}
        self._lock_fd: int | None = None
        self._lock_key = ""
        self._sharded: sharded_state.ShardedWriter | None = None  # under a distribution: orbax
        self._chief = True
        if save_freq == "epoch":
            self.on_train_batch_end = None  # nothing per batch: fused chunks stay on

    def _state_key_args(self) -> str:
        return f"[{self.backup_dir}]"

    @property
    def lock_path(self) -> str:
        # Several processes of one run share the folder: each holds a lock of its own.
        return os.path.join(self.backup_dir, "lock" if self._chief else f"lock-{process_index()}")

    def backups(self) -> list[str]:
        """Backup files, newest first."""
        files = [f for f in glob.glob(os.path.join(self.backup_dir, "backup-*.npz")) if _NAME.search(f)]
        return sorted(files, key=lambda f: int(_NAME.search(f).group(1)), reverse=True)

    # -- start: lock, restore, signals -------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._chief = is_chief()
        os.makedirs(self.backup_dir, exist_ok=True)
        self._acquire_lock()
        if self._chief:
            for stale in glob.glob(os.path.join(self.backup_dir, ".tmp-*")):
                os.remove(stale)  # a write cut short by a kill
            for stale in os.listdir(self.backup_dir):
                if sharded_state.is_temporary(stale):
                    shutil.rmtree(os.path.join(self.backup_dir, stale), ignore_errors=True)
        if sharded_state.in_use():
            self._sharded = sharded_state.ShardedWriter()
        program, run = self.program, self.run_state
        self._fingerprint = run_fingerprint(program, run)
        params = self.params or {}
        self._fingerprint["training"] = {key: params.get(key) for key in ("batch_size", "shuffle", "steps")}
        self._signal = None
        self.restored_from = None
        for path in self.backups():
            try:
                meta, arrays = self._read(path, self.allow_legacy_pickle)
            except LegacyBackupError:
                self._release_lock()
                raise
            except Exception as error:  # torn or corrupt: fall back to the previous one
                warnings.warn(f"BackupAndRestore: {path} cannot be read ({error!r}); trying the previous backup.")
                continue
            difference = _first_difference(meta["fingerprint"], self._fingerprint)
            if difference:
                self._release_lock()
                raise ValueError(
                    f"BackupAndRestore: the backup in {self.backup_dir!r} was made by {difference}. "
                    "Resume with the same program, optimizer, data and epochs, or use another backup_dir "
                    "(or delete this one) to start over."
                )
            self._restore(meta, arrays, program, run, path)
            self.restored_from = path
            break
        self._last_step = program.step_count
        self._last_time = time.monotonic()
        run.interrupt_handlers.append(self._interrupted)
        run.value_watchers.append(self._check_write)
        self._install_signal_handlers()

    def _restore(self, meta: dict, arrays: dict, program, run, path: str) -> None:
        keyed = {}
        for group, variables in self._variable_groups(program).items():
            count = meta["counts"][group]
            if count != len(variables):
                raise ValueError(f"BackupAndRestore: the backup has {count} {group} variables, the program "
                                 f"{len(variables)}.")
            keyed.update((f"{group}{i}", variable) for i, variable in enumerate(variables))
        if meta.get("sharded"):
            arrays = sharded_state.restore(self._sharded_path(path), keyed)
        for key, variable in keyed.items():
            variable.assign(arrays[key])
        program.step_count = meta["step_count"]
        set_global_rng_state(meta.get("rng", {}))
        if self._callback_list is not None:
            self._callback_list.load_state_dicts(meta["callbacks"])
        run.resume_at = (meta["epoch"], meta["batch"])
        run.resume_state = meta.get("source_state")
        if hasattr(run.source, "seed"):
            run.source.seed = run.seed = meta["seed"]

    @staticmethod
    def _variable_groups(program) -> dict:
        optimizer = getattr(program, "optimizer", None)
        return {
            "trainable": program.trainable_variables,
            "non_trainable": program.non_trainable_variables,
            "optimizer": optimizer.variables if optimizer is not None else [],
            "metrics": program.metrics_variables,
        }

    # -- when to back up -------------------------------------------------------------------------
    async def on_train_batch_end(self, batch, logs=None):
        run = self.run_state
        steps = self.params.get("steps")
        if steps is not None and run.batch >= steps:
            return  # the epoch ends now: its backup is taken in on_epoch_end
        if self._due(per_batch=True):
            await self._backup()

    async def on_epoch_end(self, epoch, logs=None):
        if self._due(per_batch=False):
            await self._backup()

    def _due(self, per_batch: bool) -> bool:
        if self.save_freq == "epoch":
            if per_batch:
                return False
        elif self._program.step_count - self._last_step < self.save_freq:
            return False
        if self.save_time_interval is None:
            return True
        time_due = time.monotonic() - self._last_time >= self.save_time_interval
        if process_count() > 1:  # the processes' clocks differ: all back up when one is due
            (time_due,) = any_process(time_due)
        return time_due

    # -- writing ------------------------------------------------------------------------------
    def _snapshot(self) -> tuple[dict, bytes, dict]:
        """The state copied to host memory: the one pause a backup costs training.

        Each value is copied once, into a host buffer kept from the previous backup (its
        file is written by then), so no fresh memory is faulted in; the copy is needed as
        the next step may donate or update the device buffers in place."""
        program, run = self.program, self.run_state
        arrays, counts = {}, {}
        for group, variables in self._variable_groups(program).items():
            counts[group] = len(variables)
            for i, variable in enumerate(variables):
                key = f"{group}{i}"
                if self._sharded is not None:
                    arrays[key] = variable.value  # orbax copies each process's shards
                    continue
                value = host_view(variable.value)
                buffer = self._host_buffers.get(key)
                if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                    buffer = self._host_buffers[key] = np.empty_like(value)
                np.copyto(buffer, value)
                arrays[key] = buffer
        meta = {
            "format": BACKUP_FORMAT, "epoch": run.epoch, "batch": run.batch, "step_count": program.step_count,
            "seed": run.seed, "fingerprint": self._fingerprint, "counts": counts, "time": time.time(),
            "sharded": self._sharded is not None,
            # Mid-epoch, where the data reader stands when it can say (grain's iterator state).
            "source_state": getattr(run.stream, "state", None) if run.batch else None,
        }
        # Encoded now, not in the writer thread: state_dicts may hand out live objects
        # (History's lists) that the next epochs would change before the file is written.
        state_arrays: dict = {}
        meta["rng"] = encode(global_rng_state(), "the global RNG state", state_arrays, prefix="__rng__")
        states = self._callback_list.state_dicts() if self._callback_list is not None else {}
        meta["callbacks"] = {key: encode(state, f"{key}.state_dict()", state_arrays, prefix="__state__")
                             for key, state in states.items()}
        arrays.update(state_arrays)
        return meta, dumps(meta), arrays

    async def _backup(self) -> None:
        await self._flush()  # one write at a time, in order; a failed one raises here
        for check in self.run_state.before_backup:
            check()  # e.g. TerminateOnNaN: never back up a poisoned state
        meta, payload, arrays = self._snapshot()
        self._last_step = meta["step_count"]
        self._last_time = time.monotonic()
        started = time.perf_counter()
        path = self._path(meta)
        if self._sharded is not None:
            variables = {key: value for key, value in arrays.items() if not key.startswith(("__rng__", "__state__"))}
            arrays = {key: value for key, value in arrays.items() if key not in variables}
            self._sharded.start(self._sharded_path(path), variables)  # every process: its own shards
        self._pending = asyncio.ensure_future(asyncio.to_thread(self._write, path, payload, arrays))
        self._pending.add_done_callback(lambda task: task.exception())  # surfaced by the next await
        if self._callback_list is not None and self._callback_list.wants("on_checkpoint"):
            await self._flush()
            await self.notify_checkpoint(ManifestRow(path=self._path(meta), kind="backup", epoch=meta["epoch"],
                                                     step=meta["step_count"],
                                                     seconds=time.perf_counter() - started))

    def _check_write(self, first_step: int, losses, logs) -> None:
        """After every step: a backup write that failed (a full disk, a lost mount) ends
        the run now, not at the next backup."""
        pending = self._pending
        if pending is not None and pending.done() and not pending.cancelled() and pending.exception() is not None:
            self._pending = None
            raise pending.exception()

    def _path(self, meta: dict) -> str:
        return os.path.join(self.backup_dir, f"backup-{meta['step_count']:010d}.npz")

    @staticmethod
    def _sharded_path(path: str) -> str:
        return path[: -len(".npz")] + ".orbax"

    def _write(self, path: str, payload: bytes, arrays: dict) -> None:
        if self._sharded is not None:
            self._sharded.wait()  # the variables' folder is committed before the file that names it
        if not self._chief:
            return

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, __meta__=np.frombuffer(payload, dtype=np.uint8), **arrays)

        atomic_write(path, write)
        for old in self.backups()[self.keep:]:
            self._remove(old)

    def _remove(self, path: str) -> None:
        os.remove(path)  # the file first: a folder without its file is never read
        shutil.rmtree(self._sharded_path(path), ignore_errors=True)

    @staticmethod
    def _read(path: str, allow_legacy_pickle: bool = False) -> tuple[dict, dict]:
        """The backup's metadata (callback states and RNG decoded) and its arrays; never
        unpickles, unless `allow_legacy_pickle` and the file is of the old format."""
        with np.load(path, allow_pickle=False) as data:
            payload = data["__meta__"].tobytes()
            arrays = {key: data[key] for key in data.files if key != "__meta__"}
        if payload[:1] == b"\x80":  # a pickle's first byte (protocol 2 and later)
            if not allow_legacy_pickle:
                raise LegacyBackupError(
                    f"BackupAndRestore: {path} was written by an older asyncfit, which pickled its metadata; "
                    "reading a pickle can run code, so it is not read. If you made this backup yourself, resume "
                    "once with BackupAndRestore(..., allow_legacy_pickle=True) (the next backup is written in the "
                    "new format); otherwise delete the backups in this folder, or use another backup_dir, to "
                    "start over.")
            import pickle  # only on the explicit opt-in above

            meta = pickle.loads(payload)
            if meta.get("format") != _PICKLE_FORMAT:
                raise ValueError(f"unknown backup format {meta.get('format')!r}")
            meta["fingerprint"]["legacy"] = True
            return meta, arrays
        meta = loads(payload)
        if meta.get("format") != BACKUP_FORMAT:
            raise ValueError(f"unknown backup format {meta.get('format')!r}")
        meta["rng"] = decode(meta.get("rng", {}), arrays)
        meta["callbacks"] = {key: decode(state, arrays) for key, state in meta.get("callbacks", {}).items()}
        arrays = {key: value for key, value in arrays.items() if not key.startswith(("__rng__", "__state__"))}
        return meta, arrays

    async def _flush(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    # -- signals ----------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        # One process-wide handler (callbacks/signals.py) tells every run that registered,
        # so overlapping fits end in any order and the original handler comes back.
        if signals.register(self._on_signal):
            self._installed = [self._on_signal]

    def _remove_signal_handlers(self) -> None:
        for target in self._installed:
            signals.unregister(target)
        self._installed = []

    def _on_signal(self, sig: int, frame=None) -> None:
        if self._signal is not None:  # the second signal: end now
            os._exit(128 + sig)
        self._signal = sig
        run = self.run_state
        if run is not None:  # the loop sees it after the current step and calls _interrupted
            run.interrupted = signal.Signals(sig).name

    async def _interrupted(self) -> None:
        await self._flush()
        await self._backup()
        await self._flush()

    # -- end -------------------------------------------------------------------------------------------
    async def on_train_end(self, logs=None):
        try:
            await self._flush()
            run = self.run_state
            delete = self.delete_checkpoint and not (run is not None and run.keep_backup) and self._chief
            if delete:
                for path in self.backups():
                    self._remove(path)
                fsync_dir(self.backup_dir)
        finally:
            self._end()
        if delete:
            try:
                os.rmdir(self.backup_dir)  # as Keras, the folder goes too, when nothing else is in it
            except OSError:
                pass

    async def on_train_error(self, error):
        try:
            await self._flush()
        finally:
            self._end()

    def _end(self) -> None:
        self._host_buffers = {}
        sharded, self._sharded = self._sharded, None
        if sharded is not None:
            sharded.close()
        self._remove_signal_handlers()
        self._release_lock()

    # -- lock ---------------------------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        """Hold `backup_dir/lock`: an flock (atomic across processes, released by the kernel
        when the holder dies, SIGKILL included) on a file naming the holder's pid, plus a
        registry of the folders this process's fits hold."""
        key = os.path.realpath(self.backup_dir)
        with _HELD_LOCK:
            if key in _HELD_DIRS:
                raise RuntimeError(
                    f"BackupAndRestore: {self.backup_dir!r} is in use by another fit in this process; "
                    "give each concurrent fit its own backup_dir.")
            _HELD_DIRS.add(key)
        try:
            self._lock_fd = _lock_file(self.lock_path, self.backup_dir)
        except BaseException:
            with _HELD_LOCK:
                _HELD_DIRS.discard(key)
            raise
        self._lock_key = key

    def _release_lock(self) -> None:
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is None:
            return
        try:
            os.remove(self.lock_path)  # while still holding it: a waiting locker sees the file gone and retries
        except OSError:
            pass
        os.close(fd)  # releases the flock
        with _HELD_LOCK:
            _HELD_DIRS.discard(self._lock_key)


_HELD_DIRS: set[str] = set()
_HELD_LOCK = threading.Lock()


def _lock_file(path: str, backup_dir: str) -> int:
    """An open descriptor of `path` holding its exclusive flock, with this pid written in."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read_pid(fd)
            os.close(fd)
            raise RuntimeError(
                f"BackupAndRestore: {backup_dir!r} is in use by another live run (pid {other}); "
                "give this run its own backup_dir, or stop the other run.") from None
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                os.close(fd)  # its holder removed it as we opened it: lock the new file
                continue
        except FileNotFoundError:
            os.close(fd)
            continue
        other = _read_pid(fd)
        if other and other != os.getpid() and _alive(other):
            # A pid file without an flock (an older asyncfit holding it): respect it.
            os.close(fd)
            raise RuntimeError(
                f"BackupAndRestore: {backup_dir!r} is in use by another live run (pid {other}); "
                "give this run its own backup_dir, or stop the other run.")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
