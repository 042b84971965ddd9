"""Event-loop responsiveness: gaps seen by a 1 ms ticker task while training.

    python bench/event_loop.py

Program.fit (awaited) against keras.Model.fit run in a worker thread (asyncio.to_thread),
which is what a user of an asyncio program would do otherwise. Same MLP and data as
step_overhead, 3 epochs, validation on 10%; the compile of the first steps is included.
"""
import asyncio
import time

import common
import numpy as np

from step_overhead import mlp
from trainer import Program


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


def main() -> None:
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 32)).astype("float32")
    y = x[:, :4].sum(axis=1, keepdims=True).astype("float32")
    ours = asyncio.run(gaps_during(mlp(Program).fit(x, y, epochs=3, verbose=0, validation_split=0.1)))
    model = mlp(keras.Model)
    theirs = asyncio.run(gaps_during(asyncio.to_thread(model.fit, x, y, epochs=3, verbose=0, validation_split=0.1)))
    rows = [
        ("Program.fit: p99 gap", f"{np.percentile(ours, 99):.2f} ms", "<= 5 ms"),
        ("Program.fit: max gap", f"{ours.max():.2f} ms", "<= 20 ms"),
        ("keras.Model.fit in a thread: p99 gap", f"{np.percentile(theirs, 99):.2f} ms", ""),
        ("keras.Model.fit in a thread: max gap", f"{theirs.max():.2f} ms", ""),
    ]
    common.report("event_loop", rows, notes="A ticker sleeping 1 ms; a gap is the time between two ticks.")


if __name__ == "__main__":
    main()
