"""train: the challenger (champion architecture) trained, logged to MLflow and registered."""
