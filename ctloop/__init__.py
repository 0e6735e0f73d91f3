"""ctloop: continuous training for production-line image models."""

__version__ = "0.1.0"
