"""The serving pod's front: nginx checks fixed bearer keys, TorchServe behind it on localhost.

TorchServe 0.12 makes new random keys every time it starts (key_file.json). With one pod that
only meant copying them into the cluster's Secret after each restart; with several replicas
behind one Service no single key would do. So on the cluster the keys live in the Secret
(`CTLOOP_TS_MANAGEMENT_KEY`, `CTLOOP_TS_INFERENCE_KEY`), this proxy (a second container of the
pod, the same image run as `proxy`) accepts exactly those on the usual ports, and TorchServe,
started with those variables set, listens on 127.0.0.1 only with its own token check off
(serving/entrypoint.sh).

Standard library only: the serving image runs it as a script.

    python proxy.py     # renders /tmp/ctloop-nginx/nginx.conf and runs nginx in the foreground
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

PORTS = {"inference": (8080, 18080), "management": (8081, 18081)}  # public, TorchServe's on localhost
KEY_VARIABLES = {"inference": "CTLOOP_TS_INFERENCE_KEY", "management": "CTLOOP_TS_MANAGEMENT_KEY"}
_KEY = re.compile(r"[A-Za-z0-9_.~+/=-]{16,256}")
MAX_BODY = "4m"  # TorchServe's max_request_size (4 MiB)


def keys_from_environment(environment: dict[str, str]) -> dict[str, str]:
    """The two keys; each must be 16 to 256 token characters (it goes into nginx's config)."""
    keys = {}
    for api, variable in KEY_VARIABLES.items():
        value = environment.get(variable, "")
        if not _KEY.fullmatch(value):
            raise ValueError(f"{variable} must be set to a key of 16 to 256 letters, digits or -._~+/= "
                             "(k8s/secrets/torchserve-token.yaml)")
        keys[api] = value
    return keys


def nginx_config(keys: dict[str, str], run_dir: Path) -> str:
    """nginx for a non-root user: temp files and pid under `run_dir`, one server per API."""
    temp = "\n".join(f"    {kind}_temp_path {run_dir}/{kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    servers = "\n".join(_server(api, keys[api]) for api in PORTS)
    return f"""worker_processes 1;
pid {run_dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    client_max_body_size {MAX_BODY};
    default_type application/json;
{temp}
{servers}
}}
"""


def _server(api: str, key: str) -> str:
    public, private = PORTS[api]
    timeout = "600s" if api == "management" else "120s"  # a synchronous register waits for workers
    return f"""    upstream torchserve_{api} {{ server 127.0.0.1:{private}; keepalive 32; }}
    server {{
        listen {public};
        location / {{
            if ($http_authorization != "Bearer {key}") {{
                return 401 '{{"code": 401, "type": "Unauthorized", "message": "send Authorization: Bearer <the {api} key>"}}';
            }}
            proxy_pass http://torchserve_{api};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout {timeout};
        }}
    }}"""


def main() -> int:
    try:
        keys = keys_from_environment(dict(os.environ))
    except ValueError as error:
        print(f"ctloop proxy: {error}", file=sys.stderr)
        return 2
    run_dir = Path(os.environ.get("CTLOOP_PROXY_DIR", "/tmp/ctloop-nginx"))
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "nginx.conf"
    config.write_text(nginx_config(keys, run_dir))
    os.execvp("nginx", ["nginx", "-e", "stderr", "-c", str(config), "-g", "daemon off;"])
    return 1  # not reached: exec replaced the process


if __name__ == "__main__":
    sys.exit(main())
