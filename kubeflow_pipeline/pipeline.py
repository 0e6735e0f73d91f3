"""The continuous-training pipeline: reconcile serving -> monitor -> drift -> If(retrain) collect -> validate ->
consensus-filter -> train -> analyze -> If(deploy) deploy + notify / Else notify, inside an
ExitHandler that alerts on failure.

Components are built here, at compile time, so that each stage's `base_image` comes from the
registry and tag being compiled for (ImageSettings). Nothing is pip-installed at run time: the
stage images carry ctloop, and locally the SubprocessRunner uses this very environment.
"""

from typing import Callable

from kfp import dsl

from components.analyze.component import analyze_op
from components.collect.component import collect_op
from components.consensus.component import consensus_op
from components.deploy.component import deploy_op, reconcile_op
from components.drift.component import drift_op
from components.monitor.component import monitor_op
from components.notify.component import (
    notify_deployed_op,
    notify_not_deployed_op,
    notify_retrain_op,
    notify_run_end_op,
)
from components.train.component import train_op
from components.validate.component import validate_op
from ctloop.config import PipelineConfig
from kubeflow_pipeline.images import ImageSettings
from kubeflow_pipeline.kubernetes import for_cluster

PIPELINE_NAME = "ctloop-continuous-training"
STAGE_OF: dict[Callable, str] = {
    reconcile_op: "deploy",
    monitor_op: "monitor",
    drift_op: "drift",
    collect_op: "collect",
    validate_op: "validate",
    consensus_op: "consensus",
    train_op: "train",
    analyze_op: "analyze",
    deploy_op: "deploy",
    notify_retrain_op: "notify",
    notify_deployed_op: "notify",
    notify_not_deployed_op: "notify",
    notify_run_end_op: "notify",
}


def build_pipeline(config: "PipelineConfig | None" = None, images: "ImageSettings | None" = None,
                   cluster: bool = False) -> Callable:
    """The pipeline function, with `config` as parameter defaults and stage images from `images`.

    `cluster` adds each stage's PVC mounts and Secret/ConfigMap env (kubeflow_pipeline.kubernetes);
    leave it off for local runs.
    """
    config = config or PipelineConfig()
    images = images or ImageSettings.from_env()
    ops = {
        func: dsl.component(func, base_image=images.image(stage), install_kfp_package=False)
        for func, stage in STAGE_OF.items()
    }
    if cluster:
        ops = {func: for_cluster(op, STAGE_OF[func]) for func, op in ops.items()}

    @dsl.pipeline(name=PIPELINE_NAME, description=__doc__.split("\n\n")[0])
    def ctloop_pipeline(
        store_dir: str,
        model_store: str,
        golden_set_uri: str,
        ts_inference_url: str,
        ts_management_url: str,
        mlflow_tracking_uri: str = "",
        registered_model: str = "ctloop-champion",
        yield_threshold: float = config.yield_threshold if config.yield_threshold is not None else 0.0,
        use_yield_threshold: bool = config.yield_threshold is not None,
        recent_window: int = config.recent_window,
        yield_drop_tolerance: float = config.yield_drop_tolerance,
        yield_floor: float = config.yield_floor,
        yield_confidence: float = config.yield_confidence,
        yield_mode: str = config.yield_mode,
        ok_class: str = config.ok_class or "",
        trigger: str = config.trigger,
        drift_level: float = config.drift_level,
        drift_permutations: int = config.drift_permutations,
        merge_previous: bool = config.merge_previous,
        previous_per_class: int = config.previous_per_class,
        min_samples: int = config.min_samples,
        confidence_threshold: float = config.confidence_threshold,
        val_ratio: float = config.val_ratio,
        consensus_batch_size: int = config.consensus_batch_size,
        new_sample_repeat: int = config.new_sample_repeat,
        train_epochs: int = config.train_epochs,
        train_max_seconds: float = config.train_max_seconds,
        train_patience: int = config.train_patience,
        warm_start: bool = config.warm_start,
        champion_augment: float = config.champion_augment,
        champion_family: str = config.champion_family,
        seed: int = config.seed,
        min_improvement: float = config.min_improvement,
        max_golden_regression: float = config.max_golden_regression,
        min_holdout_per_class: int = config.min_holdout_per_class,
        evidence_level: float = config.evidence_level,
        min_pseudo_label_precision: float = config.min_pseudo_label_precision,
        min_audited_parts: int = config.min_audited_parts,
        keep_versions: int = config.keep_versions,
    ):
        params = dict(locals())  # the pipeline parameters by name, for the retraining branch
        run_name = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        exit_alert = ops[notify_run_end_op](run_name=run_name).set_display_name("alert on failure")
        with dsl.ExitHandler(exit_alert, name="continuous-training"):
            repair = ops[reconcile_op](
                model_store=model_store, ts_inference_url=ts_inference_url, ts_management_url=ts_management_url,
                mlflow_tracking_uri=mlflow_tracking_uri, registered_model=registered_model, run_name=run_name,
            ).set_display_name("reconcile serving")
            monitor = ops[monitor_op](
                store_dir=store_dir, recent_window=recent_window, yield_threshold=yield_threshold,
                use_yield_threshold=use_yield_threshold, yield_drop_tolerance=yield_drop_tolerance,
                yield_floor=yield_floor, yield_confidence=yield_confidence, yield_mode=yield_mode, ok_class=ok_class,
                run_name=run_name,
            ).set_display_name("monitor yield").after(repair)
            drift = ops[drift_op](
                monitor_decision=monitor.outputs["decision"], monitor_window=monitor.outputs["window"],
                store_dir=store_dir, recent_window=recent_window, trigger=trigger, drift_level=drift_level,
                drift_permutations=drift_permutations, mlflow_tracking_uri=mlflow_tracking_uri,
                registered_model=registered_model, run_name=run_name,
            ).set_display_name("input drift")
            # kfp.local resolves a condition on a task's single "Output" inside nested DAGs, not on
            # named outputs; so the decisions are return values and their figures are artifacts.
            with dsl.If(drift.outputs["Output"] == True, name="retrain-needed"):  # noqa: E712
                _retrain(ops, drift, params | {"run_name": run_name})

    return ctloop_pipeline


def _retrain(ops: dict, decided: dsl.PipelineTask, p: dict) -> None:
    """The retraining branch, from the task that decided the run (its decision and the window to
    retrain on); `p` holds the pipeline's parameters by name."""
    run_name = p["run_name"]
    started = ops[notify_retrain_op](decision=decided.outputs["decision"], run_name=run_name)
    started.set_display_name("slack: retrain started")
    golden = dsl.importer(artifact_uri=p["golden_set_uri"], artifact_class=dsl.Dataset, reimport=False)
    golden.set_display_name("golden set")
    collect = ops[collect_op](
        window=decided.outputs["window"], store_dir=p["store_dir"], merge_previous=p["merge_previous"],
        previous_per_class=p["previous_per_class"],
        mlflow_tracking_uri=p["mlflow_tracking_uri"], registered_model=p["registered_model"], run_name=run_name,
    ).set_display_name("collect").after(started)
    validate = ops[validate_op](
        collected=collect.outputs["collected"], image_height=collect.outputs["image_height"],
        image_width=collect.outputs["image_width"], num_classes=collect.outputs["num_classes"],
        min_samples=p["min_samples"], run_name=run_name,
    ).set_display_name("validate")
    consensus = ops[consensus_op](
        collected=collect.outputs["collected"], ts_inference_url=p["ts_inference_url"],
        ts_management_url=p["ts_management_url"], confidence_threshold=p["confidence_threshold"],
        val_ratio=p["val_ratio"], batch_size=p["consensus_batch_size"], new_repeat=p["new_sample_repeat"],
        seed=p["seed"], run_name=run_name,
    ).set_display_name("consensus-filter").after(validate)
    train = ops[train_op](
        train_set=consensus.outputs["train_set"], holdout_set=consensus.outputs["holdout_set"],
        epochs=p["train_epochs"], seed=p["seed"], family=p["champion_family"], warm_start=p["warm_start"],
        max_seconds=p["train_max_seconds"], patience=p["train_patience"], augment_severity=p["champion_augment"],
        mlflow_tracking_uri=p["mlflow_tracking_uri"],
        registered_model=p["registered_model"], run_name=run_name,
    ).set_display_name("train challenger")
    analyze = ops[analyze_op](
        challenger=train.outputs["model"], holdout_set=consensus.outputs["holdout_set"],
        golden_set=golden.output, mlflow_tracking_uri=p["mlflow_tracking_uri"],
        registered_model=p["registered_model"], min_improvement=p["min_improvement"],
        max_golden_regression=p["max_golden_regression"], min_holdout_per_class=p["min_holdout_per_class"],
        evidence_level=p["evidence_level"], pseudo_label_precision=consensus.outputs["pseudo_label_precision"],
        audited_pseudo_labels=consensus.outputs["audited_pseudo_labels"],
        min_pseudo_label_precision=p["min_pseudo_label_precision"], min_audited_parts=p["min_audited_parts"],
        run_name=run_name,
    ).set_display_name("analyze")
    with dsl.If(analyze.outputs["Output"] == True, name="challenger-is-better"):  # noqa: E712
        deploy = ops[deploy_op](
            challenger=train.outputs["model"], version=train.outputs["version"], canary_set=analyze.outputs["canary"],
            decision=analyze.outputs["decision"], model_store=p["model_store"], ts_inference_url=p["ts_inference_url"],
            ts_management_url=p["ts_management_url"], mlflow_tracking_uri=p["mlflow_tracking_uri"],
            registered_model=p["registered_model"], keep_versions=p["keep_versions"], run_name=run_name,
        ).set_display_name("deploy")
        ops[notify_deployed_op](
            old_version=deploy.outputs["old_version"], new_version=deploy.outputs["new_version"],
            status=deploy.outputs["status"], decision=analyze.outputs["decision"], kept_share=consensus.outputs["kept_share"],
            disagreement=consensus.outputs["disagreement"], run_name=run_name,
        ).set_display_name("slack: deployed")
    with dsl.Else(name="challenger-not-better"):
        ops[notify_not_deployed_op](
            decision=analyze.outputs["decision"], kept_share=consensus.outputs["kept_share"],
            disagreement=consensus.outputs["disagreement"], run_name=run_name,
        ).set_display_name("slack: not deployed")
