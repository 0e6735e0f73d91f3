"""A closed-loop load generator: `concurrency` threads, each with one keep-alive connection,
each sending its next request as soon as the previous one is answered.

It uses `http.client` rather than requests: on 2 cores the client shares the CPU with the
server, and http.client costs several times less CPU per request, so more of the measurement
is the server's. The same generator drives every target (TorchServe, FastAPI, in-process), so
what the client costs, it costs them all.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator
from urllib.parse import urlsplit

import numpy as np

from ctloop.wire import VERSION_HEADER, encode_batch

READY_TIMEOUT = 300.0  # seconds for every thread to finish its warm-up


@dataclass(frozen=True)
class Reply:
    ok: bool
    version: str | None = None


Send = Callable[[bytes], Reply]
"""Sends one request body and waits for the answer."""

Connect = Callable[[], ContextManager[Send]]
"""Opens one connection (one per client thread) for the `with` block and gives its Send."""


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int
    failed: int
    seconds: float
    requests_per_second: float
    p50_ms: float | None
    p99_ms: float | None

    @classmethod
    def from_latencies(cls, concurrency: int, latencies: list[float], failed: int, seconds: float) -> "LoadResult":
        """Percentiles are None when no request succeeded."""
        milliseconds = np.asarray(latencies) * 1000.0
        p50, p99 = (round(float(np.percentile(milliseconds, q)), 3) if len(latencies) else None for q in (50, 99))
        return cls(concurrency, len(latencies), failed, round(seconds, 3), round(len(latencies) / seconds, 1), p50, p99)


def npy_bodies(images: np.ndarray) -> list[bytes]:
    """One request body per image: the .npy wire format of the champion handler."""
    return [encode_batch(image[None]) for image in images]


def http_connect(url: str, headers: dict[str, str], timeout: float = 30.0) -> Connect:
    """POSTs to `url` over one keep-alive HTTP/1.1 connection per thread; reconnects after an error."""
    parts = urlsplit(url)

    @contextlib.contextmanager
    def connect() -> Iterator[Send]:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

        def send(body: bytes) -> Reply:
            try:
                connection.request("POST", parts.path, body, headers)
                answer = connection.getresponse()
                answer.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                return Reply(False)
            return Reply(answer.status == 200, answer.getheader(VERSION_HEADER))

        try:
            yield send
        finally:
            connection.close()

    return connect


def run_load(connect: Connect, bodies: list[bytes], concurrency: int, requests: int, warmup: int) -> LoadResult:
    """Send `warmup` untimed then `requests` timed requests from `concurrency` threads.

    Bodies are sent round-robin. Latency is per request; throughput is timed requests over the
    wall time from the moment every thread is warmed up to the last answer.
    """
    tickets = itertools.count()
    started: list[float] = []
    # The clock starts in the barrier's action, before any thread is released: a released
    # thread may otherwise send requests before the main thread gets the GIL to read the clock.
    ready = threading.Barrier(concurrency + 1, action=lambda: started.append(time.perf_counter()))
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures = [0] * concurrency

    def client(index: int) -> None:
        with connect() as send:
            for number in range(index, warmup, concurrency):
                send(bodies[number % len(bodies)])
            ready.wait()
            while (number := next(tickets)) < requests:
                sent_at = time.perf_counter()
                reply = send(bodies[number % len(bodies)])
                elapsed = time.perf_counter() - sent_at
                if reply.ok:
                    latencies[index].append(elapsed)
                else:
                    failures[index] += 1

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(concurrency)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=READY_TIMEOUT)
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started[0]
    return LoadResult.from_latencies(concurrency, [value for part in latencies for value in part], sum(failures),
                                     seconds)
