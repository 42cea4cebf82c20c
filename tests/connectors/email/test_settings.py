"""The ``email`` section is admin-written: every mistake stops the connector
with a message that names the key (pure tests, no server)."""

from __future__ import annotations

import asyncio

import pytest

from connectors.base import Fatal
from connectors.email.client import EmailConnector
from connectors.email.settings import AfterAction, after_action, host_port, load_settings
from tests.connectors.email.conftest import MemoryContext

GOOD = {
    "smtp": {"listen": "127.0.0.1:2525", "domains": ["example.com"], "mailboxes": {"support": "support@example.com"},
             "max_bytes": 26214400},
    "imap": {"sales": {"host": "imap.example.com", "user": "sales", "password": "pw", "after": "move:Processed"}},
    "relay": {"host": "smtp.example.com", "port": 587, "user": "gw", "password": "pw", "security": "starttls",
              "from": "Support <support@example.com>"},
}


def test_a_full_config_loads():
    s = load_settings(GOOD)
    assert s.smtp is not None and s.smtp.mailboxes == {"support": "support@example.com"}
    assert s.imap["sales"].folder == "INBOX" and s.imap["sales"].ssl
    assert s.relay is not None and s.relay.from_ == "Support <support@example.com>"


def test_environment_strings_are_converted():
    s = load_settings({"relay": {"host": "h", "from": "a@example.com", "port": "2525", "timeout": "5"}})
    assert s.relay is not None and (s.relay.port, s.relay.timeout) == (2525, 5.0)


@pytest.mark.parametrize(("patch", "message"), [
    ({"smtp": {**GOOD["smtp"], "max_size": 1}}, "unknown field `max_size`"),
    ({"pop3": {}}, "unknown field `pop3`"),
    ({"imap": {"sales": {"host": "h", "user": "u"}}}, "missing required field `password`"),
    ({"smtp": {**GOOD["smtp"], "listen": "2525"}}, "listen must be HOST:PORT"),
    ({"smtp": {**GOOD["smtp"], "mailboxes": {"support": "support@elsewhere.org"}}}, "support@elsewhere.org is not in smtp.domains"),
    ({"smtp": {**GOOD["smtp"], "mailboxes": {}}}, "smtp.mailboxes is empty"),
    ({"smtp": {**GOOD["smtp"], "mailboxes": {"a": "x@example.com", "b": "X@example.com"}}}, "given to both 'a' and 'b'"),
    ({"smtp": {**GOOD["smtp"], "mailboxes": {"bad name": "x@example.com"}}}, "account name 'bad name'"),
    ({"smtp": {**GOOD["smtp"], "tls_cert": "/c.pem"}}, "tls_cert and smtp.tls_key go together"),
    ({"imap": {"sales": {**GOOD["imap"]["sales"], "after": "delete"}}}, "imap.sales.after must be 'seen', 'leave' or 'move:<folder>'"),
    ({"imap": {"sales": {**GOOD["imap"]["sales"], "poll_interval": 0}}}, "imap.sales.poll_interval must be positive"),
    ({"relay": {**GOOD["relay"], "security": "ssl"}}, "Invalid enum value 'ssl' - at `$.relay.security`"),
    ({"relay": {**GOOD["relay"], "from": "support"}}, "'support' is not an email address"),
    ({"relay": {**GOOD["relay"], "password": None}}, "relay.user and relay.password go together"),
])
def test_mistakes_are_fatal_and_specific(patch: dict, message: str):
    with pytest.raises(Fatal) as exc:
        load_settings({**GOOD, **patch})
    assert str(exc.value).startswith("email config: ")
    assert message in str(exc.value)


def test_the_connector_refuses_bad_config_at_construction():
    with pytest.raises(Fatal, match="unknown field `smpt`"):
        EmailConnector(MemoryContext({"smpt": {}}))


def test_unreadable_relay_ca_is_fatal(tmp_path):
    with pytest.raises(Fatal, match="relay.ca_file cannot be loaded"):
        EmailConnector(MemoryContext({"relay": {**GOOD["relay"], "ca_file": str(tmp_path / "missing.pem")}}))


def test_unreadable_smtp_certificate_is_fatal(tmp_path):
    from connectors.email.smtp_server import tls_context

    smtp = load_settings({"smtp": {**GOOD["smtp"], "tls_cert": str(tmp_path / "c.pem"), "tls_key": str(tmp_path / "k.pem")}}).smtp
    assert smtp is not None
    with pytest.raises(Fatal, match="smtp.tls_cert/tls_key cannot be loaded"):
        tls_context(smtp)


@pytest.mark.parametrize(("value", "expected"), [
    ("seen", AfterAction("seen")),
    ("leave", AfterAction("leave")),
    ("move:Processed", AfterAction("move", "Processed")),
    ("move: Archive/2024 ", AfterAction("move", "Archive/2024")),
])
def test_after_actions(value: str, expected: AfterAction):
    assert after_action(value) == expected


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:2525", ("127.0.0.1", 2525)),
    ("[::1]:25", ("::1", 25)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_listen_addresses(listen: str, expected: tuple[str, int]):
    assert host_port(listen) == expected


async def test_nothing_configured_runs_nothing():
    ctx = MemoryContext({})
    await asyncio.wait_for(EmailConnector(ctx).run(), timeout=5)  # returns at once instead of looping
    assert ctx.journal == []
