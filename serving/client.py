"""A small client for TorchServe's management and inference APIs, with token authorization.

`keys` is the dict `LocalTorchServe.keys()` returns (read from TorchServe's key_file.json):
the management key goes with management calls, the inference key with predictions, each as
`Authorization: Bearer <key>`.

Every call follows ctloop.http's retry policy (its docstring says what is retried and why):
management calls and side-effect free predictions (b1, b2, eval, champion canaries) are retried
on connection failures and 429/502/503/504; registration and logged champion predictions only
when they never reached TorchServe. A TorchServeError says how many attempts were made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

from ctloop import http, wire
from ctloop.redact import redact_text, redact_url
from ctloop.wire import CANARY_HEADER, NPY_CONTENT_TYPE, REQUEST_ID_HEADER, VERSION_HEADER, encode_batch


class TorchServeError(RuntimeError):
    """TorchServe answered with an error (status >= 400) or could not be reached (status 0)."""

    def __init__(self, status: int, message: str, attempts: int = 1) -> None:
        super().__init__(f"TorchServe {status}: {message}")
        self.status = status
        self.message = message
        self.attempts = attempts


@dataclass(frozen=True)
class Prediction:
    """One champion answer: per image label, class name and confidence, and the version that answered."""

    labels: list[int]
    class_names: list[str]
    confidences: list[float]
    model_version: str | None
    request_id: str | None = None


class TorchServeClient:
    """Calls one TorchServe.

    Args:
        inference_url: e.g. http://127.0.0.1:8080
        management_url: e.g. http://127.0.0.1:8081
        keys: {"management": ..., "inference": ...} from key_file.json.
        timeout: seconds per HTTP attempt (registration waits for workers, so it gets 10x).
        retries: retries after the first attempt (ctloop.http.RETRIES).
        backoff: backoff factor of the retries (ctloop.http.BACKOFF).
    """

    def __init__(self, inference_url: str, management_url: str, keys: dict[str, str],
                 timeout: float = http.TIMEOUT, retries: int = http.RETRIES, backoff: float = http.BACKOFF) -> None:
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.keys = keys
        self.timeout = timeout
        self.retries = retries
        # Two pools: POSTs are repeated only on the second one, which gets side-effect free POSTs.
        self.session = http.session(retries=retries, backoff=backoff)
        self._safe_post_session = http.session(safe_post=True, retries=retries, backoff=backoff)

    def _call(self, method: str, url: str, key: str, timeout: float | None = None, safe: bool = False,
              **kwargs: object) -> requests.Response:
        """One call under the retry policy; `safe`: the request has no side effect, repeat it freely."""
        headers = {"Authorization": f"Bearer {self.keys[key]}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        session = self._safe_post_session if safe else self.session
        try:
            answer = session.request(method, url, headers=headers, timeout=timeout or self.timeout, **kwargs)
        except requests.RequestException as error:
            # the URL and requests' message may carry credentials (a proxy's user:password@): masked,
            # and requests' exception not chained, since a traceback would print its message whole
            raise TorchServeError(0, f"{method} {redact_url(url)} failed: {redact_text(str(error))}",
                                  http.attempts(error, self.retries)) from None
        if answer.status_code >= 400:
            raise TorchServeError(answer.status_code, _error_message(answer), http.attempts(answer))
        return answer

    def _manage(self, method: str, path: str, timeout: float | None = None, **params: object) -> object:
        return self._call(method, f"{self.management_url}{path}", "management", timeout, params=params).json()

    def register(self, archive_name: str, model_name: str, initial_workers: int = 1, wait: bool = True) -> None:
        """Register an archive already in the model store; with `wait`, return once its workers are
        up. Without it the call returns at once (202) and the caller polls `worker_states`: a
        synchronous register stalls the requests in flight to the model's other versions for as
        long as the workers take to start (seconds), an asynchronous one does not."""
        self._manage("POST", "/models", timeout=self.timeout * 10, url=archive_name, model_name=model_name,
                     initial_workers=initial_workers, synchronous="true" if wait else "false")

    def scale(self, model_name: str, version: str, workers: int) -> None:
        """Set a version's worker count and wait for it."""
        self._manage("PUT", f"/models/{model_name}/{version}", timeout=self.timeout * 10,
                     min_worker=workers, max_worker=workers, synchronous="true")

    def set_default(self, model_name: str, version: str) -> None:
        self._manage("PUT", f"/models/{model_name}/{version}/set-default")

    def models(self) -> list[str]:
        """The names of every registered model."""
        listing = self._manage("GET", "/models", limit=1000)
        return [str(entry["modelName"]) for entry in listing["models"]]  # type: ignore[index]

    def describe(self, model_name: str) -> list[dict]:
        """TorchServe's description of every registered version of `model_name`."""
        return list(self._manage("GET", f"/models/{model_name}/all"))  # type: ignore[arg-type]

    def versions(self, model_name: str) -> list[str]:
        """Registered versions, oldest first (numeric order)."""
        return sorted((str(entry["modelVersion"]) for entry in self.describe(model_name)), key=_version_key)

    def default_version(self, model_name: str) -> str:
        return str(self._manage("GET", f"/models/{model_name}")[0]["modelVersion"])  # type: ignore[index]

    def worker_states(self, model_name: str, version: str) -> list[tuple[str, int]]:
        """(status, pid) of each worker of a version; a worker not started yet has pid -1."""
        description = self._manage("GET", f"/models/{model_name}/{version}")[0]  # type: ignore[index]
        return [(str(worker["status"]), int(worker.get("pid", -1))) for worker in description["workers"]]

    def ready_workers(self, model_name: str, version: str) -> int:
        return sum(1 for status, _ in self.worker_states(model_name, version) if status == "READY")

    def unregister(self, model_name: str, version: str) -> None:
        self._manage("DELETE", f"/models/{model_name}/{version}", timeout=self.timeout * 2)

    def predict(self, model_name: str, images: bytes | np.ndarray, version: str | None = None,
                canary: bool = False, request_id: str | None = None) -> Prediction:
        """Champion prediction for PNG/JPEG bytes or float32 images (H, W) / (N, H, W) in [0, 1].

        `request_id`, if given, names the request in the prediction log (for feedback).
        A canary is not logged, so it is retried like a GET; a logged prediction is repeated only
        if it never reached TorchServe (it must not be logged twice).
        """
        body = images if isinstance(images, bytes) else encode_batch(images)
        headers = {CANARY_HEADER: "1"} if canary else {}
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        answer = self._call("POST", self._prediction_url(model_name, version), "inference", data=body,
                            headers=headers, safe=canary)
        entries = answer.json()
        return Prediction(
            labels=[int(entry["label"]) for entry in entries],
            class_names=[str(entry["class_name"]) for entry in entries],
            confidences=[float(entry["confidence"]) for entry in entries],
            model_version=answer.headers.get(VERSION_HEADER),
            request_id=answer.headers.get(REQUEST_ID_HEADER),
        )

    def predict_batch(self, model_name: str, images: np.ndarray, version: str | None = None) -> dict:
        """Branch or eval answer for a float32 (N, H, W) batch, sent as .npy.

        Branch and eval handlers log nothing, so these are retried like GETs; the champion logs
        what it answers without the canary header, so it is not (use `predict`)."""
        answer = self._call("POST", self._prediction_url(model_name, version), "inference",
                            data=encode_batch(images), headers={"Content-Type": NPY_CONTENT_TYPE},
                            safe=model_name != "champion")
        return answer.json()

    def _prediction_url(self, model_name: str, version: str | None) -> str:
        suffix = f"/{version}" if version else ""
        return f"{self.inference_url}/predictions/{model_name}{suffix}"

    def close(self) -> None:
        self.session.close()
        self._safe_post_session.close()


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (-1, version)


def _error_message(answer: requests.Response) -> str:
    """TorchServe errors are JSON with "message"; ctloop handlers answer {"error": ...}."""
    try:
        body = answer.json()
    except ValueError:
        return answer.text.strip() or answer.reason
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)
    return str(body)


def client_from_env(inference_url: str, management_url: str) -> TorchServeClient:
    """A client whose keys come from the environment, as the pipeline stages receive them.

    `CTLOOP_TS_KEY_FILE` names a TorchServe key_file.json (local runs); otherwise
    `CTLOOP_TS_MANAGEMENT_KEY` and `CTLOOP_TS_INFERENCE_KEY` hold the keys (a Kubernetes Secret).
    """
    key_file = os.environ.get("CTLOOP_TS_KEY_FILE")
    if key_file:
        keys = read_key_file(key_file)
    else:
        keys = {
            "management": os.environ.get("CTLOOP_TS_MANAGEMENT_KEY", ""),
            "inference": os.environ.get("CTLOOP_TS_INFERENCE_KEY", ""),
        }
        missing = [name for name, value in keys.items() if not value]
        if missing:
            raise TorchServeError(0, "no TorchServe keys: set CTLOOP_TS_KEY_FILE or CTLOOP_TS_MANAGEMENT_KEY "
                                     "and CTLOOP_TS_INFERENCE_KEY")
    return TorchServeClient(inference_url, management_url, keys)


def read_key_file(path: str | Path) -> dict[str, str]:
    """The management and inference keys from TorchServe's key_file.json."""
    try:
        keys = wire.read_keys(path)
    except wire.WireError as error:
        raise TorchServeError(0, str(error)) from error
    return {"management": keys["management"], "inference": keys["inference"]}
