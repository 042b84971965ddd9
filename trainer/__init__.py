"""asyncfit's trainer: `Program`, the async loop, data adapters and `History`."""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from trainer.experiment import Experiment, ExperimentContext, ExperimentResult, RunResult  # noqa: E402
from trainer.history import History  # noqa: E402
from trainer.observability import disable_observability, enable_observability  # noqa: E402
from trainer.program import FunctionalProgram, Program, SequentialProgram  # noqa: E402


def load_program(path: str, custom_objects: dict | None = None, compile: bool = True) -> Program:
    """Load a program saved with `Program.save` (a `.keras` file)."""
    import keras

    from trainer.keras_saving import cache_keras_skipsets

    cache_keras_skipsets()
    return keras.saving.load_model(path, custom_objects=custom_objects, compile=compile)


__all__ = [
    "Program", "FunctionalProgram", "SequentialProgram", "History", "load_program",
    "Experiment", "ExperimentContext", "ExperimentResult", "RunResult",
    "enable_observability", "disable_observability",
]
