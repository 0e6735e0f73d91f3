"""`make images`: the build plan covers every image, and without Docker it skips, successfully."""

from __future__ import annotations

import pytest

from cicd_support import ROOT
from ctloop_app.cli import main
from ctloop_app.images_build import build_images, build_plan
from kubeflow_pipeline.images import STAGES, ImageSettings

IMAGES = ImageSettings("ghcr.io/acme", "abc1234")


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
    assert lines == [lines[0]] and "no Docker engine answered (no socket); skipped building 9 images" in lines[0]


def test_cli_exits_zero_when_docker_is_absent(monkeypatch, capsys) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert main(["images", "--tag", "abc1234"]) == 0
    assert "no Docker engine answered" in capsys.readouterr().out


class FakeImages:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def build(self, **kwargs):
        self.calls.append(("build", kwargs["dockerfile"], kwargs["buildargs"], kwargs["tag"], kwargs["path"]))
        return object(), iter(())

    def push(self, repository, tag, stream, decode):
        self.calls.append(("push", f"{repository}:{tag}"))
        return iter([{"status": "Pushed"}])


def test_with_an_engine_each_image_is_built_from_the_root_and_pushed() -> None:
    images = FakeImages()
    client = type("Client", (), {"images": images})()
    built = build_images(IMAGES, ROOT, push=True, only=("train", "serving"), engine=lambda: (client, ""), log=lambda _: None)
    assert built == [IMAGES.image("train"), IMAGES.image("serving")]
    assert images.calls == [
        ("build", "components/Dockerfile", {"STAGE": "train"}, IMAGES.image("train"), str(ROOT)),
        ("push", IMAGES.image("train")),
        ("build", "serving/Dockerfile", {}, IMAGES.image("serving"), str(ROOT)),
        ("push", IMAGES.image("serving")),
    ]


def test_a_context_that_is_not_a_checkout_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match=rf"^{tmp_path} is not a ctloop checkout \(no components/Dockerfile\)"):
        build_images(IMAGES, tmp_path, engine=lambda: (None, "unused"), log=lambda _: None)
