"""One writer per data folder: a second daemon refuses to start, and
``omnigate replay`` goes through the running daemon (gateway/datalock.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request

import pytest

from gateway import datalock
from tests.daemon import OMNIGATE, free_port, serve, wait_up
from tests.gateway.conftest import TOKEN

# the names tests/gateway/test_backup.py imports from here (the helpers live in tests/daemon.py)
_free_port, _wait_up = free_port, wait_up



def test_the_lock_is_exclusive_names_its_holder_and_goes_with_its_holder(tmp_path):
    lock = datalock.acquire(tmp_path, "127.0.0.1:8686")
    assert datalock.holder(tmp_path) == datalock.LockInfo(os.getpid(), "127.0.0.1:8686")
    with pytest.raises(datalock.Locked) as exc:
        datalock.acquire(tmp_path)
    assert exc.value.info == datalock.LockInfo(os.getpid(), "127.0.0.1:8686")
    assert f"pid {os.getpid()}, listening on 127.0.0.1:8686" in str(exc.value)
    lock.release()
    assert datalock.holder(tmp_path) is None
    with datalock.acquire(tmp_path):  # free again (a stale file is no lock)
        pass


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIGATE_") or k == "OMNIGATE_CORPUS"}
    return {**env, "OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_LOG_LEVEL": "warning", **extra}


def _http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


@pytest.mark.integration
def test_a_second_daemon_refuses_and_replay_goes_through_the_running_one(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = serve(data, port, _env(), cwd=tmp_path)
    try:
        wait_up(base, daemon)
        for i in range(3):
            body = {"external_id": f"l{i}", "sender": {"kind": "email", "value": f"u{i}@x.cn"}, "text": f"t {i}"}
            assert _http("POST", f"{base}/channels/api/messages", body)[0] == 202

        second = subprocess.run([OMNIGATE, "serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data)],
                                env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"in use by pid {daemon.pid}, listening on 127.0.0.1:{port}" in second.stderr

        replay = subprocess.run([OMNIGATE, "replay", "--data-dir", str(data)], env=_env(), cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert replay.returncode == 0, replay.stderr
        assert f"replaying through the running daemon at {base}" in replay.stderr
        assert "replayed 3 entries: 3 processed" in replay.stdout

        no_token = subprocess.run([OMNIGATE, "replay", "--data-dir", str(data)], cwd=tmp_path,
                                  env={k: v for k, v in _env().items() if k != "OMNIGATE_API_TOKEN"},
                                  capture_output=True, text=True, timeout=60)
        assert no_token.returncode == 1 and "OMNIGATE_API_TOKEN" in no_token.stderr
        assert daemon.poll() is None  # the daemon kept its folder
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    assert datalock.holder(data) is None  # released at exit
    local = subprocess.run([OMNIGATE, "replay", "--data-dir", str(data)], env=_env(), cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert local.returncode == 0 and "replaying through" not in local.stderr
    assert "replayed 3 entries: 3 processed" in local.stdout
