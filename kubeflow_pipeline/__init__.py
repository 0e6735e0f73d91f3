"""The ctloop pipeline: its wiring, compilation, local runs and submission to Kubeflow."""
