"""asyncfit's trainer: `Program`, the async loop, data adapters and `History`."""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from trainer.benchmark import Benchmark, BenchmarkResult  # noqa: E402
from trainer.digest import Digest  # noqa: E402
from trainer.experiment import Experiment, ExperimentContext, ExperimentResult, RunResult  # noqa: E402
from trainer.history import History  # noqa: E402
from trainer.observability import disable_observability, enable_observability  # noqa: E402
from trainer.program import FunctionalProgram, Program, SequentialProgram  # noqa: E402
from trainer.ray_engine import RayEngine  # noqa: E402


def load_program(path: str, custom_objects: dict | None = None, compile: bool = True,
                 safe_mode: bool = True) -> Program:
    """Load a program saved with `Program.save` (a `.keras` file).

    Args:
        path: the `.keras` file.
        custom_objects: classes and functions the file names, as for `keras.saving.load_model`.
        compile: restore the compile config (optimizer, loss, metrics) too.
        safe_mode: Keras' own, on by default: a file that would run code when loaded (a
            `Lambda` layer's pickled function, say) is refused. Pass False only for files
            you made yourself.
    """
    import keras

    from trainer.keras_saving import cache_keras_skipsets

    cache_keras_skipsets()
    return keras.saving.load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)


__all__ = [
    "Program", "FunctionalProgram", "SequentialProgram", "History", "load_program",
    "Experiment", "ExperimentContext", "ExperimentResult", "RunResult", "Benchmark", "BenchmarkResult", "Digest",
    "enable_observability", "disable_observability", "RayEngine",
]
