"""kfp wrapper of the validate stage: forwards to components.validate.logic.validate_collected."""

from kfp.dsl import Dataset, Input, Markdown, Output


def validate_op(
    collected: Input[Dataset],
    image_height: int,
    image_width: int,
    num_classes: int,
    min_samples: int,
    run_name: str,
    report: Output[Markdown],
):
    """Check the collected samples; fail the run with a message naming what is wrong.

    Args:
        collected: the collected samples (from collect).
        image_height: the champion's input height.
        image_width: the champion's input width.
        num_classes: the champion's number of classes.
        min_samples: fewest new samples worth training on.
        run_name: the pipeline run, for alerts.
        report: the Markdown report of every check, written even on failure.
    """
    from pathlib import Path

    from ctloop.alerts import alert_on_failure
    from components.validate.logic import validate_collected

    with alert_on_failure("validate", run_name):
        validate_collected(Path(collected.path), (image_height, image_width), num_classes, min_samples,
                           Path(report.path))
