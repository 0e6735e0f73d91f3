"""The ctloop application: the CLI, the local stack, the demo, local pipeline runs, image builds.

It sits on top of every other layer (library `ctloop`, `serving`, `components`,
`kubeflow_pipeline`) and nothing below imports it.
"""
