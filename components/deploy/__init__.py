"""deploy: the challenger becomes the champion on TorchServe and in the MLflow registry."""
