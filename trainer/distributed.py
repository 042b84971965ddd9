"""`keras.distribution` on JAX: how batches and state are laid out over the devices.

Keras' own JAX trainer is the model: a batch goes to the devices with the active
distribution's data layout (`distribution.get_data_layout`, then
`jax.make_array_from_process_local_data`), and the jitted steps keep each state
variable's sharding. Several processes (`keras.distribution.initialize`) each run the
same script on the same data: every process holds the whole global batch, and
`make_array_from_process_local_data(..., global_shape=batch.shape)` takes from it only
the rows its own devices hold. What the processes agree on lives in
`callbacks.processes`.
"""
from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np


class Layout:
    """The active distribution's layouts for batches and state (JAX only).

    `Layout.current()` is None without a distribution, so single-device runs pay nothing."""

    def __init__(self, distribution):
        import jax

        self.distribution = distribution
        self.mesh = distribution.device_mesh.backend_mesh
        self.key = f"{type(distribution).__name__}:{id(distribution)}"
        self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self._shardings: dict = {}

    @classmethod
    def current(cls) -> "Layout | None":
        if keras.backend.backend() != "jax":
            return None
        distribution = keras.distribution.distribution()
        return None if distribution is None else cls(distribution)

    def state_shardings(self, program) -> tuple:
        """The shardings of (trainable, non-trainable, optimizer, metrics) variables.

        A variable created before the distribution was set lives on one device; it cannot
        join a step laid out over the mesh, so that is refused here, before any step."""
        import jax

        optimizer = getattr(program, "optimizer", None)
        groups = (program.trainable_variables, program.non_trainable_variables,
                  optimizer.variables if optimizer is not None else [], program.metrics_variables)
        shardings = []
        for variables in groups:
            group = []
            for variable in variables:
                sharding = variable.value.sharding
                if isinstance(sharding, jax.sharding.SingleDeviceSharding) and self.mesh.size > 1:
                    raise ValueError(
                        f"the variable {variable.path!r} lives on one device, but a distribution over "
                        f"{self.mesh.size} devices is active: it was created before "
                        "keras.distribution.set_distribution(...). Set the distribution first, then build "
                        "and compile the program (or build it inside `with distribution.scope():`).")
                group.append(sharding)
            shardings.append(group)
        return tuple(shardings)

    def sharding(self, shape: tuple, stacked: bool = False):
        """The sharding of a batch leaf of `shape` (`stacked`: a chunk, steps first)."""
        key = (shape, stacked)
        sharding = self._shardings.get(key)
        if sharding is None:
            sharding = self._shardings[key] = self._data_sharding(shape[1:] if stacked else shape, stacked)
        return sharding

    def _data_sharding(self, shape: tuple, stacked: bool):
        import jax

        spec = tuple(self.distribution.get_data_layout(shape).backend_layout.spec)
        batch_axes = spec[0] if spec else None
        names = () if batch_axes is None else (batch_axes if isinstance(batch_axes, tuple) else (batch_axes,))
        shards = math.prod(self.mesh.shape[name] for name in names)
        if not shape or shape[0] % shards:
            # A batch that does not split evenly over the devices (a short last batch) is
            # computed whole on each: the same result, without the parallelism.
            return self.replicated
        spec = jax.sharding.PartitionSpec(*((None,) if stacked else ()), *spec)
        return jax.sharding.NamedSharding(self.mesh, spec)

    def place(self, batch: Any, stacked: bool = False) -> Any:
        """`batch` (the whole global batch, the same in every process) as global arrays laid
        out over the mesh; each process transfers only its own devices' rows."""
        import jax

        def one(leaf):
            if leaf is None:
                return None
            sharding = self.sharding(tuple(leaf.shape), stacked)
            return jax.make_array_from_process_local_data(sharding, np.asarray(leaf), tuple(leaf.shape))

        return keras.tree.map_structure(one, batch)
