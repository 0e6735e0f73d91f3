"""ctloop's one HTTP retry policy, for every client of TorchServe and of MLflow's REST API.

It is urllib3's `Retry` mounted on a `requests.Session` (`session()`); Slack keeps slack_sdk's
own retry handlers. The rules:

- Attempts: the first one and at most `RETRIES` (3) more. urllib3 waits before retry n
  `BACKOFF * 2**(n-1)` seconds except before the first retry, which is immediate: 0, 2, 4 s
  (at most `BACKOFF_MAX`), the last two plus a random 0 to `BACKOFF / 2` s (`BACKOFF_JITTER`)
  so that clients that failed together do not retry together. Each attempt has its own timeout
  (`TIMEOUT`, 30 s, unless the caller sets one). A server that is down fails after 6 to 7 s.
- Connection failures (refused, connect timeout: the request never reached the server) are
  retried for every method, POST included.
- Answers 429, 502, 503 and 504 (busy, overloaded, a proxy without a backend) and read errors
  (timeout or connection lost after the request was sent) are retried only for requests that
  are safe to repeat: GET, HEAD, OPTIONS, PUT, DELETE, TRACE (idempotent in HTTP), and POSTs a
  caller declares side-effect free (`safe_post=True`). After the last attempt the last answer
  is returned (a 503 stays a 503 for the caller to report), not replaced by a RetryError.
  A `Retry-After` header is honoured up to `BACKOFF_MAX` seconds.
- Never retried: every other status, 4xx above all (the request is wrong; repeating it cannot
  help), and 500 (the server failed on this request; repeating a failing request hides a bug).

What that means for TorchServe (serving.client.TorchServeClient):
- register (POST /models) is not idempotent: once it reached TorchServe, a second one answers
  409 "already registered" and hides the first outcome (an error answer may come after the
  version was registered, e.g. when its workers fail to start). It is retried only if it never
  reached the server.
- scale and set-default (PUT), describe (GET) and unregister (DELETE) are retried. An
  unregister repeated after a lost answer may get 404 for a version the first call removed.
- Predictions of b1, b2 and eval, and champion canaries (deploy smoke tests), are computations
  without side effects: `safe_post`, retried like GETs. TorchServe answers 503 when a model has
  no worker (e.g. scaled to 0) or its queue is full, and also when a handler raised; asking
  these handlers again is harmless either way.
- Champion predictions without the canary header are logged by the handler: repeating one that
  TorchServe already handled (a 503 after a handler failure, or a lost answer) could log it
  twice. They are retried only if they never reached the server.

MLflow (ctloop.registry): MlflowClient's REST calls retry through urllib3 with settings it reads
from environment variables; `mlflow_environment()` gives this policy's numbers under those
names. What MLflow retries is its own choice (408, 429, 500, 502, 503, 504, every method).
"""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

__all__ = [
    "BACKOFF",
    "BACKOFF_JITTER",
    "BACKOFF_MAX",
    "IDEMPOTENT_METHODS",
    "RETRIED_STATUSES",
    "RETRIES",
    "TIMEOUT",
    "attempts",
    "mlflow_environment",
    "probe",
    "retry",
    "session",
]

RETRIES = 3
# An integer: MLflow reads MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR as one.
BACKOFF = 1
BACKOFF_JITTER = BACKOFF / 2  # for any backoff factor: half of it
BACKOFF_MAX = 10.0
TIMEOUT = 30
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def retry(*, safe_post: bool = False, retries: int = RETRIES, backoff: float = BACKOFF) -> Retry:
    """The policy as a urllib3 Retry; `safe_post` also repeats POSTs (side-effect free ones only)."""
    return Retry(
        total=retries,
        allowed_methods=IDEMPOTENT_METHODS | {"POST"} if safe_post else IDEMPOTENT_METHODS,
        status_forcelist=RETRIED_STATUSES,
        backoff_factor=backoff,
        backoff_jitter=backoff / 2,
        backoff_max=BACKOFF_MAX,
        retry_after_max=int(BACKOFF_MAX),
        raise_on_status=False,
    )


def session(*, safe_post: bool = False, retries: int = RETRIES, backoff: float = BACKOFF) -> requests.Session:
    """A requests Session that applies the policy to http:// and https:// URLs."""
    adapter = HTTPAdapter(max_retries=retry(safe_post=safe_post, retries=retries, backoff=backoff))
    http = requests.Session()
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


def attempts(outcome: requests.Response | requests.RequestException, retries: int = RETRIES) -> int:
    """How many attempts a call made: the first plus the retries that produced `outcome`.

    A response knows its retry history. An error that ended the retries (urllib3's
    MaxRetryError inside) took all `retries + 1`; any other error is counted as one attempt."""
    if isinstance(outcome, requests.Response):
        history = getattr(getattr(outcome.raw, "retries", None), "history", ())
        return len(history) + 1
    cause = outcome.args[0] if outcome.args else None
    return retries + 1 if isinstance(cause, MaxRetryError) else 1


def probe(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> requests.Response | None:
    """One GET without retries (readiness checks poll on their own), on a new connection;
    None if the server could not be reached or did not answer in time."""
    with session(retries=0) as http:
        try:
            return http.get(url, headers=headers, timeout=timeout)
        except requests.RequestException:
            return None


def mlflow_environment() -> dict[str, str]:
    """This policy's numbers under the names of the environment variables MLflow reads them from."""
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(RETRIES),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(BACKOFF),
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(BACKOFF_JITTER),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(TIMEOUT),
    }
