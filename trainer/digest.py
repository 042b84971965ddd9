"""`Digest`: running statistics of an evaluation's per-batch values, with standard errors
corrected for correlation between batches by blocking (Flyvbjerg and Petersen, 1989)."""
from __future__ import annotations

import math
import os

import numpy as np

MIN_BLOCKS = 8  # a blocking level needs this many blocks for its variance to mean much


def blocking(values) -> tuple[float, float]:
    """(standard error of the mean, effective number of independent samples) of a series.

    The series is halved repeatedly (neighbours averaged into blocks); at each level the
    standard error is the blocks' standard deviation over sqrt(number of blocks). For
    independent values every level gives the textbook sigma/sqrt(n); correlated values give
    an estimate that grows with the block size until the blocks are longer than the
    correlation, then levels off. The largest estimate over the levels with at least
    MIN_BLOCKS blocks is taken (conservative). n_eff = variance / stderr**2."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n = x.size
    if n < 2:
        return math.nan, float(n)
    variance = float(np.var(x, ddof=1))
    best = math.sqrt(variance / n)
    blocks = x
    while blocks.size // 2 >= MIN_BLOCKS:
        blocks = 0.5 * (blocks[0:2 * (blocks.size // 2):2] + blocks[1:2 * (blocks.size // 2):2])
        best = max(best, math.sqrt(float(np.var(blocks, ddof=1)) / blocks.size))
    n_eff = variance / best**2 if best > 0 else float(n)
    return best, min(float(n), n_eff)


class Digest:
    """Statistics of every logged name over an evaluation's batches.

    Attributes:
        count: batches seen.
        mean, variance, stderr, n_eff: dicts keyed by the logged names (loss and every
            metric): the mean of the per-batch values, their variance (ddof=1), the
            standard error of the mean corrected for correlation by blocking, and the
            effective number of independent batches.
        values: the per-batch values, by name (what the statistics are computed from).
        final: True once the evaluation is over (previews from `digest_every` are not).

    A batch's value is what that batch added to Keras' running mean: exact for the mean
    metrics (loss, accuracy, mse, mae, ...); for metrics that are not means of per-sample
    values (AUC, F1) it is the change of the running value, weighted by the batch's size.

    Example:
        ```python
        digest = await program.evaluate(x, y, return_digest=True)
        digest.mean["loss"], digest.stderr["loss"]
        digest.to_dataframe(); digest.save("eval.npz")
        ```
    """

    def __init__(self, values: dict[str, list[float]], final: bool = False):
        self.values = {name: list(v) for name, v in values.items()}
        self.final = final
        self.count = max((len(v) for v in self.values.values()), default=0)
        self.mean, self.variance, self.stderr, self.n_eff = {}, {}, {}, {}
        for name, series in self.values.items():
            array = np.asarray(series, dtype=np.float64)
            self.mean[name] = float(array.mean()) if array.size else math.nan
            self.variance[name] = float(array.var(ddof=1)) if array.size > 1 else math.nan
            self.stderr[name], self.n_eff[name] = blocking(array)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={self.mean[k]:.6g}±{self.stderr[k]:.2g}" for k in self.mean)
        return f"Digest(count={self.count}, final={self.final}, {parts})"

    def to_dataframe(self):
        """One row per logged name: mean, stderr, variance, count, n_eff."""
        import pandas as pd

        return pd.DataFrame([{"name": k, "mean": self.mean[k], "stderr": self.stderr[k],
                              "variance": self.variance[k], "count": len(self.values[k]), "n_eff": self.n_eff[k]}
                             for k in self.mean]).set_index("name")

    def save(self, path: str) -> None:
        """Write an `.npz` (arrays only; `Digest.load` reads it with `allow_pickle=False`),
        atomically."""
        from callbacks.atomic import atomic_write

        names = list(self.values)
        arrays = {"names": np.array(names, dtype=str), "final": np.array(self.final)}
        for i, name in enumerate(names):
            arrays[f"values{i}"] = np.asarray(self.values[name], dtype=np.float64)
        for stat in ("mean", "variance", "stderr", "n_eff"):
            arrays[stat] = np.array([getattr(self, stat)[name] for name in names], dtype=np.float64)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        atomic_write(os.fspath(path), write)

    @classmethod
    def load(cls, path: str) -> "Digest":
        with np.load(path, allow_pickle=False) as data:
            names = [str(n) for n in data["names"]]
            values = {name: data[f"values{i}"].tolist() for i, name in enumerate(names)}
            return cls(values, final=bool(data["final"]))


class DigestCollector:
    """Turns the running means of an evaluation into per-batch values, batch by batch."""

    def __init__(self):
        self.samples = 0
        self.previous: dict[str, float] = {}
        self.values: dict[str, list[float]] = {}

    def add(self, logs: dict, batch_size: int) -> None:
        total = self.samples + batch_size
        for name, value in logs.items():
            try:
                running = float(np.asarray(value, dtype=np.float64).reshape(-1).mean())
            except (TypeError, ValueError):
                continue
            before = self.previous.get(name, 0.0)
            self.values.setdefault(name, []).append((running * total - before * self.samples) / batch_size)
            self.previous[name] = running
        self.samples = total

    def digest(self, final: bool) -> Digest:
        return Digest(self.values, final=final)


__all__ = ["Digest", "DigestCollector", "blocking"]
