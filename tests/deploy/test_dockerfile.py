"""What can be checked of the container without a Docker engine: the
Dockerfile's command, with its environment, starts the gateway here (the
data and listen address moved to temporary ones) and its HEALTHCHECK command
passes against it; its SMTP listener binds all interfaces, as HTTP does; the
COPY sources exist; the example configuration the deployments mount loads
with gateway.config.load."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, ROOT, clean_env, free_port, http, loadable_env, wait_healthy

DOCKERFILE = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")


def _instructions(name: str) -> list[str]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in text.splitlines() if line.split(None, 1)[:1] == [name]]


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in _instructions("ENV"):
        env.update(dict(pair.split("=", 1) for pair in shlex.split(line)))
    return env


def test_the_copy_sources_exist_and_the_image_listens_on_all_interfaces():
    for line in _instructions("COPY"):
        *sources, _ = line.split()
        for src in sources:
            assert (ROOT / src).exists(), src
    env = _image_env()
    assert env["OMNIGATE_LISTEN"].startswith("0.0.0.0:")
    assert {"8686", "2525"} <= set(" ".join(_instructions("EXPOSE")).split())


def test_the_containers_smtp_listener_binds_all_interfaces(tmp_path):
    """The example's email section gives no listen: under the image's
    environment the listener binds where HTTP does, 0.0.0.0."""
    from gateway.config import load

    env = {k: v for k, v in _image_env().items() if k != "OMNIGATE_DATA_DIR"}
    config = load(str(DEPLOY / "omnigate.example.yaml"), environ=env)
    assert config.channels["email"]["smtp"]["listen"] == "0.0.0.0:2525"
    assert config.listen == "0.0.0.0:8686"
    # outside the container the same file keeps to loopback
    assert load(str(DEPLOY / "omnigate.example.yaml"), environ={}).channels["email"]["smtp"]["listen"] \
        == "127.0.0.1:2525"
    # an explicit listen stays as written
    own = tmp_path / "own.yaml"
    own.write_text("email:\n  smtp:\n    listen: 127.0.0.1:25\n    mailboxes: {s: s@example.com}\n")
    assert load(str(own), environ=env).channels["email"]["smtp"]["listen"] == "127.0.0.1:25"


def test_the_example_configuration_loads_under_each_deployments_environment(tmp_path):
    """The loader refuses secrets in the YAML and typos: the example passes,
    with the variables compose and the unit set (redis_url and
    trusted_proxies once their features have landed: tests/deploy/conftest.py)."""
    import yaml

    from gateway.config import load

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    gateway_env = compose["services"]["gateway-a"]["environment"]
    env = loadable_env({k: str(v) for k, v in gateway_env.items() if k != "OMNIGATE_CONFIG"}, tmp_path / "secrets")
    config = load(str(DEPLOY / "omnigate.example.yaml"), environ={**_image_env(), **env})
    assert config.api_token == "s3cret-api_token"
    assert config.log_format == "json"
    assert config.trusted_proxies == [compose["services"]["proxy"]["networks"]["back"]["ipv4_address"]]


@pytest.mark.integration
def test_the_images_command_starts_the_gateway_and_its_healthcheck_passes(tmp_path):
    env = clean_env(**_image_env())
    port = free_port()
    env.update({"OMNIGATE_DATA_DIR": str(tmp_path / "data"), "OMNIGATE_LISTEN": f"127.0.0.1:{port}",
                "OMNIGATE_RULES_DIR": str(ROOT / "rules"),  # COPY rules /etc/omnigate/rules
                "OMNIGATE_API_TOKEN": "image-token"})
    (cmd,) = _instructions("CMD")
    argv = json.loads(cmd)
    assert argv == ["omnigate", "serve"]
    argv[0] = str(Path(sys.executable).with_name("omnigate"))
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        (check,) = _instructions("HEALTHCHECK")
        probe = json.loads(check.split("CMD", 1)[1])
        probe = [sys.executable if a == "python" else a.replace(":8686/", f":{port}/") for a in probe]
        assert subprocess.run(probe, timeout=30).returncode == 0
        assert http("GET", f"{base}/readyz")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)  # STOPSIGNAL
        assert proc.wait(timeout=30) == 0
    # and the probe fails once the gateway is gone: the check above can fail
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0
