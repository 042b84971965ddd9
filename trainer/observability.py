"""`enable_observability`: a `callbacks.Monitor` for every fit/evaluate/predict.

The MLflow worker itself lives beside the Monitor (`callbacks/mlflow_worker.py`).
"""
from __future__ import annotations

from callbacks.mlflow_worker import MlflowWorker, worker_for
from callbacks.monitor import Monitor

_CONFIG: dict | None = None


def enable_observability(tracking_uri: str | None = None, experiment_name: str | None = None, **monitor_kwargs) -> None:
    """Give every `fit`/`evaluate`/`predict` a `callbacks.Monitor` with these settings
    (unless the call lists one). With no tracking URI, a local sqlite store
    (`./mlflow.db`) is used, so it works without a server."""
    global _CONFIG
    _CONFIG = {"tracking_uri": tracking_uri, "experiment_name": experiment_name, **monitor_kwargs}


def disable_observability() -> None:
    global _CONFIG
    _CONFIG = None


def with_monitor(callbacks: list | None) -> list:
    """`callbacks` plus a Monitor when observability is on and none is listed."""
    callbacks = list(callbacks or [])
    if _CONFIG is None:
        return callbacks
    if not any(isinstance(cb, Monitor) for cb in callbacks):
        callbacks.append(Monitor(**_CONFIG))
    return callbacks


__all__ = ["enable_observability", "disable_observability", "with_monitor", "worker_for", "MlflowWorker"]
