"""Put a commit's pipeline on Kubeflow Pipelines: what the CD workflow runs (`ctloop submit`).

1. compile the pipeline for the cluster with that commit's images (PVC mounts, Secret env);
2. upload it as a new version of the `ctloop-continuous-training` pipeline, named after the commit
   (the pipeline is created on first use);
3. start a run of that version;
4. create or replace the recurring run that checks yield on a schedule (the pipeline starts with
   the monitor stage, so each scheduled run checks yield and retrains only when it dropped).

All calls go through `kfp.Client` to the v2beta1 REST API.
"""

from __future__ import annotations

import json
import importlib.resources
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ctloop.config import PipelineConfig
from ctloop.redact import redact_url
from kubeflow_pipeline.images import ImageSettings
from kubeflow_pipeline.compile import compile_pipeline
from kubeflow_pipeline.pipeline import PIPELINE_NAME

DEFAULT_EXPERIMENT = "ctloop"
RECURRING_RUN_NAME = "ctloop-yield-check"
DEFAULT_SCHEDULE = "0 0 * * * *"  # KFP cron has six fields (seconds first): hourly, on the hour
DEFAULT_SERVICE_ACCOUNT = "ctloop-pipeline"  # k8s/base/rbac.yaml
DEFAULT_PARAMS_NAME = "pipeline-params.yaml"  # package data: the cluster's run parameters


class SubmitError(ValueError):
    """A mistake in what was asked: bad parameters, schedule or commit."""


@dataclass(frozen=True)
class Submission:
    pipeline_id: str
    pipeline_version_id: str
    pipeline_version_name: str
    run_id: str
    run_url: str
    recurring_run_id: str
    replaced_recurring_runs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compile_for_cluster(out: str | Path, images: ImageSettings, config: PipelineConfig | None = None) -> Path:
    """Compile with the cluster settings (kubeflow_pipeline.kubernetes) into `out`."""
    return compile_pipeline(out, config, images, cluster=True)


def load_params(params_file: str | Path | None, overrides: Mapping[str, str] = ()) -> dict[str, Any]:
    """Run parameters from a YAML mapping (None: the shipped cluster parameters,
    kubeflow_pipeline/pipeline-params.yaml), then `KEY=VALUE` overrides (values parsed as YAML).
    A value that is a URL with credentials or a secret token (ctloop.redact) is refused, naming
    the parameter only."""
    try:
        if params_file is None:
            params_file = f"kubeflow_pipeline/{DEFAULT_PARAMS_NAME} (shipped)"
            text = importlib.resources.files("kubeflow_pipeline").joinpath(DEFAULT_PARAMS_NAME).read_text()
        else:
            text = Path(params_file).read_text()
        params = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as error:
        raise SubmitError(f"cannot read parameters from {params_file}: {error}") from error
    if not isinstance(params, dict):
        raise SubmitError(f"{params_file}: expected a mapping of pipeline parameters, got {type(params).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SubmitError(f"--param expects KEY=VALUE, got {item!r}")
        params[key.strip()] = yaml.safe_load(value) if value else ""
    carrying = sorted(name for name, value in params.items() if isinstance(value, str) and redact_url(value) != value)
    if carrying:
        raise SubmitError(f"pipeline parameters {', '.join(carrying)} carry credentials or a token in a URL; Kubeflow "
                          "records a run's parameters and its executor logs them, so give the stages secrets "
                          "through their environment (MLFLOW_TRACKING_URI, SLACK_WEBHOOK_URL) instead")
    return params


def check_params(package: str | Path, params: Mapping[str, Any]) -> None:
    """Refuse parameters the compiled pipeline does not declare, and missing required ones."""
    spec = next(yaml.safe_load_all(Path(package).read_text()))
    declared = spec["root"]["inputDefinitions"]["parameters"]
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise SubmitError(f"unknown pipeline parameters: {', '.join(unknown)}; "
                          f"the pipeline takes {', '.join(sorted(declared))}")
    missing = sorted(name for name, info in declared.items()
                     if not info.get("isOptional") and name not in params)
    if missing:
        raise SubmitError(f"missing pipeline parameters: {', '.join(missing)} (set them in the params file "
                          "or with --param KEY=VALUE)")


def check_schedule(cron: str) -> str:
    """KFP's cron has six fields, seconds first; a five-field crontab line is a common slip."""
    fields = cron.split()
    if len(fields) != 6:
        raise SubmitError(f"schedule {cron!r} has {len(fields)} fields; Kubeflow Pipelines expects 6 "
                          f"(seconds first), e.g. {DEFAULT_SCHEDULE!r} for hourly")
    return cron


def connect(host: str, token: str | None = None, namespace: str | None = None):
    """A kfp.Client for `host`, sending `token` as a bearer token when given."""
    import kfp

    if not host.startswith(("http://", "https://")):
        raise SubmitError(f"KFP host must start with http:// or https://, got {redact_url(host)!r}")
    with warnings.catch_warnings():
        # kfp.Client always warns that it needs KFP >= 2.0.0-beta.2, which is what we target.
        warnings.filterwarnings("ignore", message="This client only works with Kubeflow Pipeline",
                                category=FutureWarning)
        kwargs: dict[str, Any] = {"host": host, "existing_token": token or None}
        if namespace:
            kwargs["namespace"] = namespace
        return kfp.Client(**kwargs)


def find_pipeline_id(client, name: str, namespace: str | None = None) -> str | None:
    """The id of the pipeline called `name` in `namespace`, or None.

    Multi-user KFP lists a namespace's pipelines only when asked with that namespace
    (kfp.Client.get_pipeline_id never passes one, so each submit would try to create it again)."""
    by_name = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found = client.list_pipelines(filter=by_name, namespace=namespace or None, page_size=2).pipelines or []
    if len(found) > 1:
        raise SubmitError(f"{len(found)} pipelines are called {name!r}"
                          f"{f' in namespace {namespace}' if namespace else ''}; delete all but one")
    return found[0].pipeline_id if found else None


def submit(client, package: str | Path, commit: str, params: Mapping[str, Any], *, ui_url: str,
           pipeline_name: str = PIPELINE_NAME, experiment: str = DEFAULT_EXPERIMENT,
           schedule: str = DEFAULT_SCHEDULE, namespace: str | None = None,
           service_account: str = DEFAULT_SERVICE_ACCOUNT) -> Submission:
    """Upload `package` as version `commit` of `pipeline_name`, run it and (re)schedule it.

    `ui_url` is the Kubeflow Pipelines UI the run link points to (usually the KFP host).
    """
    if not commit or any(c.isspace() for c in commit):
        raise SubmitError(f"commit must be a non-empty name without spaces, got {commit!r}")
    check_schedule(schedule)
    check_params(package, params)
    params = dict(params)

    pipeline_id = find_pipeline_id(client, pipeline_name, namespace)
    if pipeline_id is None:
        body = client.api_models.V2beta1Pipeline(
            display_name=pipeline_name, namespace=namespace,
            description="Continuous training: monitor yield, retrain on consensus pseudo-labels, deploy.")
        pipeline_id = client.pipelines.pipeline_service_create_pipeline(pipeline=body).pipeline_id
    version = client.upload_pipeline_version(str(package), pipeline_version_name=commit, pipeline_id=pipeline_id,
                                             description=f"commit {commit}")
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id

    run = client.run_pipeline(experiment_id, f"{pipeline_name}-{commit[:12]}", params=params,
                              pipeline_id=pipeline_id, version_id=version.pipeline_version_id,
                              service_account=service_account)

    by_name = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                          "stringValue": RECURRING_RUN_NAME}]})
    existing = client.list_recurring_runs(experiment_id=experiment_id, filter=by_name, page_size=100)
    replaced = [old.recurring_run_id for old in existing.recurring_runs or []]
    for old_id in replaced:
        client.delete_recurring_run(old_id)
    recurring = client.create_recurring_run(
        experiment_id, RECURRING_RUN_NAME, description=f"yield check with {pipeline_name} {commit}",
        cron_expression=schedule, max_concurrency=1, no_catchup=True, params=params,
        pipeline_id=pipeline_id, version_id=version.pipeline_version_id, service_account=service_account)

    base = ui_url.rstrip("/")
    return Submission(pipeline_id=pipeline_id, pipeline_version_id=version.pipeline_version_id,
                      pipeline_version_name=commit, run_id=run.run_id,
                      run_url=f"{base}/#/runs/details/{run.run_id}",
                      recurring_run_id=recurring.recurring_run_id, replaced_recurring_runs=replaced)
