"""`Benchmark`: a named evaluator whose every scoring fires `on_benchmark_eval` with its
metrics, tags and per-example predictions."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class BenchmarkResult:
    """One scoring of a benchmark: `metrics` by logged name; `step` the program's
    `step_count` when scored in the loop, None after training (in an experiment)."""

    name: str
    metrics: dict
    tags: dict
    step: int | None


class Benchmark:
    """Data to score a program on, by name, with per-example predictions kept.

    Use it as a named evaluator, `fit(validation_data={"name": Benchmark(x, y)})` (scored
    at every validation, `step` = `program.step_count`, logged as `val_{name}_{metric}`),
    or in `Experiment(..., benchmarks={"name": Benchmark(x, y)})` (scored after each run's
    training, `step=None`). Each scoring fires
    `on_benchmark_eval(ctx, result, predictions, step)` on the callbacks: `ctx` the
    `ExperimentContext` (None outside an experiment), `result` a `BenchmarkResult`,
    `predictions` a pandas DataFrame with one row per example (`index`, `y_true`,
    `y_pred`; a vector output gives lists) or None with `keep_predictions=False`.

    Args:
        x, y: the data (arrays, as for `evaluate`); y None scores predictions only.
        batch_size: batch size for scoring (default: fit's, or 32).
        keep_predictions: build the per-example DataFrame (a predict pass).
        tags: free-form tags carried in every result.

    Example:
        ```python
        await program.fit(x, y, epochs=5, validation_data={"holdout": Benchmark(xh, yh, tags={"split": "v2"})},
                          callbacks=[PredictionsWriter("preds")])
        ```
    """

    def __init__(self, x, y=None, *, batch_size: int | None = None, keep_predictions: bool = True,
                 tags: dict | None = None):
        if x is None:
            raise ValueError("Benchmark(x=None): give the data to score.")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"Benchmark(batch_size={batch_size!r}): an integer >= 1, or None.")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.keep_predictions = bool(keep_predictions)
        self.tags = dict(tags or {})

    def __repr__(self) -> str:
        return f"Benchmark(batch_size={self.batch_size}, keep_predictions={self.keep_predictions}, tags={self.tags})"


def predictions_frame(y_true, y_pred):
    """One row per example: `index`, `y_true` (None without targets), `y_pred`."""
    import pandas as pd

    def column(values: Any):
        if values is None:
            return None
        array = np.asarray(values)
        if array.ndim > 1 and array.shape[1:] == (1,):
            array = array.reshape(len(array))
        return array.tolist() if array.ndim == 1 else [row.tolist() for row in array]

    y_pred_col = column(y_pred)
    n = len(y_pred_col)
    y_true_col = column(y_true) if y_true is not None else [None] * n
    return pd.DataFrame({"index": np.arange(n), "y_true": y_true_col, "y_pred": y_pred_col})


async def score(program, name: str, benchmark: Benchmark, *, hooks, ctx=None, step: int | None = None,
                metrics: dict | None = None, batch_size: int = 32) -> BenchmarkResult:
    """Score `program` on `benchmark` (metrics from `evaluate` unless given), build its
    predictions, and fire `on_benchmark_eval` on `hooks` (a CallbackList)."""
    size = benchmark.batch_size or batch_size
    if metrics is None:
        metrics = await program.evaluate(benchmark.x, benchmark.y, batch_size=size, verbose=0) \
            if benchmark.y is not None else {}
    predictions = None
    if benchmark.keep_predictions:
        y_pred = await program.predict(benchmark.x, batch_size=size, verbose=0)
        predictions = predictions_frame(benchmark.y, y_pred)
    result = BenchmarkResult(name=name, metrics=dict(metrics), tags=dict(benchmark.tags), step=step)
    if hooks is not None and hooks.wants("on_benchmark_eval"):
        await hooks.fire("on_benchmark_eval", ctx, result, predictions, step)
    return result


__all__ = ["Benchmark", "BenchmarkResult", "predictions_frame", "score"]
