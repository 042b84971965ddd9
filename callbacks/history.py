"""`History`: the per-epoch logs of a `fit` call, returned by it."""
from __future__ import annotations

from callbacks.callback import Callback


class History(Callback):
    """Records every epoch's logs; `fit` returns it.

    Attributes:
        history: dict mapping each log key to its list of per-epoch values.
        epoch: the epoch indices recorded (0-based, as Keras).

    Example:
        ```python
        history = await program.fit(x, y, epochs=3)
        history.history["loss"]       # [0.61, 0.42, 0.35]
        history.to_dataframe()         # one row per epoch
        ```
    """

    callback_order = 10

    def __init__(self):
        super().__init__()
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def to_dataframe(self):
        """One row per epoch, a column per log key, indexed by epoch."""
        import pandas as pd

        frame = pd.DataFrame(self.history, index=pd.Index(self.epoch, name="epoch"))
        return frame

    def state_dict(self) -> dict:
        return {"history": self.history, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.history = {k: list(v) for k, v in state.get("history", {}).items()}
        self.epoch = list(state.get("epoch", []))

    def plot(self, metric: str = "loss", path: str | None = None):
        """Plot `metric` (and `val_{metric}` if logged) per epoch; save a PNG when `path` is set."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        for key in (metric, f"val_{metric}"):
            if key in self.history:
                ax.plot([e + 1 for e in self.epoch], self.history[key], label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
        if path:
            fig.savefig(path)
        return fig
