"""The pipeline's stages: each a package whose `logic.py` holds plain, typed functions.

The kfp components only forward their arguments to these functions, so every stage can be run
and tested without Kubeflow. Importing a stage does nothing but define things.
"""
