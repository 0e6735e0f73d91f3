"""Fixed ports for a local stack that clients are pointed at for good (`ctloop serve`).

Kept apart from ctloop_app.stack so that the CLI can show the defaults without importing the
servers' clients (MLflow takes seconds to import)."""

from __future__ import annotations

import errno
import socket
from dataclasses import astuple, dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.server import Ports

__all__ = ["PortInUseError", "StackPorts"]


class PortInUseError(RuntimeError):
    """A fixed port of the stack is taken, by another server or an earlier stack still running."""


@dataclass(frozen=True)
class StackPorts:
    """Fixed ports on 127.0.0.1, for a stack that clients are pointed at for good (`ctloop serve`).
    The defaults are TorchServe's and MLflow's usual ones."""

    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071
    mlflow: int = 5000

    @classmethod
    def names(cls) -> list[str]:
        """The ports' names as the CLI spells them (`--NAME-port`): inference, ..., grpc-inference, mlflow."""
        return [field.name.replace("_", "-") for field in fields(cls)]

    def torchserve(self) -> "Ports":
        from serving.server import Ports

        return Ports(self.inference, self.management, self.metrics, self.grpc_inference, self.grpc_management)

    def check_free(self) -> None:
        """Raise PortInUseError naming the first port something already listens on."""
        if len(set(astuple(self))) != len(astuple(self)):
            raise PortInUseError(f"the stack's ports must all differ: {self}")
        for name, port in zip(self.names(), astuple(self)):
            with socket.socket() as probe:
                # As the servers bind: connections of a stopped stack still in TIME_WAIT do not count.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError as error:
                    if error.errno != errno.EADDRINUSE:
                        raise
                    raise PortInUseError(f"port {port} ({name}) is in use on 127.0.0.1: another server, or a "
                                         f"stack that is still running; choose another with --{name}-port") from None
