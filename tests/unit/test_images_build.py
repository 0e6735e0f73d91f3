"""`make images`: the build plan covers every image, and without Docker it skips, successfully;
base images are pulled only when asked; the wheelhouse takes the pinned wheels of pip's find-links."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from docker.errors import ImageNotFound

from cicd_support import ROOT
from ctloop_app import images_build
from ctloop_app.cli import main
from ctloop_app.images_build import (base_images, build_images, build_plan, pip_find_links, prepare_wheelhouse,
                                     requirement_files)
from kubeflow_pipeline.images import STAGES, ImageSettings

IMAGES = ImageSettings("ghcr.io/acme", "abc1234")
BASE = "python:3.11.13-slim-bookworm"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A build context with the checkout's Dockerfiles and requirements files (and nothing to build)."""
    context = tmp_path / "checkout"
    for path in ("components/Dockerfile", "serving/Dockerfile", "serving/requirements.txt",
                 *(f"components/{stage}/requirements.txt" for stage in STAGES)):
        (context / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / path, context / path)
    return context


def test_plan_covers_every_stage_and_serving() -> None:
    plan = build_plan(IMAGES)
    assert [item.name for item in plan] == [*STAGES, "serving"]
    for item in plan:
        assert (ROOT / item.dockerfile).is_file(), item.dockerfile
        assert item.ref == IMAGES.image(item.name)
        if item.name != "serving":
            assert item.build_args == {"STAGE": item.name}
            assert (ROOT / "components" / item.name / "requirements.txt").is_file()


def test_unknown_image_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown images trian; expected some of monitor"):
        build_plan(IMAGES, ("trian",))


def test_without_an_engine_the_build_is_skipped() -> None:
    lines: list[str] = []
    built = build_images(IMAGES, ROOT, engine=lambda: (None, "no socket"), log=lines.append)
    assert built == []
    assert lines == [lines[0]] and f"no Docker engine answered (no socket); skipped building {len(STAGES) + 1} images" in lines[0]


def test_cli_exits_zero_when_docker_is_absent(monkeypatch, capsys) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert main(["images", "--tag", "abc1234"]) == 0
    assert "no Docker engine answered" in capsys.readouterr().out


class FakeImages:
    def __init__(self, present: tuple[str, ...] = (BASE,)) -> None:
        self.calls: list[tuple] = []
        self.pulls: list[bool] = []
        self.wheelhouses: list[list[str]] = []  # the wheels in the context as each build began
        self.present = present

    def build(self, **kwargs):
        self.calls.append(("build", kwargs["dockerfile"], kwargs["buildargs"], kwargs["tag"], kwargs["path"]))
        self.pulls.append(kwargs["pull"])
        self.wheelhouses.append(sorted(path.name for path in Path(kwargs["path"]).glob("wheelhouse/*.whl")))
        return object(), iter(())

    def get(self, name):
        if name not in self.present:
            raise ImageNotFound(f"No such image: {name}")
        return object()

    def push(self, repository, tag, stream, decode):
        self.calls.append(("push", f"{repository}:{tag}"))
        return iter([{"status": "Pushed"}])


def fake_client(images: FakeImages):
    return type("Client", (), {"images": images})()


def test_with_an_engine_each_image_is_built_from_the_root_and_pushed(checkout) -> None:
    images = FakeImages()
    built = build_images(IMAGES, checkout, push=True, only=("train", "serving"), engine=lambda: (fake_client(images), ""),
                         log=lambda _: None, find_links=list)
    assert built == [IMAGES.image("train"), IMAGES.image("serving")]
    assert images.calls == [
        ("build", "components/Dockerfile", {"STAGE": "train"}, IMAGES.image("train"), str(checkout)),
        ("push", IMAGES.image("train")),
        ("build", "serving/Dockerfile", {}, IMAGES.image("serving"), str(checkout)),
        ("push", IMAGES.image("serving")),
    ]


def test_the_engines_base_image_is_used_and_pulled_only_when_asked(checkout) -> None:
    images, lines = FakeImages(), []
    build_images(IMAGES, checkout, engine=lambda: (fake_client(images), ""), log=lines.append, find_links=list)
    assert images.pulls == [False] * (len(STAGES) + 1)  # every stage and serving
    assert f"base {BASE}: the engine's copy (pass --pull to refresh it)" in lines
    images, lines = FakeImages(), []
    build_images(IMAGES, checkout, only=("monitor",), pull=True, engine=lambda: (fake_client(images), ""),
                 log=lines.append, find_links=list)
    assert images.pulls == [True] and f"base {BASE}: pulling the newest (--pull)" in lines


def test_a_base_the_engine_lacks_is_named_before_the_build_pulls_it(checkout) -> None:
    images, lines = FakeImages(present=()), []
    build_images(IMAGES, checkout, only=("serving",), engine=lambda: (fake_client(images), ""), log=lines.append,
                 find_links=list)
    assert images.pulls == [False]
    assert lines[0] == f"base {BASE}: not on this engine; the build pulls it"


def test_cli_passes_pull(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(images_build, "build_images", lambda *args, **kwargs: calls.append(kwargs) or [])
    assert main(["images", "--tag", "abc1234", "--pull", "--only", "serving"]) == 0
    assert main(["images", "--tag", "abc1234"]) == 0
    assert [call["pull"] for call in calls] == [True, False] and calls[0]["only"] == ("serving",)


def test_base_images_are_the_dockerfiles_external_bases(tmp_path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:3.11-slim AS requirements\nRUN true\nFROM requirements AS more\n"
                          "FROM --platform=linux/amd64 debian:bookworm\nCOPY --from=more /x /x\n")
    assert base_images(dockerfile) == ["python:3.11-slim", "debian:bookworm"]
    for path in ("components/Dockerfile", "serving/Dockerfile"):
        assert base_images(ROOT / path) == [BASE], "the serving image runs on the stage images' base"


def wheel(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(name.encode())
    return directory / name


def test_the_wheelhouse_takes_the_pinned_wheels_that_fit_the_images(checkout, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(images_build.platform, "machine", lambda: "x86_64")
    links, other = tmp_path / "find-links", tmp_path / "more-links"
    taken = [wheel(links, "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"),
             wheel(other, "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"),
             wheel(other, "PyYAML-6.0.3-cp311-cp311-manylinux2014_x86_64.whl"),
             wheel(other, "slack_sdk-3.47.0-py2.py3-none-any.whl")]
    for name in ("torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",  # not the pinned version
                 "torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl",  # another Python
                 "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_aarch64.whl",  # another machine
                 "torch-2.13.0-cp311-none-macosx_11_0_arm64.whl",  # another system
                 "requests_toolbelt-1.0.0-py2.py3-none-any.whl",  # not in any requirements file
                 "not-a-wheel.whl"):
        wheel(links, name)
    house = checkout / "wheelhouse"
    wheel(house, "scipy-1.0.0-cp311-cp311-manylinux_2_28_x86_64.whl")  # left from an earlier build
    (house / "README.md").write_text("kept")
    lines: list[str] = []
    names = prepare_wheelhouse(checkout, requirement_files(checkout), [links, other], lines.append)
    assert names == sorted(path.name for path in taken)
    assert sorted(path.name for path in house.iterdir()) == sorted([*names, "README.md"])
    for path in taken:
        assert (house / path.name).read_bytes() == path.read_bytes()
    assert lines == [f"wheelhouse: {', '.join(names)} (from pip's find-links)"]
    # Again: nothing to copy; with no find-links the wheelhouse is emptied (as a checkout has it).
    assert prepare_wheelhouse(checkout, requirement_files(checkout), [links, other], lambda _: None) == names
    assert prepare_wheelhouse(checkout, requirement_files(checkout), [], lines.append) == []
    assert [path.name for path in house.iterdir()] == ["README.md"] and len(lines) == 1


def test_the_wheelhouse_follows_the_plans_requirements(checkout, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(images_build.platform, "machine", lambda: "x86_64")
    torch = wheel(tmp_path / "find-links", "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    links = torch.parent
    monitor_only = requirement_files(checkout, build_plan(IMAGES, ("monitor",)))
    assert monitor_only == [checkout / "components/monitor/requirements.txt"]
    assert prepare_wheelhouse(checkout, monitor_only, [links], lambda _: None) == [], "monitor carries no torch"
    serving = requirement_files(checkout, build_plan(IMAGES, ("serving",)))
    assert prepare_wheelhouse(checkout, serving, [links], lambda _: None) == [torch.name]


def test_each_image_is_built_with_only_the_wheels_its_requirements_pin(checkout, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(images_build.platform, "machine", lambda: "x86_64")
    torch = wheel(tmp_path / "find-links", "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    images, lines = FakeImages(), []
    build_images(IMAGES, checkout, only=("monitor", "train", "notify", "serving"),
                 engine=lambda: (fake_client(images), ""), log=lines.append, find_links=lambda: [torch.parent])
    assert images.wheelhouses == [[], [torch.name], [], [torch.name]]
    assert f"building {IMAGES.image('monitor')} from components/Dockerfile" in lines
    assert f"building {IMAGES.image('train')} from components/Dockerfile (wheelhouse: {torch.name})" in lines
    assert [path.name for path in (checkout / "wheelhouse").glob("*.whl")] == [torch.name]  # serving's, the last


def test_pip_find_links_are_the_local_directories_pip_is_configured_with(tmp_path) -> None:
    first, second, third = (tmp_path / name for name in ("first", "second dir", "third"))
    for directory in (first, second, third):
        directory.mkdir()
    listing = (f"global.extra-index-url='file:///opt/pypi/simple'\n"
               f"global.find-links='{first} file://{str(second).replace(' ', '%20')} {tmp_path}/missing'\n"
               f":env:.find-links='{first}'\n")

    def run(command, **kwargs):
        assert command[1:] == ["-m", "pip", "config", "list"]
        return subprocess.CompletedProcess(command, 0, stdout=listing)

    environ = {"PIP_FIND_LINKS": f"https://download.pytorch.org/whl/torch_stable.html {third}"}
    assert pip_find_links(run, environ) == [third, first, second]
    assert pip_find_links(lambda command, **kwargs: subprocess.CompletedProcess(command, 1, stdout=listing), {}) == []

    def broken(command, **kwargs):
        raise OSError("no pip")

    assert pip_find_links(broken, {"PIP_FIND_LINKS": str(first)}) == [first]


def test_a_context_that_is_not_a_checkout_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match=rf"^{tmp_path} is not a ctloop checkout \(no components/Dockerfile\)"):
        build_images(IMAGES, tmp_path, engine=lambda: (None, "unused"), log=lambda _: None)
