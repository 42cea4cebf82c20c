"""The webchat parser on the synthetic frames of the documented protocol
(tests/fixtures/webchat/, README "Webchat frame protocol"), through the
same ``omnigate parse webchat`` the operators use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.base import PayloadRejected
from connectors.webchat.parse import parse, sign, verify_user, User

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "webchat"
CTX = json.loads((FIX / "context-synthetic.json").read_text())
OMNIGATE = str(Path(sys.executable).with_name("omnigate"))


def one(name: str, ctx=CTX):
    [i] = parse((FIX / name).read_bytes(), ctx)
    return i


def test_anonymous_visitor_is_a_webchat_identity_scoped_to_the_site():
    i = one("synthetic-anonymous-message.json")
    assert (i.channel, i.account, i.kind) == ("webchat", "shop", "message")
    assert (i.sender.kind, i.sender.value) == ("webchat", "shop:vSynthVisitor0001")
    assert i.external_id == "vSynthVisitor0001:c0001"
    assert i.text == "Hello, where is my order 你好?"
    assert i.meta["page_url"] == "https://shop.example.com/orders"


def test_signed_user_is_their_external_id_and_only_signed_email_links():
    i = one("synthetic-signed-user.json")
    assert (i.sender.kind, i.sender.value, i.sender.name) == ("external", "shop:u42", "Li Lei")
    assert "email" not in i.meta
    full = one("synthetic-signed-user-email.json")
    assert full.sender.value == "shop:u42"
    assert full.meta["email"] == "LiLei@Example.com" and full.meta["phone"] == "+8613800138000"


def test_unsigned_email_claims_are_recorded_not_linked():
    i = one("synthetic-unsigned-email-claim.json")
    assert i.sender.value == "shop:u42"
    assert "email" not in i.meta
    assert i.meta["claimed_email"] == "boss@example.com, other@example.com"


def test_bad_signature_or_no_secret_is_an_anonymous_visitor_with_a_defect():
    i = one("synthetic-bad-signature.json")
    assert i.sender.kind == "webchat" and i.meta["claimed_user"] == "u42"
    assert any("signature does not match" in d for d in i.defects)
    j = one("synthetic-signed-user.json", ctx={})
    assert j.sender.kind == "webchat" and any("no site secret" in d for d in j.defects)


def test_expiry_is_judged_at_the_time_the_frame_was_received():
    from datetime import datetime, timezone

    u = User(id="u1", expires=1000, signature=sign("k", "u1", "1000"))
    assert verify_user(u, "k", datetime.fromtimestamp(999, timezone.utc))[0] == "id"
    assert verify_user(u, "k", datetime.fromtimestamp(1001, timezone.utc))[0] == "none"


def test_files_are_type_checked_by_their_bytes():
    i = one("synthetic-image.json")
    assert [(a.name, a.content_type, a.size) for a in i.attachments] == [("shot.png", "image/png", 32)]
    assert any("files[1]" in d for d in i.defects)


def test_conversation_end_is_an_event_that_solves_the_ticket():
    i = one("synthetic-conversation-end.json")
    assert i.kind == "event" and i.raw_type == "conversation_end"
    assert i.meta["ticket_status"] == "solved"


@pytest.mark.parametrize("raw", [b'{"hello": "world"}', b"not json", b'{"v":2,"type":"message","site":"s","visitor":"v"}',
                                 b'{"v":1,"type":"message","site":"a b","visitor":"v"}'])
def test_not_a_frame_is_refused(raw):
    with pytest.raises(PayloadRejected):
        parse(raw, {})


def test_cli_parses_recorded_frames_and_refuses_junk():
    files = sorted(str(p) for p in FIX.glob("synthetic-*.json") if "not-a-frame" not in p.name)
    out = subprocess.run([OMNIGATE, "parse", "webchat", *files, "--context", str(FIX / "context-synthetic.json")],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == len(files)
    assert {json.loads(line)["channel"] for line in out} == {"webchat"}
    bad = subprocess.run([OMNIGATE, "parse", "webchat", str(FIX / "synthetic-not-a-frame.json")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "error: not a webchat frame" in bad.stderr
    listed = subprocess.run([OMNIGATE, "parse", "--list"], capture_output=True, text=True, check=True).stdout.split()
    assert "webchat" in listed
