"""Beyond one device: keras.distribution on JAX, sharded backups, several processes.

Run it:  python guides/05_distributed.py       (JAX; writes ./asyncfit-guide-05/)

asyncfit builds on Keras' own distribution API: set a distribution before you build the
program, then `await program.fit(...)` as always. This guide fakes 4 devices on the CPU
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`, set before JAX starts); on GPUs or
TPUs, leave it out and the real devices are used.

1. DataParallel over 4 devices: each batch is split along its batch axis inside the
   compiled step (a layer prints the layout it sees); the result equals one device's.
2. ModelParallel: a LayoutMap shards the hidden kernel over a "model" axis; it stays
   sharded through fit. A BackupAndRestore writes the sharded state with orbax-checkpoint
   (each process its own shards); a SIGTERM mid-run, then the same call again, resumes
   exactly.
3. Several processes (one per host): every process runs the same script with the same
   data, after `keras.distribution.initialize(...)`; `batch_size` is the global batch.
   Here two local processes of 2 devices each; they end with the same result as one
   process with 4 devices, and only process 0 writes the CSV log.

Launching several processes on a cluster is the same command on every host:

    python train.py --coordinator HOST0:PORT --processes N --process-id I

where train.py calls `keras.distribution.initialize("HOST0:PORT", N, I)` first (on some
clusters, such as Cloud TPU or SLURM, `keras.distribution.initialize()` finds them alone).
`BackupAndRestore`'s folder must be on storage every host sees.
"""
import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--process-id", type=int, help="(part 3) this process's index; the guide starts them itself")
parser.add_argument("--port", type=int, default=0)
args = parser.parse_args()

os.environ["KERAS_BACKEND"] = "jax"  # keras.distribution runs on JAX
devices = 2 if args.process_id is not None else 4
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

if args.process_id is not None:
    keras.distribution.initialize(f"localhost:{args.port}", 2, args.process_id)

from callbacks import BackupAndRestore, Callback, CSVLogger, TrainingInterrupted  # noqa: E402
from trainer import Program  # noqa: E402

WORK = os.path.abspath("asyncfit-guide-05")
x, y = load_digits(return_X_y=True)
x, y = (x / 16.0).astype("float32"), y.astype("int32")
x, y = x[:1536], y[:1536]  # 24 batches of 64: every batch splits over the devices
layouts_seen: set = set()


class ShowLayout(keras.layers.Layer):
    """Passes its input through, noting how it is laid out inside the compiled step."""

    def call(self, inputs):
        jax.debug.inspect_array_sharding(inputs, callback=lambda s: layouts_seen.add(str(getattr(s, "spec", s))))
        return inputs


def build() -> Program:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu", name="hidden")(ShowLayout()(inputs))
    program = Program(inputs, keras.layers.Dense(10, activation="softmax", name="head")(hidden))
    program.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    return program


class TerminateAt(Callback):
    """Sends this process a SIGTERM after step `step`, once (as a cluster's preemption would)."""

    def __init__(self, step: int):
        super().__init__()
        self.step, self.sent = step, False

    def on_train_batch_end(self, batch, logs=None):
        if not self.sent and self.program.step_count == self.step:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


async def fit(program: Program, **kwargs):
    return await program.fit(x, y, batch_size=64, epochs=4, seed=1, verbose=0, **kwargs)


async def one_process() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)

    print("1. one device, then DataParallel over", jax.device_count(), "devices")
    single = build()
    await fit(single)
    single_weights = single.get_weights()

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    program = build()  # built after the distribution is set: its variables are laid out by it
    layouts_seen.clear()
    history = await fit(program)
    print(f"   the batch inside the step: {sorted(layouts_seen)}; loss {history.history['loss'][-1]:.4f}")
    gap = max(float(np.abs(a - b).max()) for a, b in zip(single_weights, program.get_weights()))
    print(f"   largest difference from one device's variables: {gap:.1e}")
    assert "P('batch',)" in layouts_seen and gap < 1e-4

    print("2. ModelParallel: the hidden kernel sharded over a 'model' axis; SIGTERM, then resume")
    mesh = keras.distribution.DeviceMesh((2, 2), ("batch", "model"), jax.devices())
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["hidden/kernel"] = (None, "model")
    keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layout_map))
    reference = build()
    await fit(reference)
    kernel = reference.get_layer("hidden").kernel.value
    print(f"   the kernel after fit: {kernel.sharding.spec}, {len(kernel.addressable_shards)} shards")

    program = build()
    backup = os.path.join(WORK, "backup")
    try:
        await fit(program, callbacks=[BackupAndRestore(backup, save_freq=10), TerminateAt(30)])
    except TrainingInterrupted as stop:
        print(f"   {stop}")
    print(f"   in {backup}: {sorted(os.listdir(backup))}")
    program = build()  # a fresh process would build it again too
    await fit(program, callbacks=[BackupAndRestore(backup, save_freq=10)])
    same = all(np.array_equal(a, b) for a, b in zip(reference.get_weights(), program.get_weights()))
    print(f"   resumed run equals the uninterrupted one: {same}")
    assert same

    print("3. two processes x 2 devices (this script, started twice)")
    port = find_port()
    workers = [subprocess.Popen([sys.executable, __file__, "--process-id", str(i), "--port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    for i, (worker, output) in enumerate(zip(workers, outputs)):
        lines = [line for line in output.splitlines() if line.startswith("   process")]
        assert worker.returncode == 0 and lines, output[-2000:]
        print(lines[-1])
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    four = build()
    history = await fit(four)
    print(f"   one process x 4 devices:  loss {history.history['loss'][-1]:.6f}")
    print(f"   CSV logs written: {sorted(f for f in os.listdir(WORK) if f.endswith('.csv'))}")


async def one_of_two() -> None:
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    program = build()
    history = await fit(program, callbacks=[CSVLogger(os.path.join(WORK, f"log-process-{args.process_id}.csv"))])
    print(f"   process {jax.process_index()} of {jax.process_count()} ({jax.local_device_count()} of "
          f"{jax.device_count()} devices): loss {history.history['loss'][-1]:.6f}", flush=True)


def find_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    asyncio.run(one_process() if args.process_id is None else one_of_two())
