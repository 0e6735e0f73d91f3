"""`make images`: build (and optionally push) every stage image and the serving image.

The same images CI builds with docker/build-push-action, through the Docker SDK and the local
engine. Without an engine that answers, the build is skipped with a message and success: the
images are then built by CI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kubeflow_pipeline.images import STAGES, ImageSettings

STAGE_DOCKERFILE = "components/Dockerfile"  # every stage; the STAGE build argument picks its requirements


@dataclass(frozen=True)
class ImageBuild:
    name: str  # a pipeline stage, or "serving"
    dockerfile: str  # relative to the build context, the repository root
    ref: str  # registry/ctloop-<name>:<tag>
    build_args: dict[str, str] = field(default_factory=dict)


class ImageBuildError(RuntimeError):
    """The engine answered but a build or push failed."""


def build_plan(images: ImageSettings, only: tuple[str, ...] = ()) -> list[ImageBuild]:
    """One build per pipeline stage plus serving, or only those named in `only`."""
    names = (*STAGES, "serving")
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise ValueError(f"unknown images {', '.join(unknown)}; expected some of {', '.join(names)}")
    return [ImageBuild(name, "serving/Dockerfile" if name == "serving" else STAGE_DOCKERFILE, images.image(name),
                       {} if name == "serving" else {"STAGE": name})
            for name in names if not only or name in only]


def docker_engine():
    """A Docker SDK client whose engine answered a ping, or None with the reason."""
    import os

    import docker
    from docker.errors import DockerException

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host[len("unix://"):]).exists():
        return None, f"no Docker socket at {host[len('unix://'):]}"
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as error:
        return None, str(error)
    return client, ""


def build_images(images: ImageSettings, context: Path, push: bool = False, only: tuple[str, ...] = (),
                 engine: Callable = docker_engine, log: Callable[[str], None] = print) -> list[str]:
    """Build the plan with the local engine; returns the refs built (none when no engine answers).

    `context` is the build context, a ctloop checkout (the Dockerfiles copy its packages).
    """
    plan = build_plan(images, only)
    if not (context / STAGE_DOCKERFILE).is_file():
        raise ValueError(f"{context.resolve()} is not a ctloop checkout (no {STAGE_DOCKERFILE}); "
                         "run from the repository root or pass --context")
    client, reason = engine()
    if client is None:
        log(f"ctloop images: no Docker engine answered ({reason}); skipped building {len(plan)} images. "
            "Start Docker (or set DOCKER_HOST) to build them here; CI builds them on every push.")
        return []
    built = []
    for item in plan:
        log(f"building {item.ref} from {item.dockerfile}")
        try:
            client.images.build(path=str(context), dockerfile=item.dockerfile, buildargs=item.build_args, tag=item.ref,
                                rm=True, pull=True)
        except Exception as error:  # docker.errors.BuildError / APIError: report which image failed
            raise ImageBuildError(f"building {item.ref} from {item.dockerfile} failed: {error}") from error
        if push:
            repository, _, tag = item.ref.rpartition(":")
            for line in client.images.push(repository, tag=tag, stream=True, decode=True):
                if "error" in line:
                    raise ImageBuildError(f"pushing {item.ref} failed: {line['error']}")
            log(f"pushed {item.ref}")
        built.append(item.ref)
    return built
