"""The serving pod's proxy config (serving/proxy.py); nginx itself runs in the container tier
(tests/e2e/test_containers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.proxy import KEY_VARIABLES, PORTS, keys_from_environment, nginx_config

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"inference": "i" * 32, "management": "m" * 32}


def test_each_api_takes_only_its_own_key_and_forwards_to_torchserve_on_localhost() -> None:
    config = nginx_config(KEYS, Path("/tmp/run"))
    for api, (public, private) in PORTS.items():
        server = config[config.index(f"upstream torchserve_{api}"):]
        assert f"server 127.0.0.1:{private};" in server and f"listen {public};" in server
        assert f'if ($http_authorization != "Bearer {KEYS[api]}")' in server
    assert "pid /tmp/run/nginx.pid;" in config and "client_body_temp_path /tmp/run/client_body;" in config
    assert "client_max_body_size 4m;" in config


@pytest.mark.parametrize("value", ["", "short", "x" * 20 + '"; return 200; #', "k" * 300])
def test_a_missing_or_unsafe_key_is_refused_naming_the_variable(value: str) -> None:
    environment = {KEY_VARIABLES["inference"]: "i" * 32, KEY_VARIABLES["management"]: value}
    with pytest.raises(ValueError, match="CTLOOP_TS_MANAGEMENT_KEY must be set to a key of 16 to 256"):
        keys_from_environment(environment)


def test_the_entrypoint_puts_torchserve_on_the_ports_the_proxy_forwards_to() -> None:
    entrypoint = (ROOT / "serving" / "entrypoint.sh").read_text()
    for api, (_, private) in PORTS.items():
        assert f"{api}_address=http://127.0.0.1:{private}" in entrypoint
    assert "disable_token_authorization=true" in entrypoint
    assert keys_from_environment({variable: "k" * 64 for variable in KEY_VARIABLES.values()}) == {
        "inference": "k" * 64, "management": "k" * 64}
