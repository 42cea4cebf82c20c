"""deploy/k8s/*.yaml against the Kubernetes OpenAPI schemas that the
``kubernetes-validate`` package ships (offline, strict: unknown fields are
errors), and what the schemas cannot say: probes on /healthz and /readyz,
the Service and PodDisruptionBudget select the Deployment's pods, config
and rules (with rules/tests/) mounted, secrets by reference, Redis with AOF,
and the ConfigMap's configuration loads."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from tests.deploy.conftest import DEPLOY, yaml_docs

FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))
#: the newest schemas the package ships, and an older release still supported by providers
VERSIONS = [kubernetes_validate.latest_version(), "1.30.0"]


def _all() -> list[dict]:
    return [d for f in FILES for d in yaml_docs(f)]


def _one(kind: str, name: str) -> dict:
    return next(d for d in _all() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version):
    docs = _all()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "StatefulSet"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_mistake_is_refused_by_the_same_validation():
    bad = copy.deepcopy(_one("Deployment", "omnigate"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[0], strict=True)


def test_the_deployment_probes_mounts_and_selectors():
    dep = _one("Deployment", "omnigate")
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["replicas"] >= 2
    (c,) = pod["spec"]["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["port"] == "http" == c["ports"][0]["name"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    rules_dir = env["OMNIGATE_RULES_DIR"]
    assert volumes[mounts[rules_dir]]["configMap"]["name"] == "omnigate-rules"
    assert volumes[mounts[f"{rules_dir}/tests"]]["configMap"]["name"] == "omnigate-rule-tests"
    assert volumes[mounts[env["OMNIGATE_CONFIG"]]]["configMap"]["name"] == "omnigate-config"
    # secrets: by reference, read from files, never a value in the manifest
    secret_dir = next(p for p, n in mounts.items() if "secret" in volumes[n])
    for name in ("OMNIGATE_API_TOKEN_FILE", "OMNIGATE_REDIS_URL_FILE"):
        assert env[name].startswith(secret_dir + "/")
    assert not [n for n in env if ("TOKEN" in n or "PASSWORD" in n or "URL" in n) and not n.endswith("_FILE")]
    assert all(k != "Secret" for k in (d["kind"] for d in _all()))  # created by a command, not committed
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    # the Services and the budget select exactly these pods
    for doc in _all():
        if doc["kind"] == "Service" and doc["metadata"]["name"].startswith("omnigate"):
            assert doc["spec"]["selector"] == labels
    pdb = _one("PodDisruptionBudget", "omnigate")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"] == labels
    assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]  # a drain can proceed


def test_redis_runs_with_aof_on_a_persistent_volume():
    sts = _one("StatefulSet", "redis")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    cmd = " ".join(c.get("command", []) + c.get("args", []))
    assert "--appendonly yes" in cmd and "--appendfsync always" in cmd and "--dir /data" in cmd
    # the password: from the Secret, through the shell (not Kubernetes' $(NAME) expansion)
    env = {e["name"]: e for e in c["env"]}
    assert env["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"] == {"name": "omnigate", "key": "redis_password"}
    assert '--requirepass "$REDISCLI_AUTH"' in cmd
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]


def test_the_configmaps_configuration_loads_under_the_pods_environment(tmp_path):
    from gateway.config import load
    from tests.deploy.conftest import loadable_env

    cfg = tmp_path / "omnigate.yaml"
    cfg.write_text(_one("ConfigMap", "omnigate-config")["data"]["omnigate.yaml"], encoding="utf-8")
    (c,) = _one("Deployment", "omnigate")["spec"]["template"]["spec"]["containers"]
    env = loadable_env({e["name"]: e["value"] for e in c["env"] if e["name"] != "OMNIGATE_CONFIG"},
                       tmp_path / "secrets")
    config = load(str(cfg), environ={"OMNIGATE_LISTEN": "0.0.0.0:8686", **env})  # the image's listen
    assert config.channels["email"]["smtp"]["listen"] == "0.0.0.0:2525"
    assert config.api_token == "s3cret-api_token" and config.log_format == "json"
    assert config.trusted_proxies == ["10.0.0.0/8"]
