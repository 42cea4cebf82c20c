"""deploy/omnigate.service: ``systemd-analyze verify`` finds nothing (its
ExecStart made resolvable), the offline security review stays low, the unit
needs no hand-made user and is hardened, and its command — run here the way
systemd would run it, with %S/%E/%d pointing at temporary folders — starts
``omnigate serve``, which answers /healthz and takes the API token from the
credential."""

from __future__ import annotations

import configparser
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus import IN_CI
from tests.deploy.conftest import DEPLOY, ROOT, clean_env, free_port, http, wait_healthy

UNIT = DEPLOY / "omnigate.service"
OMNIGATE = str(Path(sys.executable).with_name("omnigate"))
ANALYZE = shutil.which("systemd-analyze")
#: scripts/test installs Debian's systemd when systemd-analyze is missing; in CI a missing one fails
needs_analyze = pytest.mark.skipif(ANALYZE is None and not IN_CI, reason="systemd-analyze missing (scripts/test installs systemd)")


BACKUP_UNITS = [DEPLOY / "omnigate-backup.service", DEPLOY / "omnigate-backup.timer"]


def _entries(section: str = "Service", unit: Path = UNIT) -> list[tuple[str, str]]:
    """Every ``Key=value`` of a section, repeated keys in order."""
    out, current = [], None
    for line in unit.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def _values(key: str, unit: Path = UNIT) -> list[str]:
    return [v for k, v in _entries(unit=unit) if k == key]


def _local_copy(tmp_path: Path, text: str | None = None, name: str = "omnigate.service") -> Path:
    """The unit with ExecStart pointing at this checkout's omnigate (systemd-analyze
    checks the binary exists and is executable)."""
    unit = tmp_path / name
    unit.write_text((text or UNIT.read_text(encoding="utf-8")).replace("/opt/omnigate/.venv/bin/omnigate", OMNIGATE))
    return unit


@needs_analyze
def test_systemd_analyze_verify_finds_nothing_and_would_see_a_typo(tmp_path):
    units = [_local_copy(tmp_path, f.read_text(encoding="utf-8"), f.name) for f in [UNIT, *BACKUP_UNITS]]
    run = subprocess.run([ANALYZE, "verify", "--man=no", *map(str, units)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    ours = [line for line in (run.stdout + run.stderr).splitlines() if any(u.name in line for u in units)]
    assert not ours, ours  # systemd-analyze only warns (exit 0) on an unknown key or bad value
    # the same check on a unit with a typo does complain: the assertion above can fail
    bad = _local_copy(tmp_path, UNIT.read_text().replace("ProtectHome=yes", "ProtectHom=yes"), "bad.service")
    run = subprocess.run([ANALYZE, "verify", "--man=no", str(bad)], capture_output=True, text=True, timeout=120)
    assert "Unknown key 'ProtectHom'" in run.stdout + run.stderr


@needs_analyze
@pytest.mark.parametrize("name", ["omnigate.service", "omnigate-backup.service"])
def test_the_offline_security_review_rates_the_units_low_exposure(tmp_path, name):
    unit = _local_copy(tmp_path, (DEPLOY / name).read_text(encoding="utf-8"), name)
    run = subprocess.run([ANALYZE, "security", "--offline=yes", "--man=no", "--threshold=20", str(unit)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr  # exposure at most 2.0 of 10


def test_the_unit_needs_no_user_and_is_hardened():
    service = dict(_entries())
    assert service["DynamicUser"] == "yes" and "User" not in service
    assert service["StateDirectory"] == "omnigate" and service["ConfigurationDirectory"] == "omnigate"
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "PrivateDevices": "yes", "RestrictSUIDSGID": "yes",
                       "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
                       "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE"}.items():
        assert service[key] == value, key
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert _values("SystemCallFilter")[0] == "@system-service"
    # secrets through credentials: the file the gateway reads is in $CREDENTIALS_DIRECTORY (%d)
    creds = dict(v.split(":", 1) for v in _values("LoadCredential"))
    env = dict(v.split("=", 1) for v in _values("Environment"))
    assert env["OMNIGATE_API_TOKEN_FILE"] == "%d/api_token" and "api_token" in creds
    assert env["OMNIGATE_DATA_DIR"] == "%S/omnigate"
    assert not [k for k in env if k.startswith("OMNIGATE_") and not k.endswith("_FILE") and "TOKEN" in k]


@pytest.mark.integration
def test_the_units_command_starts_the_gateway_on_a_temporary_state_dir(tmp_path):
    state, etc, creds = tmp_path / "var-lib", tmp_path / "etc", tmp_path / "credentials"
    (etc / "omnigate").mkdir(parents=True)
    shutil.copy(DEPLOY / "omnigate.example.yaml", etc / "omnigate" / "omnigate.yaml")
    shutil.copytree(ROOT / "rules", etc / "omnigate" / "rules")
    creds.mkdir()
    (creds / "api_token").write_text("unit-token\n")
    (state / "omnigate").mkdir(parents=True)  # StateDirectory=: systemd creates it
    specifiers = {"%S": str(state), "%E": str(etc), "%d": str(creds)}

    def expand(text: str) -> str:
        for spec, value in specifiers.items():
            text = text.replace(spec, value)
        return text

    env = clean_env(CREDENTIALS_DIRECTORY=str(creds))
    for value in _values("Environment"):
        name, _, val = value.partition("=")
        env[name] = expand(val)
    port, smtp = free_port(), free_port()
    env["OMNIGATE_LISTEN"] = f"127.0.0.1:{port}"  # the unit's own port may be taken on this machine
    env["OMNIGATE_EMAIL__SMTP__LISTEN"] = f"127.0.0.1:{smtp}"  # the example's listener: 2525 may be taken too
    argv = expand(_values("ExecStart")[0]).split()
    assert argv[0] == "/opt/omnigate/.venv/bin/omnigate" and argv[1:] == ["serve"]
    argv[0] = OMNIGATE
    proc = subprocess.Popen(argv, env=env, cwd=expand(dict(_entries())["WorkingDirectory"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        body = json.dumps({"external_id": "unit-1", "sender": {"kind": "email", "value": "a@example.cn"},
                           "text": "hello"}).encode()
        assert http("POST", f"{base}/channels/api/messages", body, token="unit-token")[0] == 202
        assert http("POST", f"{base}/channels/api/messages", body, token="wrong")[0] == 401
        status, ready = http("GET", f"{base}/readyz")
        assert status == 200, ready
        # the backup unit's command, run while the daemon runs, as the same (dynamic) user
        backup_unit = DEPLOY / "omnigate-backup.service"
        assert dict(_entries(unit=backup_unit))["User"] == UNIT.stem  # the main unit's user name: one UID
        assert "omnigate" in _values("StateDirectory", backup_unit)[0].split()
        (state / "omnigate-backup").mkdir()
        argv = expand(_values("ExecStart", backup_unit)[0]).split()
        argv[0] = OMNIGATE
        run = subprocess.run(argv, env=clean_env(), cwd=state / "omnigate-backup", capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
    finally:
        proc.send_signal(signal.SIGTERM)  # KillMode=mixed: SIGTERM to the main process first
        assert proc.wait(timeout=30) == 0
    assert (state / "omnigate" / "omnigate.db").is_file()  # the data went into the state directory
    copy = state / "omnigate-backup" / "latest" / "omnigate.db"
    conn = sqlite3.connect(copy)
    assert conn.execute("SELECT count(*) FROM journal").fetchone()[0] == 1
    conn.close()
