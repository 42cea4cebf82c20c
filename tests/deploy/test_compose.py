"""deploy/compose.yaml against the Compose Specification's JSON schema
(vendored from compose-spec/compose-spec with its licence: tests/deploy/schema/),
and what the schema cannot say: two gateways on one Redis with AOF, a
reverse proxy whose address is the gateways' only trusted proxy, secrets
from files that deploy/make-secrets.sh creates, and environment variables
that name real configuration keys."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.corpus import IN_CI
from tests.deploy.conftest import DEPLOY, PENDING, config_key, key_is_known

SCHEMA = Path(__file__).with_name("schema") / "compose-spec.json"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_the_compose_file_is_valid_against_the_compose_spec_schema():
    errors = sorted(_validator().iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    # the same schema refuses a mistake: the check above can fail
    broken = _compose()
    broken["services"]["redis"]["restrat"] = "always"
    assert any("restrat" in e.message for e in _validator().iter_errors(broken))


def _gateways(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if s.get("image") == "omnigate:local"}


def test_two_gateways_share_one_redis_with_aof_behind_a_trusted_proxy():
    compose = _compose()
    services = compose["services"]
    gateways = _gateways(compose)
    assert len(gateways) == 2
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--appendfsync" in redis_cmd
    proxy_ip = services["proxy"]["networks"]["back"]["ipv4_address"]
    data_volumes = set()
    for name, gw in gateways.items():
        env = gw["environment"]
        assert env["OMNIGATE_TRUSTED_PROXIES"] == proxy_ip, name
        assert env["OMNIGATE_REDIS_URL_FILE"] == "/run/secrets/redis_url"
        assert env["OMNIGATE_API_TOKEN_FILE"] == "/run/secrets/api_token"
        assert {"api_token", "redis_url"} <= set(gw["secrets"])
        assert gw["depends_on"]["redis"]["condition"] == "service_healthy"
        data_volumes |= {v.split(":")[0] for v in gw["volumes"] if v.endswith(":/data")}
        assert "../rules:/etc/omnigate/rules:ro" in gw["volumes"]
    assert len(data_volumes) == 2  # each gateway its own data folder (one daemon per folder)
    # the proxy reaches both gateways, for HTTP and for SMTP
    nginx = (DEPLOY / "compose" / "nginx.conf").read_text(encoding="utf-8")
    for name in gateways:
        assert f"server {name}:8686" in nginx and f"server {name}:2525" in nginx
    assert "proxy_set_header X-Forwarded-For $remote_addr" in nginx
    assert {m.split(":")[0] for m in services["proxy"]["volumes"]} == {"./compose/nginx.conf"}


def test_every_variable_the_deployments_set_is_a_configuration_key():
    from tests.deploy.conftest import yaml_docs

    names = set()
    for gw in _gateways(_compose()).values():
        names |= set(gw["environment"])
    for doc in yaml_docs(DEPLOY / "k8s" / "omnigate.yaml"):
        if doc["kind"] == "Deployment":
            names |= {e["name"] for c in doc["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    names |= set(re.findall(r"(OMNIGATE_[A-Z_]+)=", dockerfile))
    names.discard("OMNIGATE_CONFIG")  # the file itself, not a key in it
    unknown = [n for n in sorted(names) if not key_is_known(config_key(n)) and config_key(n) not in PENDING]
    assert not unknown, unknown
    # the check knows a typo when it sees one
    assert not key_is_known(config_key("OMNIGATE_LISTN")) and not key_is_known(config_key("OMNIGATE_STORE__SYNC"))
    assert key_is_known(config_key("OMNIGATE_WECHAT__ACCOUNTS__MAIN__TOKEN_FILE"))


@pytest.mark.skipif(shutil.which("openssl") is None and not IN_CI, reason="openssl missing")
def test_make_secrets_creates_every_file_the_compose_file_mounts_and_keeps_them(tmp_path):
    work = tmp_path / "deploy"
    work.mkdir()
    shutil.copy(DEPLOY / "make-secrets.sh", work)
    run = subprocess.run(["sh", str(work / "make-secrets.sh")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    secrets = work / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for name, spec in _compose()["secrets"].items():
        path = work / spec["file"]
        assert path.parent == secrets and path.stat().st_size > 0, name
    token = (secrets / "api_token").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    password = (secrets / "redis_password").read_text().strip()
    assert (secrets / "redis_url").read_text().strip() == f"redis://:{password}@redis:6379/0"
    subprocess.run(["sh", str(work / "make-secrets.sh")], check=True, capture_output=True, timeout=60)
    assert (secrets / "api_token").read_text().strip() == token  # run again: nothing replaced
    # and git ignores them
    ignored = (DEPLOY.parent / ".gitignore").read_text(encoding="utf-8").split()
    assert "deploy/secrets/" in ignored
