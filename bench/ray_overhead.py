"""What running an Experiment on Ray costs per run, against the local engine.

    python bench/ray_overhead.py        (KERAS_BACKEND=jax by default)

A local Ray with 2 CPUs (`ray.init(num_cpus=2)`); 2 arms x 2 repeats of the step_overhead
MLP, 2 epochs of 20k samples, `engine="ray"` twice (the first call starts the workers and
imports Keras and JAX in them; the second finds them warm), then the local engine. The
overhead per run is the worker time not spent in the runs themselves:
(Ray wall time x 2 CPUs - sum of the runs' own wall times) / 4 runs.
"""
import asyncio
import time

import common
import numpy as np


def main() -> None:
    import ray

    from step_overhead import mlp
    from trainer import Experiment, Program

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 32)).astype("float32")
    y = x[:, :4].sum(axis=1, keepdims=True).astype("float32")
    experiment = Experiment("overhead", lambda config: mlp(Program), {"a": {}, "b": {}}, n_repeats=2)

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    start_up = time.perf_counter() - started
    rows = [("ray.init (a local Ray, 2 CPUs)", f"{start_up:.2f} s", "")]
    for label in ("first call (cold workers)", "second call (warm workers)"):
        started = time.perf_counter()
        result = asyncio.run(experiment.run(x, y, epochs=2, engine="ray"))
        wall = time.perf_counter() - started
        own = sum(run.wall_time for run in result.runs)
        rows.append((f"Ray, {label}: wall / overhead per run", f"{wall:.2f} s / {(wall * 2 - own) / 4:.2f} s", ""))
    started = time.perf_counter()
    local = asyncio.run(experiment.run(x, y, epochs=2))
    wall = time.perf_counter() - started
    rows.append(("local engine, one run after another: wall / mean run", f"{wall:.2f} s / "
                 f"{np.mean([run.wall_time for run in local.runs]):.2f} s", ""))
    ray.shutdown()
    common.report("ray_overhead", rows, notes=(
        "Overhead per run: (Ray wall time x 2 CPUs - the runs' own wall times) / 4 runs: starting or "
        "reaching a worker, unpickling the experiment and data (shipped once with ray.put), results and "
        "epoch logs back, and the driver's hooks."))


if __name__ == "__main__":
    main()
