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
from callbacks.backup_and_restore import BackupAndRestore  # noqa: E402
from callbacks.csv_logger import CSVLogger  # noqa: E402
from callbacks.early_stopping import EarlyStopping  # noqa: E402
from callbacks.lambda_callback import LambdaCallback  # noqa: E402
from callbacks.monitor import Monitor  # noqa: E402
from callbacks.monitor_base import MonitorCallback  # noqa: E402
from callbacks.predictions_writer import PredictionsWriter  # noqa: E402
from callbacks.program_checkpoint import ProgramCheckpoint  # noqa: E402
from callbacks.terminate_on_nan import TerminateOnNaN  # noqa: E402
from callbacks.history import History  # noqa: E402
from callbacks.progress_bar import ProgressBar  # noqa: E402

__all__ = [
    "BackupAndRestore", "CSVLogger", "EarlyStopping", "History", "LambdaCallback", "Monitor", "PredictionsWriter", "ProgramCheckpoint", "TerminateOnNaN",
    "Callback", "CallbackList", "CallableCallback", "ManifestRow", "MonitorCallback", "ProgressBar",
    "StopTraining", "TrainingInterrupted", "Update",
]
