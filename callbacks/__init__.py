"""asyncfit's callbacks: the base class, the ordered list, and the built-ins."""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from callbacks.callback import (  # noqa: E402
    Callback,
    ManifestRow,
    StopTraining,
    TrainingInterrupted,
    Update,
)
from callbacks.callback_list import CallableCallback, CallbackList  # noqa: E402
from callbacks.monitor_base import MonitorCallback  # noqa: E402
from callbacks.progress_bar import ProgressBar  # noqa: E402

__all__ = [
    "Callback", "CallbackList", "CallableCallback", "ManifestRow", "MonitorCallback", "ProgressBar",
    "StopTraining", "TrainingInterrupted", "Update",
]
