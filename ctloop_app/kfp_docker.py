"""kfp.local's DockerRunner, made to report a failed container as failed.

kfp 2.17's `docker_task_handler.run_docker_container` starts each task's container with
`auto_remove=True` and returns 0 when the container is gone before `wait()` reads its status.
A task that fails fast (an import its image lacks, a bad argument) is then reported SUCCESS:
measured here, 1 run in 10 of a container that exits 1 in about half a second
(kubeflow/pipelines#13332; the fixes, #13402 and #13907, are unmerged). `keep_exit_status()`
puts in the fix those pull requests make: keep the container until its status is read, then
remove it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import docker

_installed = False


def run_docker_container(client: "docker.DockerClient", image: str, command: list[str],
                         volumes: dict[str, Any], **container_run_args: Any) -> int:
    """kfp's function of that name (same arguments, same printed log), returning the real exit code."""
    from kfp.local.docker_task_handler import add_latest_tag_if_not_present

    image = add_latest_tag_if_not_present(image)
    if not client.images.list(name=image):
        print(f"Pulling image {image!r}")
        client.images.pull(image)
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, **container_run_args)
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(), end="")
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


def keep_exit_status() -> None:
    """Make kfp.local's DockerRunner use `run_docker_container` above (once per process, so a
    wrapper installed after it, such as a test's recorder, stays in place)."""
    global _installed
    if _installed:
        return
    from kfp.local import docker_task_handler

    docker_task_handler.run_docker_container = run_docker_container
    _installed = True
