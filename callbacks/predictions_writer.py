"""`PredictionsWriter`: each benchmark scoring's per-example predictions as a CSV file."""
from __future__ import annotations

import os

from callbacks.atomic import atomic_write_bytes
from callbacks.callback import Callback
from callbacks.threads import in_worker_thread


class PredictionsWriter(Callback):
    """Store the predictions of every `trainer.Benchmark` scoring as
    `{directory}/{name}-step{step}.csv` (`step` the program's step count in the loop,
    `final` after training), one row per example (`index`, `y_true`, `y_pred`).

    Each file is written atomically and named by (benchmark, step), so a run resumed by
    BackupAndRestore that scores the same step again replaces the file: every
    (benchmark, step) is there once. In an experiment, each run writes into
    `{directory}/{arm}-{repeat}/`. The files are plain CSV, read back with pandas.

    Args:
        directory: the folder for the files (created when needed).

    Example:
        ```python
        await program.fit(x, y, epochs=5, validation_data={"holdout": Benchmark(xh, yh)},
                          callbacks=[PredictionsWriter("predictions")])
        ```
    """

    callback_order = 10
    chief_only = True  # several processes: written by process 0 alone (callbacks.processes)

    def __init__(self, directory: str):
        super().__init__()
        if directory is None or not os.fspath(directory):
            raise ValueError(f"PredictionsWriter(directory={directory!r}): give the folder for the files.")
        self.directory = os.fspath(directory)
        self.written: list[str] = []

    def _state_key_args(self) -> str:
        return f"[{self.directory}]"

    def path_for(self, name: str, step, ctx=None) -> str:
        folder = self.directory
        arm = getattr(ctx, "arm", None)
        if arm is not None:
            folder = os.path.join(folder, f"{arm}-{getattr(ctx, 'repeat', 0)}")
        return os.path.join(folder, f"{name}-step{'final' if step is None else int(step)}.csv")

    async def on_benchmark_eval(self, ctx, result, predictions, step=None):
        if predictions is None:
            return
        path = self.path_for(result.name, step, ctx)
        frame = predictions.copy()
        for key, value in (result.tags or {}).items():
            frame[f"tag_{key}"] = value
        await in_worker_thread(atomic_write_bytes, path, frame.to_csv(index=False).encode())
        self.written.append(path)
