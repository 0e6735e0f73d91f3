"""`make images`: build (and optionally push) every stage image and the serving image.

The same images CI builds with docker/build-push-action, through the Docker SDK and the local
engine. Without an engine that answers, the build is skipped with a message and success: the
images are then built by CI.

The base image is used as the engine has it; it is pulled only when asked (`--pull`), or by the
engine when it has no copy. Before each build, the pinned wheels that pip's find-links directories
hold (e.g. a local torch 2.13.0+cpu) and that image's requirements pin are linked into the
context's git-ignored `wheelhouse/`, which the Dockerfiles install from first: a machine that
cannot reach the PyTorch CPU index builds every image too, and CI's build (an empty wheelhouse)
is unchanged.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from kubeflow_pipeline.images import STAGES, ImageSettings

STAGE_DOCKERFILE = "components/Dockerfile"  # every stage; the STAGE build argument picks its requirements
SERVING_DOCKERFILE = "serving/Dockerfile"
BUILD_TIMEOUT = 3600  # seconds the engine may stay silent during one build
WHEELHOUSE = "wheelhouse"  # in the build context; the Dockerfiles install with --find-links /wheelhouse
PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([A-Za-z0-9_.+!\-]+)\s*(?:#.*)?$")


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
    return [ImageBuild(name, SERVING_DOCKERFILE if name == "serving" else STAGE_DOCKERFILE, images.image(name),
                       {} if name == "serving" else {"STAGE": name})
            for name in names if not only or name in only]


def requirement_files(context: Path, plan: list[ImageBuild] | None = None) -> list[Path]:
    """The requirements files the plan's images install (every image's when no plan is given)."""
    names = [item.name for item in plan] if plan is not None else [*STAGES, "serving"]
    return [context / ("serving/requirements.txt" if name == "serving" else f"components/{name}/requirements.txt")
            for name in names]


def pinned_requirements(files: list[Path]) -> dict[str, set[str]]:
    """Normalized project name -> the versions `name==version` lines of these files pin."""
    from packaging.utils import canonicalize_name

    pins: dict[str, set[str]] = {}
    for path in files:
        for line in path.read_text().splitlines():
            match = PIN.match(line)
            if match:
                pins.setdefault(canonicalize_name(match[1]), set()).add(match[2])
    return pins


def pip_find_links(run: Callable = subprocess.run, environ: dict[str, str] | None = None) -> list[Path]:
    """The local directories among pip's find-links: `PIP_FIND_LINKS`, then `pip config list`."""
    environ = os.environ if environ is None else environ
    values = [environ.get("PIP_FIND_LINKS", "")]
    try:
        listed = run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
        output = listed.stdout if listed.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        output = ""
    for line in output.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith(".find-links"):
            values.append(value.strip().strip("'\""))
    directories: list[Path] = []
    for value in values:
        for entry in value.split():
            if "://" in entry and not entry.startswith("file://"):
                continue  # an index page: pip's business, not a directory to copy from
            path = Path(unquote(urlparse(entry).path)) if entry.startswith("file://") else Path(entry)
            if path.is_dir() and path not in directories:
                directories.append(path)
    return directories


def _fits_the_images(wheel: str) -> bool:
    """A wheel the Linux images' CPython 3.11 on this machine's architecture can install."""
    from packaging.utils import parse_wheel_filename

    machine = {"arm64": "aarch64", "amd64": "x86_64"}.get(platform.machine().lower(), platform.machine().lower())
    for tag in parse_wheel_filename(wheel)[3]:
        if tag.interpreter not in ("cp311", "py3", "py311") or tag.abi not in ("cp311", "abi3", "none"):
            continue
        if tag.platform == "any" or ("linux" in tag.platform and tag.platform.endswith(machine)):
            return True
    return False


def prepare_wheelhouse(context: Path, requirements: list[Path], find_links: list[Path],
                       log: Callable[[str], None] = print) -> list[str]:
    """Fill `context/wheelhouse/` with the find-links wheels that the requirements pin exactly.

    Only a wheel of a pinned name and version that fits the images is taken (hard-linked when the
    file system allows, else copied); a wheel left from an earlier build that is not wanted any
    more is removed, so the context holds nothing the images do not install. Returns the file
    names in the wheelhouse.
    """
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename
    from packaging.version import InvalidVersion, Version

    pins = pinned_requirements(requirements)
    wanted: dict[str, Path] = {}
    for directory in find_links:
        for wheel in sorted(directory.glob("*.whl")):
            try:
                name, version = parse_wheel_filename(wheel.name)[:2]
                pinned = any(Version(pin) == version for pin in pins.get(name, ()))
            except (InvalidWheelFilename, InvalidVersion):
                continue
            if pinned and _fits_the_images(wheel.name):
                wanted.setdefault(wheel.name, wheel)
    house = context / WHEELHOUSE
    house.mkdir(exist_ok=True)
    for stale in house.glob("*.whl"):
        if stale.name not in wanted:
            stale.unlink()
    for name, source in wanted.items():
        target = house / name
        if target.exists() and target.stat().st_size == source.stat().st_size:
            continue
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    if wanted:
        log(f"wheelhouse: {', '.join(sorted(wanted))} (from pip's find-links)")
    return sorted(wanted)


def base_images(dockerfile: Path) -> list[str]:
    """The images a Dockerfile's FROM lines name, without its own build stages."""
    stages: set[str] = set()
    bases: list[str] = []
    for match in re.finditer(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", dockerfile.read_text(),
                             re.MULTILINE | re.IGNORECASE):
        if match[1].lower() not in stages and match[1] not in bases:
            bases.append(match[1])
        if match[2]:
            stages.add(match[2].lower())
    return bases


def report_bases(client, bases: list[str], pull: bool, log: Callable[[str], None] = print) -> None:
    """Say for each base image whether the build uses the engine's copy, pulls it, or must pull it."""
    from docker.errors import ImageNotFound

    for base in bases:
        try:
            client.images.get(base)
            present = True
        except ImageNotFound:
            present = False
        if pull:
            log(f"base {base}: pulling the newest (--pull)")
        elif present:
            log(f"base {base}: the engine's copy (pass --pull to refresh it)")
        else:
            log(f"base {base}: not on this engine; the build pulls it")


def docker_engine():
    """A Docker SDK client whose engine answered a ping, or None with the reason."""
    import os

    import docker
    from docker.errors import DockerException

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host[len("unix://"):]).exists():
        return None, f"no Docker socket at {host[len('unix://'):]}"
    try:
        # A build step can print nothing for minutes (pip installing torch on a busy machine): the
        # SDK's default 60 s read timeout would cut the build short.
        client = docker.from_env(timeout=BUILD_TIMEOUT)
        client.ping()
    except DockerException as error:
        return None, str(error)
    return client, ""


def build_images(images: ImageSettings, context: Path, push: bool = False, only: tuple[str, ...] = (),
                 engine: Callable = docker_engine, log: Callable[[str], None] = print, pull: bool = False,
                 find_links: Callable[[], list[Path]] = pip_find_links) -> list[str]:
    """Build the plan with the local engine; returns the refs built (none when no engine answers).

    `context` is the build context, a ctloop checkout (the Dockerfiles copy its packages). The
    base images are pulled only with `pull`; the engine's copies are used otherwise.
    `find_links` lists the directories whose pinned wheels go into the wheelhouse.
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
    links = find_links()
    dockerfiles = list(dict.fromkeys(item.dockerfile for item in plan))
    report_bases(client, list(dict.fromkeys(base for dockerfile in dockerfiles
                                            for base in base_images(context / dockerfile))), pull, log)
    built = []
    for item in plan:
        # Each image's context holds the wheels its own requirements pin, and only those: the SDK
        # sends the whole context for every build, and the engine hashes each file the Dockerfile
        # copies, so six of the ten images need not carry torch (190 MB) there.
        wheels = prepare_wheelhouse(context, requirement_files(context, [item]), links, log=lambda _: None)
        log(f"building {item.ref} from {item.dockerfile}" + (f" (wheelhouse: {', '.join(wheels)})" if wheels else ""))
        try:
            client.images.build(path=str(context), dockerfile=item.dockerfile, buildargs=item.build_args, tag=item.ref,
                                rm=True, pull=pull)
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
