"""State that files hold as JSON and NumPy arrays only, so reading a file back never runs code.

`encode(value, where)` turns nested dicts, lists and tuples of JSON values and arrays
into a JSON-able structure plus a dict of arrays (stored beside it, in an `.npz` with
`allow_pickle=False`); `decode` reverses it. Anything else is refused when it is
written, with an error that names `where` and the key, not discovered when it is read.

Markers in the JSON: `{"__array__": name}` (an array stored under `name`),
`{"__tuple__": [...]}`, `{"__items__": [[key, value], ...]}` (a dict whose keys are not
all strings, or which uses a marker as a key).
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

_MARKERS = ("__array__", "__tuple__", "__items__")


class UnsafeStateError(TypeError):
    """A value that a backup or state file cannot hold without pickle."""


def encode(value: Any, where: str, arrays: dict[str, np.ndarray], prefix: str = "state") -> Any:
    """`value` as JSON-able data; its arrays are copied into `arrays` under new keys
    starting with `prefix`. `where` names the value in errors (`EarlyStopping['best']`)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, np.ndarray) or _is_tensor(value):
        array = np.array(_to_numpy(value), copy=True)
        if array.dtype.kind not in "biufcmMSU":
            raise UnsafeStateError(f"{where}: an array of dtype {array.dtype} needs pickle; store numbers or strings.")
        key = f"{prefix}{len(arrays)}"
        arrays[key] = array
        return {"__array__": key}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, f"{where}[{i}]", arrays, prefix) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, f"{where}[{i}]", arrays, prefix) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k in _MARKERS for k in value):
            return {k: encode(v, f"{where}[{k!r}]", arrays, prefix) for k, v in value.items()}
        items = []
        for k, v in value.items():
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise UnsafeStateError(f"{where}: the key {k!r} ({type(k).__name__}) is not a string or number.")
            items.append([k, encode(v, f"{where}[{k!r}]", arrays, prefix)])
        return {"__items__": items}
    raise UnsafeStateError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}; a state_dict may hold only "
        "JSON values (None, bool, int, float, str), NumPy arrays and nested dicts, lists and tuples of them, "
        "so that reading it back cannot run code. Convert it (to a string, a number or an array)."
    )


def decode(data: Any, arrays: dict) -> Any:
    """The value `encode` described, with its arrays taken from `arrays`."""
    if isinstance(data, list):
        return [decode(v, arrays) for v in data]
    if isinstance(data, dict):
        if len(data) == 1:
            (marker, inner), = data.items()
            if marker == "__array__":
                return np.asarray(arrays[inner])
            if marker == "__tuple__":
                return tuple(decode(v, arrays) for v in inner)
            if marker == "__items__":
                return {k: decode(v, arrays) for k, v in inner}
        return {k: decode(v, arrays) for k, v in data.items()}
    return data


def dumps(data: Any) -> bytes:
    """JSON bytes (NaN and infinities allowed: a monitored value may be one)."""
    return json.dumps(data, allow_nan=True, separators=(",", ":")).encode()


def loads(payload: bytes) -> Any:
    return json.loads(payload.decode())


def _is_tensor(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__array__")


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    detach = getattr(value, "detach", None)  # a torch tensor that requires grad
    if callable(detach):
        value = detach().cpu()
    return np.asarray(value)


__all__ = ["UnsafeStateError", "encode", "decode", "dumps", "loads"]
