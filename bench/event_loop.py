"""Event-loop responsiveness: gaps seen by a 1 ms ticker task while training.

    python bench/event_loop.py

Program.fit (awaited) against keras.Model.fit run in a worker thread (asyncio.to_thread),
which is what a user of an asyncio program would do otherwise. Same MLP and data as
step_overhead, 3 epochs, validation on 10%; the compiles of the first steps are included
(they are most of such a short fit). Each fit runs in a fresh process, as a real run
would, the two contenders taking turns, 5 fits each; the p99 is over the gaps of all of
them, and the range of the single fits' p99s is reported beside it.
"""
import asyncio
import json
import subprocess
import sys
import time

import common
import numpy as np

ROUNDS = 5


async def gaps_during(coro) -> np.ndarray:
    gaps, done = [], False

    async def ticker():
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    await coro
    done = True
    await task
    return np.array(gaps) * 1000


def one_fit(contender: str) -> list[float]:
    """The ticker's gaps (ms) during one fit in this process."""
    import keras

    from step_overhead import mlp
    from trainer import Program

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 32)).astype("float32")
    y = x[:, :4].sum(axis=1, keepdims=True).astype("float32")
    if contender == "program":
        fit = mlp(Program).fit(x, y, epochs=3, verbose=0, validation_split=0.1)
    else:
        fit = asyncio.to_thread(mlp(keras.Model).fit, x, y, epochs=3, verbose=0, validation_split=0.1)
    return asyncio.run(gaps_during(fit)).tolist()


def fit_in_fresh_process(contender: str) -> np.ndarray:
    out = subprocess.run([sys.executable, __file__, "--one", contender], check=True, capture_output=True, text=True)
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    runs: dict[str, list[np.ndarray]] = {"program": [], "keras": []}
    for _ in range(ROUNDS):
        for contender in runs:
            runs[contender].append(fit_in_fresh_process(contender))
    rows = []
    for contender, label in (("program", "Program.fit"), ("keras", "keras.Model.fit in a thread")):
        pooled = np.concatenate(runs[contender])
        singles = [np.percentile(gaps, 99) for gaps in runs[contender]]
        target = contender == "program"
        rows += [
            (f"{label}: p99 gap", f"{np.percentile(pooled, 99):.2f} ms", "<= 5 ms" if target else ""),
            (f"{label}: p99 of single fits", f"{min(singles):.2f} .. {max(singles):.2f} ms", ""),
            (f"{label}: max gap", f"{pooled.max():.2f} ms", "<= 20 ms" if target else ""),
        ]
    common.report("event_loop", rows, notes=(
        f"A ticker sleeping 1 ms; a gap is the time between two ticks. {ROUNDS} fits each, every fit in a "
        "fresh process, the two taking turns; the p99 and max are over all their gaps. Most of a fit this "
        "short is compiling (about 1.2 of 1.5 s), when XLA's threads keep both cores busy."))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(one_fit(sys.argv[2])))
    else:
        main()
