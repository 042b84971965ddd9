"""One process of a distributed fit (tests/test_distributed.py): JAX on faked CPU devices.

    python distributed_fit.py OUT [--processes N --process-id I --port P] [--devices D]
        [--layout none|data|model] [--backup DIR --save-freq K] [--die-at-step S]
        [--term-at-step S] [--stop-at-step S] [--seed N] [--staged] [--epochs E] [--csv FILE]

Writes OUT (an .npz): the final weights, the loss history, the evaluate/predict results,
the input shardings a layer saw inside the compiled steps, and the hidden kernel's
sharding after fit. `--die-at-step S` SIGKILLs this process right after step S,
`--term-at-step S` SIGTERMs it.
"""
import argparse
import asyncio
import json
import os
import signal
import sys

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--processes", type=int, default=1)
parser.add_argument("--process-id", type=int, default=0)
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--devices", type=int, default=4, help="CPU devices in this process")
parser.add_argument("--layout", choices=("none", "data", "model"), default="data")
parser.add_argument("--backup")
parser.add_argument("--save-freq", type=int, default=8)
parser.add_argument("--die-at-step", type=int)
parser.add_argument("--term-at-step", type=int, help="SIGTERM this process right after this step")
parser.add_argument("--stop-at-step", type=int, help="a callback sets stop_training right after this step")
parser.add_argument("--seed", type=int, default=5, help="the shuffle seed; -1: none (drawn, and agreed)")
parser.add_argument("--staged", action="store_true", help="a before_parameter_update hook that rejects once")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--csv")
parser.add_argument("--checkpoint", help="ProgramCheckpoint(save_variables_only=True) to this .orbax folder")
parser.add_argument("--keras-checkpoint", help="ProgramCheckpoint to this .keras file (process 0 writes it)")
parser.add_argument("--load", help="load_variables from this .orbax folder instead of training")
args = parser.parse_args()

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

if args.processes > 1:
    keras.distribution.initialize(f"localhost:{args.port}", args.processes, args.process_id)

from callbacks import BackupAndRestore, Callback, CSVLogger, ProgramCheckpoint  # noqa: E402
from trainer import Program  # noqa: E402

seen: list[str] = []


class InspectSharding(keras.layers.Layer):
    """Records how its input is laid out inside the compiled step."""

    def call(self, x):
        jax.debug.inspect_array_sharding(x, callback=lambda s: seen.append(str(getattr(s, "spec", "single"))))
        return x


class SignalAt(Callback):
    def __init__(self, step: int, sig: int):
        super().__init__()
        self.step, self.sig = step, sig

    def on_train_batch_end(self, batch, logs=None):
        if self.program.step_count == self.step:
            os.kill(os.getpid(), self.sig)


class StopAt(Callback):
    def on_train_batch_end(self, batch, logs=None):
        if self.program.step_count == args.stop_at_step:
            self.program.stop_training = True


class RejectOnce(Callback):
    """Step stages between compute and apply: every step's first update is rejected and
    computed again (the same batch gives the same update), and its gradient norm read."""

    def __init__(self):
        super().__init__()
        self.norms = []

    def on_compute_update_end(self, step, update):
        return update.attempt == 0

    def before_parameter_update(self, step, update):
        self.norms.append(float(update.grad_norm))


if args.layout == "data":
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
elif args.layout == "model":
    mesh = keras.distribution.DeviceMesh((len(jax.devices()) // 2, 2), ("batch", "model"), jax.devices())
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["hidden/kernel"] = (None, "model")
    keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch"))

keras.utils.set_random_seed(1)
inputs = keras.Input((8,))
hidden = keras.layers.Dense(16, activation="relu", name="hidden")(InspectSharding()(inputs))
program = Program(inputs, keras.layers.Dense(1, name="head")(hidden))
program.compile(optimizer="adam", loss="mse", metrics=["mae"])

rng = np.random.default_rng(0)
x = rng.normal(size=(1030, 8)).astype("float32")  # 1030 = 16 batches of 64 and a short one of 6
y = (x[:, :1] + 0.5 * x[:, 1:2]).astype("float32")


async def main():
    callbacks = []
    if args.backup:
        callbacks.append(BackupAndRestore(args.backup, save_freq=args.save_freq))
    if args.die_at_step is not None:
        callbacks.append(SignalAt(args.die_at_step, signal.SIGKILL))
    if args.term_at_step is not None:
        callbacks.append(SignalAt(args.term_at_step, signal.SIGTERM))
    if args.stop_at_step is not None:
        callbacks.append(StopAt())
    if args.staged:
        callbacks.append(RejectOnce())
    if args.csv:
        callbacks.append(CSVLogger(args.csv))
    if args.checkpoint:
        callbacks.append(ProgramCheckpoint(args.checkpoint, save_variables_only=True, monitor="loss"))
    if args.keras_checkpoint:
        callbacks.append(ProgramCheckpoint(args.keras_checkpoint, monitor="loss"))
    if args.load:
        program.load_variables(args.load)
        losses = []
    else:
        history = await program.fit(x, y, batch_size=64, epochs=args.epochs,
                                    seed=None if args.seed < 0 else args.seed, verbose=0, callbacks=callbacks)
        losses = history.history["loss"]
    evaluated = await program.evaluate(x, y, batch_size=64, verbose=0)
    predicted = await program.predict(x[:100], batch_size=64, verbose=0)
    kernel = program.get_layer("hidden").kernel.value
    np.savez(args.out, *[np.asarray(w) for w in program.get_weights()], predicted=predicted,
             info=np.frombuffer(json.dumps({
                 "loss": losses, "evaluate": evaluated, "seen": sorted(set(seen)),
                 "kernel_spec": str(getattr(kernel.sharding, "spec", "single")), "step_count": program.step_count,
                 "process_count": jax.process_count(), "devices": jax.device_count(),
             }).encode(), dtype=np.uint8))


asyncio.run(main())
