"""`CSVLogger`: one row per epoch, readable by `pandas.read_csv` at any moment."""
from __future__ import annotations

import csv
import io
import os

from callbacks.atomic import atomic_write_bytes, remove_stale_temps
from callbacks.callback import Callback
from callbacks.threads import in_worker_thread


class CSVLogger(Callback):
    """Write each epoch's logs as a row of a CSV file.

    Unlike Keras' CSVLogger, the file is rewritten atomically at each epoch end
    (temp file, fsync, rename), so a kill at any instant leaves a complete file; a key
    that appears later widens the header instead of breaking the file; there is one
    header, also with `append=True` across re-runs; and after BackupAndRestore resumes
    a run, rows past the resumed epoch are dropped, so every epoch appears once.

    Args:
        filepath: the CSV file.
        separator: the field separator.
        append: keep the rows already in the file (a re-run adds to them) instead of
            starting a new file.

    Example:
        ```python
        await program.fit(x, y, epochs=10, validation_split=0.2, callbacks=[CSVLogger("run.csv")])
        pandas.read_csv("run.csv")   # epoch, loss, accuracy, val_loss, val_accuracy
        ```
    """

    callback_order = 10
    chief_only = True  # several processes: written by process 0 alone (callbacks.processes)

    def __init__(self, filepath: str, separator: str = ",", append: bool = False):
        super().__init__()
        self.filepath = os.fspath(filepath)
        self.separator = separator
        self.append = append
        self.rows: list[dict] = []
        self.columns: list[str] = ["epoch"]
        self._restored = False

    def _state_key_args(self) -> str:
        return f"[{self.filepath}]"

    def on_train_begin(self, logs=None):
        remove_stale_temps(self.filepath)  # what a kill left of this callback's writes
        if self._restored:  # resumed: exactly the rows of the backup, rows past it go
            self._restored = False
            self._write()
            return
        self.rows, self.columns = [], ["epoch"]
        if self.append and os.path.exists(self.filepath):
            with open(self.filepath, newline="") as handle:
                reader = csv.DictReader(handle, delimiter=self.separator)
                self.columns = list(reader.fieldnames or ["epoch"])
                self.rows = [dict(row) for row in reader]

    async def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch}
        for key, value in (logs or {}).items():
            row[key] = value
            if key not in self.columns:
                self.columns.append(key)
        self.rows.append(row)
        await in_worker_thread(self._write)

    def _write(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, delimiter=self.separator, restval="NA",
                                lineterminator="\n")  # a value missing from an epoch's logs: NA, as Keras
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.filepath, buffer.getvalue().encode())

    def state_dict(self) -> dict:
        return {"rows": [dict(r) for r in self.rows], "columns": list(self.columns)}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(r) for r in state.get("rows", [])]
        self.columns = list(state.get("columns", ["epoch"]))
        self._restored = True
