"""A full disk (ENOSPC, injected: no real disk is filled): /readyz is not
ready while a write fails, and an attachment write answers 503 and leaves no
temporary file."""

from __future__ import annotations

import base64
import builtins
import errno
import os

from tests.gateway.conftest import AUTH, drain


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_readyz_is_not_ready_while_the_data_folder_cannot_write(gw, monkeypatch):
    client, _ = gw
    assert (await client.get("/readyz")).status == 200
    with monkeypatch.context() as m:
        m.setattr(os, "write", _enospc)
        r = await client.get("/readyz")
        body = await r.json()
    assert r.status == 503 and body["status"] == "not ready"
    assert body["detail"]["disk"]["ok"] is False and body["detail"]["disk"]["error"].startswith("ENOSPC")
    r = await client.get("/readyz")  # the disk has room again
    assert r.status == 200 and (await r.json())["detail"]["disk"] == {"ok": True, "writable": True}


class _FullFile:
    """A file object whose writes hit a full disk (the file itself exists)."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


async def test_an_attachment_write_that_hits_enospc_answers_503_and_leaves_no_temporary_file(gw, monkeypatch):
    import gateway.attachments

    client, app = gw
    body = {"external_id": "d1", "sender": {"kind": "email", "value": "li@example.com"}, "text": "hello"}
    assert (await client.post("/channels/api/messages", json=body, headers=AUTH)).status == 202
    await drain(app)
    (entry,) = (await (await client.get("/api/v1/journal", headers=AUTH)).json())["items"]
    monkeypatch.setattr(gateway.attachments, "open", lambda path, mode: _FullFile(builtins.open(path, mode)),
                        raising=False)
    upload = {"name": "a.pdf", "content_type": "application/pdf",
              "data_base64": base64.b64encode(b"%PDF-1.4 receipt").decode()}
    r = await client.post(f"/api/v1/tickets/{entry['ticket_id']}/replies", headers=AUTH,
                          json={"text": "see attached", "internal": True, "attachments": [upload]})
    assert r.status == 503 and r.content_type == "application/problem+json"
    files = [p for p in (app_data(app) / "attachments").rglob("*") if p.is_file()]
    assert files == []


def app_data(app):
    from pathlib import Path

    from gateway import keys

    return Path(app[keys.CONFIG].data_dir)
