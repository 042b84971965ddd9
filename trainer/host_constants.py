"""Zeros and ones for new variables from the host, not from a compiled op (JAX).

On JAX every eager op compiles an XLA program the first time it meets a shape. A fit's
symbolic build creates the optimizer's slots (Adam: two per trainable variable, zeros)
through Keras' `Zeros` initializer, so before the first step can even be traced it
compiled a `broadcast_in_dim` per new shape: 50-80 ms of a 0.4-0.6 s first step for the
bench MLP (Keras' own fit pays the same).

Inside `host_constant_initializers()`, Keras' `Zeros` and `Ones` initializers called on
this thread return `jax.device_put(np.zeros(...))` (`np.ones`): the same values, of the
same dtype, copied to the device instead of computed there. Other threads, and any use
under a distribution (whose layouts Keras places itself), keep Keras' own initializer.
The initializers are wrapped only while some thread is inside (a `SharedSetting`:
concurrent builds nest, the last one out puts Keras' methods back).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import keras
import numpy as np
from keras.src.initializers.constant_initializers import Ones, Zeros

from callbacks.threads import SharedSetting

_HERE = threading.local()  # .depth: how deep this thread is inside the context
_CLASSES = ((Zeros, np.zeros), (Ones, np.ones))


def _from_host(keras_call, fill):
    def __call__(self, shape, dtype=None):  # Keras' signature: its layout checks read it
        if getattr(_HERE, "depth", 0):
            import jax
            import jax.numpy as jnp

            return jax.device_put(fill(shape, dtype=jnp.dtype(keras.backend.standardize_dtype(dtype))))
        return keras_call(self, shape, dtype)

    return __call__


def _wrap() -> dict:
    originals = {cls: cls.__dict__["__call__"] for cls, _ in _CLASSES}
    for cls, fill in _CLASSES:
        cls.__call__ = _from_host(originals[cls], fill)
    return originals


def _unwrap(originals: dict) -> None:
    for cls, keras_call in originals.items():
        cls.__call__ = keras_call


_WRAPPED = SharedSetting(_wrap, _unwrap)


@contextlib.contextmanager
def host_constant_initializers() -> Iterator[None]:
    """Variables this thread creates meanwhile with `Zeros` or `Ones` get host values
    (JAX without a distribution; elsewhere it changes nothing)."""
    if keras.backend.backend() != "jax" or keras.distribution.distribution() is not None:
        yield
        return
    with _WRAPPED.held():
        _HERE.depth = getattr(_HERE, "depth", 0) + 1
        try:
            yield
        finally:
            _HERE.depth -= 1


__all__ = ["host_constant_initializers"]
