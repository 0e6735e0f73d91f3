"""A load generator in a process of its own, for measuring a deploy from outside the deployer.

    python -m bench.loadgen URL KEY_FILE BODIES.npz CONCURRENCY OUT.npz

`CONCURRENCY` threads (bench.load's keep-alive http.client connections) send the bodies to URL
as fast as they are answered, until stdin closes; then OUT.npz gets one row per request:
`started` and `ended` (time.monotonic(), which on Linux is one clock for every process, so the
deployer can compare with its own), `ok`, and the answering `version` (-1 if none). It prints
"ready" once every thread has had its first answer.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.load import Connect, http_connect
from ctloop.wire import NPY_CONTENT_TYPE, read_keys


def main(argv: list[str]) -> int:
    url, key_file, bodies_file, concurrency, out = argv
    with np.load(bodies_file) as stored:
        bodies = [bytes(stored[name]) for name in sorted(stored.files)]
    headers = {"Authorization": f"Bearer {read_keys(key_file)['inference']}", "Content-Type": NPY_CONTENT_TYPE}
    connect = http_connect(url, headers)
    stop, answered = threading.Event(), threading.Barrier(int(concurrency) + 1)
    rows: list[list[tuple[float, float, bool, int]]] = [[] for _ in range(int(concurrency))]
    threads = [threading.Thread(target=_send_until, args=(connect, bodies, stop, answered, part), daemon=True)
               for part in rows]
    for thread in threads:
        thread.start()
    answered.wait(timeout=300)
    print("ready", flush=True)
    sys.stdin.read()  # until the deployer closes it
    stop.set()
    for thread in threads:
        thread.join()
    everything = sorted(row for part in rows for row in part)
    started, ended, ok, version = (np.asarray(column) for column in zip(*everything))
    np.savez(Path(out), started=started, ended=ended, ok=ok, version=version)
    return 0


def _send_until(connect: Connect, bodies: list[bytes], stop: threading.Event, answered: threading.Barrier,
                rows: list[tuple[float, float, bool, int]]) -> None:
    with connect() as send:
        send(bodies[0])
        answered.wait(timeout=300)
        number = 0
        while not stop.is_set():
            started = time.monotonic()
            reply = send(bodies[number % len(bodies)])
            version = int(reply.version) if reply.version and reply.version.isdigit() else -1
            rows.append((started, time.monotonic(), reply.ok, version))
            number += 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
