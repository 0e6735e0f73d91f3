"""What a team would write instead of TorchServe: the same TorchScript champion in a FastAPI app.

A minimal but fair app: the same wire format as the champion handler (.npy batch or JSON
`{"image": ...}` / `{"images": ...}`), the same checks, one torch thread per worker, bearer-token
authorization, the same JSON answer, run by uvicorn with the same number of worker processes as
TorchServe. It does not log predictions; TorchServe's champion does (production behaviour).

`Predictor.answer` is also the in-process baseline, so "in-process" is exactly this app's work
without HTTP.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request, Response

from ctloop import http
from ctloop.modelfile import load_model
from ctloop.process import ServerProcess, free_port
from ctloop.wire import NPY_MAGIC

MODEL_ENV = "CTLOOP_BENCH_MODEL"
KEY_ENV = "CTLOOP_BENCH_KEY"
MAX_IMAGES = 256
REPO_ROOT = Path(__file__).resolve().parent.parent


class RequestError(ValueError):
    """The body is not a batch of images this model takes."""


class Predictor:
    """Body in, JSON answer out: decode -> check -> forward -> one entry per image."""

    def __init__(self, model_file: str | Path) -> None:
        self.model, card = load_model(model_file)
        self.class_names = card.class_names
        self.image_size = card.image_size

    def answer(self, body: bytes) -> bytes:
        images = self._check(self._decode(body))
        with torch.inference_mode():
            probabilities = torch.softmax(self.model(torch.from_numpy(images).unsqueeze(1)), dim=1)
        confidences, labels = probabilities.max(dim=1)
        return json.dumps([
            {"label": int(label), "class_name": self.class_names[int(label)], "confidence": float(confidence)}
            for label, confidence in zip(labels, confidences)
        ]).encode()

    @staticmethod
    def _decode(body: bytes) -> np.ndarray:
        try:
            if body.startswith(NPY_MAGIC):
                images = np.load(io.BytesIO(body), allow_pickle=False)
                return images[None] if images.ndim == 2 else images
            parsed = json.loads(body)
            if "image" in parsed:
                return np.asarray(parsed["image"], dtype=np.float32)[None]
            return np.asarray(parsed["images"], dtype=np.float32)
        except (ValueError, TypeError, KeyError, OSError) as error:
            raise RequestError(f'expected a .npy batch or JSON {{"image"}} / {{"images"}} ({error})') from error

    def _check(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 3 or images.shape[1:] != self.image_size or not 0 < len(images) <= MAX_IMAGES:
            raise RequestError(f"expected 1 to {MAX_IMAGES} images of {self.image_size}, got shape {images.shape}")
        images = np.ascontiguousarray(images, dtype=np.float32)
        if not np.isfinite(images).all() or images.min() < 0.0 or images.max() > 1.0:
            raise RequestError("pixel values must be finite and in [0, 1]")
        return images


def create_app() -> FastAPI:
    """The app of one uvicorn worker; the model file and the key come from the environment.
    One torch thread per worker, as in the TorchServe handlers."""
    torch.set_num_threads(1)
    predictor = Predictor(os.environ[MODEL_ENV])
    authorization = f"Bearer {os.environ[KEY_ENV]}"
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, object]:
        return {"status": "Healthy", "pid": os.getpid()}

    @app.post("/predictions/champion")
    async def predict(request: Request) -> Response:
        if request.headers.get("authorization") != authorization:
            return Response(status_code=401)
        try:
            return Response(predictor.answer(await request.body()), media_type="application/json")
        except RequestError as error:
            return Response(json.dumps({"error": str(error)}), status_code=400, media_type="application/json")

    return app


class UvicornServer:
    """`uvicorn bench.fastapi_app:create_app --workers N` on a free port of 127.0.0.1, run as a
    ctloop.process.ServerProcess: SIGTERM to uvicorn (it stops its workers), then SIGKILL to
    whatever of its group is left."""

    def __init__(self, model_file: Path, workers: int, key: str, log_file: Path, start_timeout: float = 60.0) -> None:
        self.model_file, self.workers, self.key = model_file, workers, key
        self.log_file, self.start_timeout = log_file, start_timeout
        self.port = free_port()
        self._seen: set[int] = set()
        self._server: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "UvicornServer":
        command = [sys.executable, "-m", "uvicorn", "bench.fastapi_app:create_app", "--factory",
                   "--app-dir", str(REPO_ROOT), "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", str(self.workers), "--no-access-log", "--log-level", "warning"]
        env = {**os.environ, MODEL_ENV: str(self.model_file), KEY_ENV: self.key}
        self._seen = set()
        self._server = ServerProcess(command, self.log_file, self._all_workers_ready, name="uvicorn",
                                     start_timeout=self.start_timeout, cwd=REPO_ROOT, env=env, poll=0.1)
        self._server.start()
        return self

    def _all_workers_ready(self) -> bool | str:
        """Ready when every worker has answered a /ping (each probe on a new connection). A
        keep-alive connection stays with the worker that accepted it, so measuring before all
        workers are up would load one of them with every connection."""
        answer = http.probe(f"{self.url}/ping")
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            if answer is not None and answer.status_code == 200:
                self._seen.add(int(answer.json()["pid"]))
        return len(self._seen) >= self.workers or f"{len(self._seen)} of {self.workers} uvicorn workers ready"

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
