"""`compile(reward=...)`: a differentiable score to maximise, as a Keras loss and metric."""
from __future__ import annotations

from typing import Callable

import keras


class _RewardConfig:
    """(De)serialises the `reward` callable (a registered Keras function) with the rest."""

    def get_config(self) -> dict:
        return {"reward": keras.saving.serialize_keras_object(self.reward), "name": self.name}

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["reward"] = keras.saving.deserialize_keras_object(config["reward"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="asyncfit")
class RewardLoss(_RewardConfig, keras.losses.Loss):
    """The negative of `reward(y_true, y_pred)`: minimising it maximises the reward."""

    def __init__(self, reward: Callable, name: str = "negative_reward", **kwargs):
        super().__init__(name=name, **kwargs)
        self.reward = reward

    def call(self, y_true, y_pred):
        return -self.reward(y_true, y_pred)


@keras.saving.register_keras_serializable(package="asyncfit")
class RewardMetric(_RewardConfig, keras.metrics.MeanMetricWrapper):
    """Running mean of the reward, logged as `reward` / `val_reward` (higher is better)."""

    def __init__(self, reward: Callable, name: str = "reward", dtype=None):
        super().__init__(fn=reward, name=name, dtype=dtype)
        self.reward = reward
        self._direction = "up"
