"""Steps under keras.distribution.DataParallel with 1, 2 and 4 devices (JAX).

    python bench/distributed.py             (fakes CPU devices unless --real-devices)

For each device count, a fresh process (the count of faked CPU devices is fixed when
JAX starts) trains an MLP (256-512-512-10, batch 256, 40 batches an epoch) with
Program.fit and with keras.Model.fit under the same DataParallel distribution, warm
fits taking turns, 5 rounds: the time per step of each, and the median paired ratio
keras.fit / Program.fit. Faked CPU devices share the same cores, so more of them cannot
be faster: the table shows what laying batches out and keeping state sharded costs,
and that Program.fit keeps its lead over keras.fit there. On a machine with several
accelerators, `--real-devices` uses its first 1, 2 and 4 devices.
"""
import argparse
import json
import os
import subprocess
import sys

STEPS, BATCH, EPOCHS, ROUNDS = 40, 256, 2, 5


def measure(devices: int, real: bool) -> dict:
    if not real:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    os.environ["KERAS_BACKEND"] = "jax"
    import asyncio

    import common
    import jax
    import keras
    import numpy as np

    from trainer import Program

    chosen = jax.devices()[:devices]
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=chosen))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * BATCH, 256)).astype("float32")
    y = rng.integers(0, 10, size=(STEPS * BATCH,)).astype("int32")

    def build(cls):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((256,))
        hidden = keras.layers.Dense(512, activation="relu")(inputs)
        hidden = keras.layers.Dense(512, activation="relu")(hidden)
        model = cls(inputs, keras.layers.Dense(10)(hidden))
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    program, model = build(Program), build(keras.Model)

    def ours():
        asyncio.run(program.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0))

    def theirs():
        model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0)

    ours(), theirs()  # compiles
    times = common.times_of_each({"program": ours, "keras": theirs}, repeats=ROUNDS)
    steps = STEPS * EPOCHS
    return {"devices": devices, "platform": chosen[0].platform,
            "program_ms": 1000 * min(times["program"]) / steps, "keras_ms": 1000 * min(times["keras"]) / steps,
            "ratio": common.paired_ratio(times, "keras", "program")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--real-devices", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if args.one:
        print(json.dumps(measure(args.one, args.real_devices)))
        return
    results = []
    for devices in (1, 2, 4):
        command = [sys.executable, __file__, "--one", str(devices)] + (["--real-devices"] if args.real_devices else [])
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    os.environ["KERAS_BACKEND"] = "jax"
    import common

    kind = "real" if args.real_devices else "faked CPU"
    rows = [(f"{r['devices']} {kind} device(s) ({r['platform']}): ms per step, Program.fit / keras.fit",
             f"{r['program_ms']:.2f} / {r['keras_ms']:.2f} (keras.fit / Program.fit {r['ratio']:.2f})",
             "reported" if r["devices"] > 1 else ">= 1.0")
            for r in results]
    common.report("distributed", rows, notes=(
        f"DataParallel, MLP 256-512-512-10, batch {BATCH}, {STEPS} steps an epoch, {EPOCHS} epochs per fit, best of "
        f"{ROUNDS} warm fits taking turns (ratio: the median of paired ratios). Faked CPU devices share this "
        "machine's cores, so they show the cost of the layout, not a speedup."))


if __name__ == "__main__":
    main()
