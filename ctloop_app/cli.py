"""`ctloop`: the pieces of the loop, one command each; every command calls the tested functions."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ctloop.config import ConfigError, PipelineConfig, default_config_text, load_config
from ctloop.drift import DRIFT_KINDS
from ctloop.images import ImageDataError
from ctloop.redact import redact_text, redact_url
from ctloop_app.ports import StackPorts

if TYPE_CHECKING:
    from ctloop_app.bootstrap import BootstrapResult
    from ctloop_app.operate import Fleet


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return args.command(args)
    except (ConfigError, ImageDataError) as error:
        print(f"ctloop: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctloop: interrupted; servers stopped", file=sys.stderr)
        return 130


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctloop", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="the whole loop on simulated drift (what `make run` runs)")
    demo.add_argument("--work-dir", type=Path, default=Path("runs/demo"))
    demo.add_argument("--drift", choices=DRIFT_KINDS, default="blur")
    demo.add_argument("--severity", type=float, default=1.0)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--config", type=Path, help="pipeline parameters (default: the shipped ctloop/ctloop.yaml)")
    demo.add_argument("--no-mlflow-server", action="store_true", help="use the SQLite file directly")
    demo.add_argument("--models", type=Path,
                      help="start from a `ctloop bootstrap --out` folder on the digits instead of training one")
    demo.add_argument("--parts-drift", choices=DRIFT_KINDS, default="lighting",
                      help="how the parts line, where the demo shows the pass rate, drifts (default %(default)s)")
    demo.add_argument("--no-parts-line", action="store_true", help="skip the parts line and its pass rate")
    demo.set_defaults(command=_demo)

    boot = commands.add_parser("bootstrap", help="train champion, B1 and B2 on clean data")
    boot.add_argument("--out", type=Path, default=Path("runs/bootstrap"))
    boot.add_argument("--image-folder", type=Path, help="your labelled ImageFolder instead of a simulated line")
    boot.add_argument("--line", choices=("digits", "parts"), default="digits",
                      help="the simulated line without --image-folder: 8x8 digits, or machined parts with "
                           "thin defects at --image-size (square)")
    boot.add_argument("--image-size", type=int, nargs=2, default=(32, 32), metavar=("H", "W"))
    boot.add_argument("--epochs", type=int, help="the most epochs per model (training stops earlier on its own)")
    boot.add_argument("--seed", type=int, default=0)
    boot.add_argument("--config", type=Path, help="model families (champion_family, b1_family, b2_family); "
                                                  "default: the shipped ctloop/ctloop.yaml")
    boot.add_argument("--weights", action="append", default=[], metavar="ROLE=FILE", type=_role_file,
                      help="start ROLE (champion, b1, b2) from FILE's weights: a ctloop model file or a "
                           "torch.save'd state_dict of the role's family; repeatable")
    boot.set_defaults(command=_bootstrap)

    serve = commands.add_parser(
        "serve", help="the continuous loop on this machine: serve, and run the pipeline on the config's schedule")
    serve.add_argument("--work-dir", type=Path, default=Path("runs/serve"),
                       help="where everything lives (registry, model store, predictions); a restart resumes it")
    serve.add_argument("--models", type=Path,
                       help="a `ctloop bootstrap` output folder: seeds an empty --work-dir (ignored once it is live)")
    serve.add_argument("--config", type=Path, help="pipeline parameters and the schedule (default: the shipped "
                                                   "ctloop/ctloop.yaml)")
    serve.add_argument("--schedule", help="override the config's schedule: a five-field cron or 'every 30m'")
    serve.add_argument("--run-every-predictions", type=int, metavar="N",
                       help="override the config's run_every_predictions (0: off)")
    defaults = StackPorts()
    for name in StackPorts.names():
        serve.add_argument(f"--{name}-port", type=int, default=getattr(defaults, name.replace("-", "_")),
                           help="default %(default)s")
    serve.set_defaults(command=_serve)

    cycle = commands.add_parser("cycle", help="one pipeline run against a running `ctloop serve` (what its "
                                              "schedule starts)")
    cycle.add_argument("--stack", type=Path, default=Path("runs/serve"), help="the service's --work-dir")
    cycle.add_argument("--config", type=Path, help="pipeline parameters (default: the shipped ctloop/ctloop.yaml)")
    cycle.add_argument("--summary", type=Path, help="also write the run's summary here as JSON")
    cycle.set_defaults(command=_cycle)

    run = commands.add_parser("run", help="one cycle on your ImageFolder: serve, stream, retrain, deploy")
    run.add_argument("--models", type=Path, required=True, help="a `ctloop bootstrap` output folder")
    run.add_argument("--production-folder", type=Path, required=True,
                     help="ImageFolder of recent production images (sub-folders give audit labels)")
    run.add_argument("--work-dir", type=Path, default=Path("runs/line"))
    run.add_argument("--config", type=Path, help="pipeline parameters (default: the shipped ctloop/ctloop.yaml)")
    run.set_defaults(command=_run)

    compile_ = commands.add_parser("compile", help="compile the pipeline to YAML for Kubeflow")
    compile_.add_argument("--out", type=Path, default=Path("ctloop_pipeline.yaml"))
    compile_.add_argument("--config", type=Path, help="pipeline parameters (default: the shipped ctloop/ctloop.yaml)")
    compile_.add_argument("--registry", help="image registry (default CTLOOP_IMAGE_REGISTRY or ghcr.io/ctloop)")
    compile_.add_argument("--tag", help="image tag (default CTLOOP_IMAGE_TAG or the package version)")
    compile_.add_argument("--cluster", action="store_true",
                          help="add the Kubernetes settings: volumes and secrets as env (k8s/)")
    compile_.set_defaults(command=_compile)

    submit = commands.add_parser("submit", help="compile for the cluster, upload to Kubeflow Pipelines, run, schedule")
    submit.add_argument("--host", help="KFP API endpoint (default KFP_HOST); the bearer token comes from KFP_TOKEN")
    submit.add_argument("--commit", required=True, help="pipeline version name, and the image tag unless --tag")
    submit.add_argument("--registry", help="image registry (default CTLOOP_IMAGE_REGISTRY or ghcr.io/ctloop)")
    submit.add_argument("--tag", help="image tag (default: the commit)")
    submit.add_argument("--config", type=Path, help="pipeline parameters (default: the shipped ctloop/ctloop.yaml)")
    submit.add_argument("--package", type=Path, default=Path("ctloop_pipeline_cluster.yaml"),
                        help="where the compiled pipeline is written")
    submit.add_argument("--params-file", type=Path, help="run parameters (default: the shipped kubeflow_pipeline/pipeline-params.yaml)")
    submit.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    submit.add_argument("--schedule", help="six-field cron of the yield check (default hourly)")
    submit.add_argument("--experiment", help="KFP experiment (default ctloop)")
    submit.add_argument("--namespace", help="KFP namespace (multi-user installs)")
    submit.add_argument("--ui-url", help="base of the run link (default the host)")
    submit.add_argument("--output-json", type=Path, help="also write the submission (ids, run link) here")
    submit.set_defaults(command=_submit)

    install = commands.add_parser(
        "install", help="seed a cluster with a bootstrap: MLflow champion, model-store archives, golden set")
    install.add_argument("--models", type=Path, required=True, help="a `ctloop bootstrap --out` folder")
    install.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI)")
    install.add_argument("--model-store", type=Path, required=True, help="TorchServe's model store directory")
    install.add_argument("--golden-set",
                         help="file to copy the golden set to (the install Job uploads it to the artifact store)")
    install.add_argument("--registered-model", default="ctloop-champion", help="MLflow model name (default %(default)s)")
    install.set_defaults(command=_install)

    for name, help_text in (("status", "what serves where, next to the registry; exit 1 on any split"),
                            ("reconcile", "repair serving toward MLflow's champion alias (what every run starts with)"),
                            ("promote", "deploy a registered version as the champion, with the deploy stage's checks"),
                            ("rollback", "promote the version MLflow's previous-champion alias names")):
        operate = commands.add_parser(name, help=help_text)
        if name == "promote":
            operate.add_argument("version", help="the MLflow model version")
        _fleet_arguments(operate)
        operate.set_defaults(command=_operate, operation=name)

    config = commands.add_parser("config", help="print the shipped pipeline parameters, to start a --config file")
    config.set_defaults(command=_config)

    images = commands.add_parser("images", help="build (and push) every stage image and the serving image")
    images.add_argument("--registry", help="image registry (default CTLOOP_IMAGE_REGISTRY or ghcr.io/ctloop)")
    images.add_argument("--tag", help="image tag (default CTLOOP_IMAGE_TAG or the package version)")
    images.add_argument("--push", action="store_true")
    images.add_argument("--pull", action="store_true",
                        help="pull the newest base images (default: use the engine's copies; pull only what it lacks)")
    images.add_argument("--context", type=Path, default=Path("."), help="build context: a ctloop checkout (default .)")
    images.add_argument("--only", nargs="+", default=[], metavar="NAME", help="some stages and/or serving")
    images.set_defaults(command=_images)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from ctloop_app.demo import DemoSettings, run_demo
    from ctloop_app.demo_parts import PartsLineSettings
    from ctloop_app.report import summary_table, write_html_report, write_summary_json

    settings = DemoSettings(work_dir=args.work_dir, seed=args.seed, drift_kind=args.drift,
                            drift_severity=args.severity, config=load_config(args.config),
                            mlflow_server=not args.no_mlflow_server, models=args.models,
                            parts=None if args.no_parts_line else PartsLineSettings(drift_kind=args.parts_drift))
    summary = run_demo(settings)
    print()
    print(summary_table(summary))
    summary_file, report_file = args.work_dir / "run_summary.json", args.work_dir / "run_report.html"
    write_summary_json(summary, summary_file)
    write_html_report(summary, report_file)
    print(f"\nwrote {summary_file} and {report_file}")
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    from ctloop.modelfile import ModelFileError

    config = load_config(args.config)
    if args.line == "parts" and not args.image_folder and args.image_size[0] != args.image_size[1]:
        print(f"ctloop bootstrap: the parts line is square; got --image-size {args.image_size[0]} "
              f"{args.image_size[1]}", file=sys.stderr)
        return 2
    try:
        result = _bootstrap_result(args, config, dict(args.weights))
    except ModelFileError as error:
        print(f"ctloop bootstrap: --weights {error}", file=sys.stderr)
        return 2
    for role, path in result.model_files.items():
        print(f"{role}: {path} (golden-set accuracy {result.golden_accuracy[role]:.3f})")
    return 0


def _bootstrap_result(args: argparse.Namespace, config: PipelineConfig, weights: dict[str, Path]) -> BootstrapResult:
    """The bootstrap the arguments ask for: the user's ImageFolder, or a simulated line."""
    from ctloop_app.bootstrap import bootstrap_digits, bootstrap_folder, bootstrap_parts

    if args.image_folder:
        return bootstrap_folder(args.image_folder, tuple(args.image_size), args.out, args.seed, args.epochs,
                                config=config, weights=weights)
    if args.line == "parts":
        return bootstrap_parts(args.out, args.seed, args.image_size[0], args.epochs, config=config, weights=weights)
    return bootstrap_digits(args.out, args.seed, args.epochs, config=config, weights=weights)


def _role_file(text: str) -> tuple[str, Path]:
    """`--weights ROLE=FILE` as (role, path); argparse reports a malformed one with the usage."""
    role, _, path = text.partition("=")
    if role not in ("champion", "b1", "b2") or not path:  # ctloop.models.ROLES, without importing torch
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROLE=FILE with ROLE one of champion, b1, b2")
    return role, Path(path)


def _serve(args: argparse.Namespace) -> int:
    from ctloop_app.service import ServiceError, ServiceSettings, serve_forever
    from ctloop_app.ports import PortInUseError

    overrides = {key: value for key, value in (("schedule", args.schedule),
                                               ("run_every_predictions", args.run_every_predictions))
                 if value is not None}
    ports = StackPorts(*(getattr(args, f"{name.replace('-', '_')}_port") for name in StackPorts.names()))
    settings = ServiceSettings(args.work_dir, load_config(args.config).with_overrides(**overrides), args.models, ports)
    try:
        serve_forever(settings, lambda line: print(line, flush=True))
    except (ServiceError, PortInUseError) as error:
        print(f"ctloop serve: {error}", file=sys.stderr)
        return 2
    return 0


def _cycle(args: argparse.Namespace) -> int:
    from ctloop_app.cycle import CycleBusyError, run_cycle_in

    try:
        summary = run_cycle_in(args.stack.resolve(), load_config(args.config))
    except (CycleBusyError, ValueError) as error:  # ValueError: no stack.json, nothing serves from --stack
        print(f"ctloop cycle: {error}", file=sys.stderr)
        return 2
    if args.summary:
        summary.write(args.summary)
    outcome = "succeeded" if summary.succeeded else f"FAILED: {summary.error}"
    print(f"run {outcome} in {summary.seconds:.1f}s; champion v{summary.champion_before} -> "
          f"v{summary.champion_after}; stages: {', '.join(summary.stages)}")
    return 0 if summary.succeeded else 1


def _run(args: argparse.Namespace) -> int:
    from ctloop_app.line import run_on_folder

    result = run_on_folder(args.models, args.production_folder, args.work_dir, load_config(args.config))
    print(result)
    return 0 if result.succeeded else 1


def _compile(args: argparse.Namespace) -> int:
    from kubeflow_pipeline.compile import compile_pipeline
    from kubeflow_pipeline.images import ImageSettings

    defaults = ImageSettings.from_env()
    images = ImageSettings(args.registry or defaults.registry, args.tag or defaults.tag)
    path = compile_pipeline(args.out, load_config(args.config), images, cluster=args.cluster)
    print(f"compiled {path} (images {images.image('monitor')}, ...)")
    return 0



def _submit(args: argparse.Namespace) -> int:
    import json
    import os

    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from kubeflow_pipeline import submit as kfp_submit
    from kubeflow_pipeline.images import ImageSettings

    host = args.host or os.environ.get("KFP_HOST", "")
    if not host:
        print("ctloop submit: no KFP host; pass --host or set KFP_HOST", file=sys.stderr)
        return 2
    images = ImageSettings(args.registry or ImageSettings.from_env().registry, args.tag or args.commit)
    try:
        params = kfp_submit.load_params(args.params_file, args.param)
        package = kfp_submit.compile_for_cluster(args.package, images, load_config(args.config))
        client = kfp_submit.connect(host, os.environ.get("KFP_TOKEN"), args.namespace)
        done = kfp_submit.submit(
            client, package, args.commit, params, ui_url=args.ui_url or host, namespace=args.namespace,
            schedule=args.schedule or kfp_submit.DEFAULT_SCHEDULE,
            experiment=args.experiment or kfp_submit.DEFAULT_EXPERIMENT)
    except kfp_submit.SubmitError as error:
        print(f"ctloop submit: {error}", file=sys.stderr)
        return 2
    except (ApiException, HTTPError, TimeoutError) as error:
        print(f"ctloop submit: Kubeflow Pipelines at {redact_url(host)} failed: {redact_text(str(error).strip())}",
              file=sys.stderr)
        return 1
    print(f"pipeline version {args.commit} ({done.pipeline_version_id}) of {package}")
    print(f"run: {done.run_url}")
    print(f"recurring yield check {done.recurring_run_id} ({args.schedule or kfp_submit.DEFAULT_SCHEDULE})")
    if args.output_json:
        args.output_json.write_text(json.dumps(done.to_dict(), indent=2))
    return 0


def _install(args: argparse.Namespace) -> int:
    from ctloop.registry import RegistryError
    from ctloop_app.install import InstallError, install

    try:
        result = install(args.models, args.tracking_uri or "", args.model_store, args.golden_set,
                         registered_model=args.registered_model)
    except InstallError as error:
        print(f"ctloop install: {error}", file=sys.stderr)
        return 2
    except (RegistryError, RuntimeError, OSError) as error:
        print(f"ctloop install: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


def _fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", type=Path, default=Path("runs/serve"),
                        help="work folder of a running local stack (`ctloop serve`, `make run`; default %(default)s)")
    parser.add_argument("--management-url", help="TorchServe's management API instead of --stack (keys from "
                                                 "CTLOOP_TS_KEY_FILE or CTLOOP_TS_MANAGEMENT_KEY/_INFERENCE_KEY)")
    parser.add_argument("--inference-url", help="TorchServe's inference API (with --management-url)")
    parser.add_argument("--model-store", type=Path, help="TorchServe's model store (with --management-url)")
    parser.add_argument("--tracking-uri", help="MLflow (with --management-url; default MLFLOW_TRACKING_URI)")
    parser.add_argument("--registered-model", default="ctloop-champion", help="MLflow model (default %(default)s)")
    parser.add_argument("--keep-versions", type=int, default=3, help="champion versions kept serving (default 3)")


def _operate(args: argparse.Namespace) -> int:
    from ctloop import registry
    from ctloop_app import operate
    from serving.client import TorchServeError

    try:
        if args.management_url:
            if not (args.inference_url and args.model_store):
                print("ctloop: --management-url needs --inference-url and --model-store", file=sys.stderr)
                return 2
            fleet = operate.Fleet(args.model_store, args.inference_url, args.management_url,
                                  registry.resolve_tracking_uri(args.tracking_uri), args.registered_model)
        else:
            fleet = operate.Fleet.load(args.stack)
        return _run_operation(args, fleet)
    except (ValueError, TorchServeError, registry.RegistryError, RuntimeError) as error:
        print(f"ctloop {args.operation}: {error}", file=sys.stderr)
        return 1


def _run_operation(args: argparse.Namespace, fleet: "Fleet") -> int:
    from ctloop_app import operate

    if args.operation == "status":
        from ctloop_app.service import describe

        report = operate.status(fleet)
        print("\n".join(report.lines(fleet) + ([] if args.management_url else describe(args.stack))))
        return 1 if report.splits else 0
    if args.operation == "reconcile":
        found = operate.reconcile_fleet(fleet)
        print("\n".join(found.findings) or f"serving already matched the registry's champion v{found.champion}")
        return 0
    outcome = (operate.promote(fleet, args.version, args.keep_versions) if args.operation == "promote"
               else operate.rollback(fleet, args.keep_versions))
    for repair in outcome.repairs:
        print(f"repaired first: {repair}")
    if outcome.status != "deployed":
        print(f"not promoted: another deploy made v{outcome.old_version} the champion meanwhile", file=sys.stderr)
        return 1
    print(f"champion v{outcome.new_version} serves (was v{outcome.old_version}); steps: " +
          ", ".join(f"{step['name']} {step['seconds']:.2f}s" for step in outcome.steps))
    return 0


def _config(args: argparse.Namespace) -> int:
    print(default_config_text(), end="")
    return 0


def _images(args: argparse.Namespace) -> int:
    from ctloop_app.images_build import ImageBuildError, build_images
    from kubeflow_pipeline.images import ImageSettings

    defaults = ImageSettings.from_env()
    images = ImageSettings(args.registry or defaults.registry, args.tag or defaults.tag)
    try:
        build_images(images, args.context, push=args.push, only=tuple(args.only), pull=args.pull)
    except (ValueError, ImageBuildError) as error:
        print(f"ctloop images: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
