"""The ``email`` channel's configuration, validated strictly.

``ctx.config`` is the ``email`` section of the gateway config with secrets
already resolved. It is admin-written, so unknown keys are errors (a typo
must not silently disable a mailbox); any problem becomes
:class:`connectors.base.Fatal` with a message naming the key.

Three optional parts: ``smtp`` (inbound server: the gateway as MX or relay
target), ``imap`` (mailboxes to watch, by account name), ``relay`` (where
replies go out).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any, Literal

import msgspec

from connectors.base import Fatal

_ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


class SmtpSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    listen: str = "127.0.0.1:2525"
    domains: list[str] = []
    mailboxes: dict[str, str] = {}  # account name → address
    max_bytes: int = 26_214_400
    tls_cert: str | None = None
    tls_key: str | None = None
    hostname: str | None = None  # the name in the banner/EHLO reply (default: the host's FQDN)
    max_recipients: int = 100  # accepted RCPTs per message; more get 452 (RFC 5321 4.5.3.1.8)
    max_refused_recipients: int = 20  # refused RCPTs per session before 421 and close (address probing)


class ImapSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    host: str
    user: str
    password: str
    port: int | None = None  # 993 with ssl, 143 without
    ssl: bool = True
    folder: str = "INBOX"
    after: str = "seen"  # "seen" | "move:<folder>" | "leave"
    poll_interval: float = 60.0  # seconds between polls when the server has no IDLE
    idle_refresh: float = 1500.0  # re-issue IDLE before servers drop it (RFC 2177: 29 min)
    timeout: float = 30.0  # seconds for one IMAP command


class RelaySettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, rename={"from_": "from"}):
    host: str
    from_: str
    port: int | None = None  # 587 starttls, 465 tls, 25 none
    user: str | None = None
    password: str | None = None
    security: Literal["starttls", "tls", "none"] = "starttls"
    ca_file: str | None = None  # trust this CA (a private relay) instead of the system store
    timeout: float = 30.0


class EmailSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    smtp: SmtpSettings | None = None
    imap: dict[str, ImapSettings] = {}
    relay: RelaySettings | None = None
    auto_replies_per_hour: int = 3  # per recipient address: the connector's loop breaker
    # RFC 3834 auto-replies, decided when the inbound's envelope is known (gateway/autoreply.py):
    auto_reply_window: float = 86400.0  # at most one auto-reply per address in this many seconds
    auto_replies_global_per_hour: int = 200  # all addresses together


@dataclass(frozen=True, slots=True)
class AfterAction:
    """What to do with a message on the server once it is in the journal."""

    kind: Literal["seen", "move", "leave"]
    folder: str | None = None  # for "move"


def after_action(value: str) -> AfterAction:
    if value in ("seen", "leave"):
        return AfterAction(value)  # type: ignore[arg-type]
    kind, sep, folder = value.partition(":")
    if kind == "move" and sep and folder.strip():
        return AfterAction("move", folder.strip())
    raise ValueError(f"after must be 'seen', 'leave' or 'move:<folder>', got {value!r}")


def host_port(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:2525"`` or ``"[::1]:2525"`` → host and port."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen must be HOST:PORT, got {listen!r}")
    return host, int(port)


def address_of(value: str) -> str:
    """The lower-cased addr-spec of ``"Name <a@b>"`` or ``"a@b"``."""
    addr = parseaddr(value)[1].strip().lower()
    local, at, domain = addr.rpartition("@")
    if not (local and at and domain and "." in domain):
        raise ValueError(f"{value!r} is not an email address")
    return addr


def _check_smtp(smtp: SmtpSettings) -> None:
    host_port(smtp.listen)
    if smtp.max_bytes <= 0:
        raise ValueError("smtp.max_bytes must be positive")
    if (smtp.tls_cert is None) != (smtp.tls_key is None):
        raise ValueError("smtp.tls_cert and smtp.tls_key go together")
    if not smtp.mailboxes:
        raise ValueError("smtp.mailboxes is empty: no recipient would be accepted")
    domains = {d.lower() for d in smtp.domains}
    seen: dict[str, str] = {}
    for name, value in smtp.mailboxes.items():
        if not _ACCOUNT.match(name):
            raise ValueError(f"smtp.mailboxes: account name {name!r} must match {_ACCOUNT.pattern}")
        addr = address_of(value)
        if addr in seen:
            raise ValueError(f"smtp.mailboxes: {addr} is given to both {seen[addr]!r} and {name!r}")
        seen[addr] = name
        if domains and addr.rpartition("@")[2] not in domains:
            raise ValueError(f"smtp.mailboxes.{name}: {addr} is not in smtp.domains")


def _check_imap(name: str, imap: ImapSettings) -> None:
    if not _ACCOUNT.match(name):
        raise ValueError(f"imap: account name {name!r} must match {_ACCOUNT.pattern}")
    try:
        after_action(imap.after)
    except ValueError as exc:
        raise ValueError(f"imap.{name}.{exc}") from None
    for key in ("poll_interval", "idle_refresh", "timeout"):
        if getattr(imap, key) <= 0:
            raise ValueError(f"imap.{name}.{key} must be positive")


def _check_relay(relay: RelaySettings) -> None:
    address_of(relay.from_)
    if (relay.user is None) != (relay.password is None):
        raise ValueError("relay.user and relay.password go together")


def load_settings(config: Mapping[str, Any]) -> EmailSettings:
    """Validate the ``email`` section; raise :class:`Fatal` saying what is wrong."""
    try:
        # strict=False: values from OMNIGATE_EMAIL__… environment variables are strings
        settings = msgspec.convert(dict(config), EmailSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise Fatal(f"email config: {exc}") from None
    try:
        if settings.smtp is not None:
            _check_smtp(settings.smtp)
        for name, imap in settings.imap.items():
            _check_imap(name, imap)
        if settings.relay is not None:
            _check_relay(settings.relay)
        if settings.auto_replies_per_hour < 0:
            raise ValueError("auto_replies_per_hour must be >= 0")
        if settings.auto_reply_window < 0 or settings.auto_replies_global_per_hour < 0:
            raise ValueError("auto_reply_window and auto_replies_global_per_hour must be >= 0")
        if settings.smtp is not None and (settings.smtp.max_recipients < 1 or settings.smtp.max_refused_recipients < 1):
            raise ValueError("smtp.max_recipients and smtp.max_refused_recipients must be >= 1")
    except ValueError as exc:
        raise Fatal(f"email config: {exc}") from None
    return settings
