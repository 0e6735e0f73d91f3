"""TorchServe's health for the kubelet's probes: GET /ping on the inference port, exit 0 only on 200.

TorchServe opens its ports before its workers are up, so a TCP probe passes too early; /ping
answers 200 only when every model has its minimum workers. With token authorization on, /ping
needs the inference key, which TorchServe writes to key_file.json at start (its working directory),
so the probe is this script (run with the image's Python) rather than an httpGet probe.

The key is CTLOOP_TS_INFERENCE_KEY when set (the fixed key the pod's proxy checks, from the
Secret; serving/proxy.py), else the one in TorchServe's key file.

    python ping.py [KEY_FILE [URL]]
"""

import json
import os
import sys
import urllib.error
import urllib.request

KEY_FILE = sys.argv[1] if len(sys.argv) > 1 else "/home/model-server/key_file.json"
URL = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8080/ping"


def main() -> int:
    key = os.environ.get("CTLOOP_TS_INFERENCE_KEY", "")
    try:
        if not key:
            with open(KEY_FILE) as keys:
                key = json.load(keys)["inference"]["key"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"no inference key in {KEY_FILE}: {error}")
        return 1
    request = urllib.request.Request(URL, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=4) as answer:
            status, body = answer.status, answer.read(200).decode(errors="replace")
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read(200).decode(errors="replace")
    except OSError as error:
        print(f"GET {URL}: {error}")
        return 1
    print(f"GET {URL}: {status} {body.strip()}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
