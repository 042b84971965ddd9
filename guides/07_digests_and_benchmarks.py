"""Evaluation digests and benchmark evaluators on load_digits.

Run it:  python guides/07_digests_and_benchmarks.py     (writes into ./asyncfit-guide-07/)

1. `evaluate(return_digest=True, digest_every=N)`: the mean of every logged value over
   the batches, with a standard error that accounts for correlated batches (blocking),
   previews every N batches through `on_digest`, and an `.npz` digest file at the end.
2. `Benchmark` as a named evaluator in `fit`: scored at every validation, with each
   example's prediction; `on_benchmark_eval` fires with the metrics, tags and a
   predictions table, `PredictionsWriter` stores one CSV per (benchmark, step).
3. `Experiment(benchmarks=...)`: every run is scored after its training (step None).
"""
import asyncio
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from callbacks import Callback, PredictionsWriter  # noqa: E402
from trainer import Benchmark, Digest, Experiment, Program  # noqa: E402

OUTPUT = os.path.abspath("asyncfit-guide-07")


def build(config: dict | None = None) -> Program:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    program = Program(inputs=inputs, outputs=keras.layers.Dense(10, activation="softmax")(hidden))
    program.compile(optimizer=keras.optimizers.Adam((config or {}).get("learning_rate", 1e-3)),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return program


class Previews(Callback):
    def on_digest(self, digest):
        state = "final" if digest.final else "preview"
        print(f"  {state} after {digest.count:2d} batches: loss {digest.mean['loss']:.4f} "
              f"± {digest.stderr['loss']:.4f}")


class BenchmarkLog(Callback):
    def on_benchmark_eval(self, ctx, result, predictions, step=None):
        where = f"step {step}" if step is not None else f"after training, run {ctx.arm}-{ctx.repeat}"
        wrong = int((predictions["y_pred"].map(np.argmax) != predictions["y_true"]).sum())
        print(f"  {result.name} at {where}: accuracy {result.metrics['accuracy']:.4f}, "
              f"{wrong} of {len(predictions)} wrong, tags {result.tags}")


async def main() -> None:
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype("float32"), y.astype("int32")
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

    print("== 1. a digest of the test set, previews every 4 batches ==")
    program = build()
    await program.fit(x_train, y_train, epochs=5, verbose=0)
    digest = await program.evaluate(x_test, y_test, batch_size=32, verbose=0, return_digest=True,
                                    digest_every=4, callbacks=[Previews()])
    print(digest.to_dataframe().round(4))
    path = os.path.join(OUTPUT, "test-digest.npz")
    os.makedirs(OUTPUT, exist_ok=True)
    digest.save(path)
    print("saved and read back:", Digest.load(path))

    print("\n== 2. a benchmark scored at every validation, predictions written per step ==")
    writer = PredictionsWriter(os.path.join(OUTPUT, "predictions"))
    await build().fit(x_train, y_train, epochs=3, verbose=0, callbacks=[BenchmarkLog(), writer],
                      validation_data={"holdout": Benchmark(x_test, y_test, tags={"split": "last 397"})})
    print("files:", sorted(os.path.basename(p) for p in writer.written))

    print("\n== 3. an experiment, each run scored after training ==")
    experiment = Experiment("lr", build, {"slow": {"learning_rate": 3e-4}, "fast": {"learning_rate": 3e-3}},
                            benchmarks={"holdout": Benchmark(x_test, y_test)})
    result = await experiment.run(x_train, y_train, epochs=3, callbacks=[BenchmarkLog()])
    print(result.to_dataframe()[["arm", "repeat", "bench_holdout_accuracy"]])
    if not result.to_dataframe()["bench_holdout_accuracy"].notna().all():
        sys.exit("a run was not scored")


if __name__ == "__main__":
    asyncio.run(main())
