"""``omnigate tokens`` while a daemon holds the data folder: through its API,
so a revocation takes effect at once (gateway/datalock.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request

import pytest

from tests.daemon import OMNIGATE, free_port, serve, wait_up
from tests.gateway.test_datalock import _env


def _get(url: str, token: str) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.integration
def test_tokens_go_through_the_running_daemon_and_revoke_at_once(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = serve(data, port, _env(), cwd=tmp_path)
    cmd = [OMNIGATE, "tokens"]
    try:
        wait_up(base, daemon)
        made = subprocess.run([*cmd, "create", "--data-dir", str(data), "--agent", "ops", "--role", "admin"],
                              env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        assert token.startswith("og_")
        assert _get(f"{base}/api/v1/tickets", token) == 200
        listed = subprocess.run([*cmd, "list", "--data-dir", str(data), "--json"], env=_env(), cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        [info] = json.loads(listed.stdout)
        assert info["created_by"] == "cli" and info["last_used_at"]
        gone = subprocess.run([*cmd, "revoke", "--data-dir", str(data), info["id"]], env=_env(), cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert gone.returncode == 0, gone.stderr
        assert _get(f"{base}/api/v1/tickets", token) == 401  # at once: the daemon's cache was cleared
        unknown = subprocess.run([*cmd, "revoke", "--data-dir", str(data), "tok_nosuch"], env=_env(), cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60)
        assert unknown.returncode == 1 and unknown.stderr.startswith("omnigate tokens: "), unknown.stderr
        no_token = subprocess.run([*cmd, "list", "--data-dir", str(data)], cwd=tmp_path,
                                  env={k: v for k, v in _env().items() if k != "OMNIGATE_API_TOKEN"},
                                  capture_output=True, text=True, timeout=60)
        assert no_token.returncode == 1 and "OMNIGATE_API_TOKEN" in no_token.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0


@pytest.mark.integration
def test_replay_through_the_daemon_waits_out_the_rate_limit(tmp_path):
    """``omnigate replay`` with a daemon running uses the API with the bootstrap
    token, which is rate-limited like any other: it waits as 429 says."""
    from tests.gateway.test_datalock import _http

    data = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = _env(OMNIGATE_REST__RATE_LIMIT_PER_MINUTE="600", OMNIGATE_REST__RATE_LIMIT_BURST="3")
    daemon = serve(data, port, env, cwd=tmp_path)
    try:
        wait_up(base, daemon)
        for i in range(4):
            body = {"external_id": f"r{i}", "sender": {"kind": "email", "value": f"r{i}@x.cn"}, "text": f"t {i}"}
            assert _http("POST", f"{base}/channels/api/messages", body)[0] == 202  # the channel is not limited
        replay = subprocess.run([OMNIGATE, "replay", "--data-dir", str(data)], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert replay.returncode == 0, replay.stderr
        assert "replayed 4 entries: 4 processed" in replay.stdout
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
