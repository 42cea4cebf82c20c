"""The CLI as operators script it: parse, replay, the command table."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from gateway.store.sqlite import SQLiteStore

OMNIGATE = str(Path(sys.executable).with_name("omnigate"))


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([OMNIGATE, *args], capture_output=True, text=True, timeout=60, **kw)


def test_help_lists_the_commands():
    r = run("--help")
    assert r.returncode == 0
    for name in ("serve", "parse", "replay", "rules", "calendar", "bench"):
        assert f"  {name}" in r.stdout
    assert run("frobnicate").returncode == 2


def test_parse_list_is_channel_names_only():
    r = run("parse", "--list")
    names = r.stdout.split()
    assert r.returncode == 0 and {"api", "email", "wechat", "wecom", "telegram"} <= set(names)
    assert names == sorted(names) and all(n.isidentifier() or "-" in n for n in names)


def test_parse_api_prints_one_inbound_per_line_and_refuses_garbage(tmp_path):
    good = tmp_path / "m.json"
    good.write_text(json.dumps({"external_id": "x1", "sender": {"kind": "email", "value": "A@B.cn"},
                                "subject": "退款", "text": "hi", "sent_at": "2026-01-02T03:04:05+08:00"}))
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x00\x01 not json")
    r = run("parse", "api", str(good))
    [obj] = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0
    assert obj["sender"] == {"kind": "email", "value": "a@b.cn", "name": None}
    assert obj["sent_at"] == "2026-01-02T03:04:05+08:00" and obj["kind"] == "message"
    for key in ("channel", "account", "external_id", "subject", "text", "attachments", "thread", "call", "defects"):
        assert key in obj
    r = run("parse", "api", str(good), str(bad))
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 1
    assert r.stderr.startswith(f"{bad}: error: malformed JSON")
    assert run("parse", "nosuch", str(good)).returncode == 2


def test_parse_imports_only_its_channel(tmp_path):
    code = ("import sys; from gateway.cli import main; "
            "main(['parse', 'api', sys.argv[1]]); "
            "print([m for m in ('aiohttp', 'wechatpy', 'telegram', 'connectors.email.parse') if m in sys.modules])")
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"external_id": "x", "sender": {"kind": "line", "value": "U1"}, "text": "t"}))
    r = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_replay_twice_changes_nothing(tmp_path):
    async def seed():
        s = SQLiteStore.in_dir(tmp_path)
        for i in range(3):
            body = json.dumps({"external_id": f"r{i}", "sender": {"kind": "email", "value": f"u{i}@x.cn"},
                               "text": f"text {i}"}).encode()
            await s.journal_append("api", "api", f"r{i}", body)
        await s.journal_append("api", "api", "broken", b"{")
        await s.close()

    async def snapshot():
        s = SQLiteStore.in_dir(tmp_path)
        try:
            return await s.counts(), [(e.id, e.status) for e in await s.journal_list(limit=10)]
        finally:
            await s.close()

    asyncio.run(seed())
    r = run("replay", "--data-dir", str(tmp_path))
    assert r.returncode == 1 and "3 processed" in r.stdout and "1 failed" in r.stdout
    first = asyncio.run(snapshot())
    assert first[0]["tickets"] == 3
    r = run("replay", "--data-dir", str(tmp_path))
    assert "3 processed" in r.stdout
    assert asyncio.run(snapshot()) == first
    r = run("replay", "--failed", "--data-dir", str(tmp_path))
    assert "replayed 1 entries: 1 failed" in r.stdout and "malformed JSON" in r.stderr
    failed_id = [jid for jid, st in first[1] if st == "failed"][0]
    r = run("replay", "--id", failed_id, "--id", "NOPE", "--data-dir", str(tmp_path))
    assert "NOPE: error: no such journal entry" in r.stderr
    assert run("replay", "--since", "yesterday-ish", "--data-dir", str(tmp_path)).returncode == 2
