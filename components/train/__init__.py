"""train: the challenger (champion architecture) trained, logged to MLflow and registered."""

from components.train.logic import TrainResult, train_challenger

__all__ = ["TrainResult", "train_challenger"]
