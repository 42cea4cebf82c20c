"""Machine-sent mail: bounces (DSNs), auto-replies and bulk mail — no loops.

:func:`classify` says whether a mail must never be answered automatically
(``"bounce"``, ``"auto_reply"``, ``"bulk"``) and which header or pattern
said so (the reason goes to ``meta["auto_reason"]``, so an agent can ask
"why was this not auto-answered?"); a report of another type — a read
receipt (RFC 8098), an abuse report (RFC 5965) — is an ``"auto_reply"``.
:func:`delivery_status` and
:func:`original_message_id` read the facts of a DSN (RFC 3464) from its
``message/delivery-status`` part and the returned original headers.
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import HeaderParser
from typing import Mapping

_DAEMONS = frozenset({"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "mdaemon"})
_FAILURE_SUBJECT = re.compile(
    r"undeliver|delivery (?:status|failure|failed|notification|problem|has failed)|returned mail|"
    r"mail delivery failed|failure notice|could not send|non[- ]?delivery|not delivered|"
    r"(?:could|can) ?not be delivered|fail(?:ed|ure) delivery|delayed mail|\bmail failed|"
    r"mail failure|message \S+ delayed|error sending your mail|bounce notification|"
    r"nicht zustellbar|unzustellbar|übermittlungsstatus|fehlgeschlagen|non remis|"
    r"退信|投递失败|无法投递|未能送达|發送失敗|配信エラー|配送エラー|配信できません",
    re.I,
)
_AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic)?[ -]?reply|autoreply|auto:|out of office|abwesenheitsnotiz|"
    r"automatische antwort|réponse automatique|自动回复|自動回覆|自動応答)",
    re.I,
)
_BULK_PRECEDENCE = frozenset({"bulk", "junk", "list"})
_STATUS_IN_TEXT = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_MESSAGE_ID_IN_TEXT = re.compile(r"^\s*Message-ID:\s*<([^<>\s]+)>", re.I | re.M)

Headers = Mapping[str, list[str]]


def _first(headers: Headers, name: str) -> str:
    values = headers.get(name)
    return values[0].strip().lower() if values else ""


def classify(
    headers: Headers, content_type: str, report_type: str | None, sender: str, subject: str,
    delivery_status: bool = False, *, null_sender: bool = False,
) -> tuple[str | None, str | None]:
    """``(auto, reason)``: the kind of machine-sent mail this is, or ``(None, None)``.

    ``delivery_status``: the mail has a ``message/delivery-status`` part of its
    own — a DSN (RFC 3464) whatever its wrapper says (a multipart/report with
    no ``report-type``, a multipart/mixed). ``null_sender``: its envelope
    sender is null (``Return-Path: <>``), which RFC 5321 section 4.5.5 keeps
    for notifications: with a delivery-failure subject it is a bounce
    whoever the From names."""
    if content_type == "multipart/report" and (report_type or "").lower() == "delivery-status":
        return "bounce", "multipart/report; report-type=delivery-status"
    if content_type == "multipart/report" and report_type:
        # a read receipt (RFC 8098 disposition-notification), an abuse report
        # (RFC 5965 feedback-report), a TLS report …: machine-sent, never answered
        return "auto_reply", f"multipart/report; report-type={report_type.lower()}"
    if headers.get("x-failed-recipients"):
        return "bounce", "X-Failed-Recipients"
    if sender.partition("@")[0] in _DAEMONS and _FAILURE_SUBJECT.search(subject):
        return "bounce", f"{sender.partition('@')[0]} sender with a delivery-failure subject"
    if delivery_status:
        return "bounce", "message/delivery-status part"
    if null_sender and _FAILURE_SUBJECT.search(subject):
        return "bounce", "null envelope sender with a delivery-failure subject"
    auto_submitted = _first(headers, "auto-submitted").split(";")[0].strip()
    if auto_submitted and auto_submitted != "no":
        return "auto_reply", f"Auto-Submitted: {auto_submitted}"
    for name in ("x-autoreply", "x-autorespond", "x-auto-response-suppress"):
        if headers.get(name):
            return "auto_reply", name
    precedence = _first(headers, "precedence")
    if precedence == "auto_reply":
        return "auto_reply", "Precedence: auto_reply"
    if _AUTO_REPLY_SUBJECT.match(subject):
        return "auto_reply", "auto-reply subject"
    if precedence in _BULK_PRECEDENCE:
        return "bulk", f"Precedence: {precedence}"
    for name in ("list-id", "list-unsubscribe"):
        if headers.get(name):
            return "bulk", name
    return None, None


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = payload if isinstance(payload, str) else ""
    return [HeaderParser().parsestr(block) for block in re.split(r"\r?\n\s*\r?\n", text) if block.strip()]


def _field(block: Message, name: str) -> str | None:
    value = block.get(name)
    if value is None:
        return None
    value = " ".join(str(value).split())
    # "rfc822; user@example.com" → the address; "5.7.1 (text)" stays as it is.
    return value.split(";", 1)[1].strip() if ";" in value and name.endswith("recipient") else value


def delivery_status(part: Message) -> dict[str, str]:
    """``dsn_status``, ``dsn_action``, ``dsn_recipient`` of the first recipient block that has them."""
    facts: dict[str, str] = {}
    for block in _status_blocks(part):
        for key, name in (
            ("dsn_status", "status"),
            ("dsn_action", "action"),
            ("dsn_recipient", "final-recipient"),
            ("dsn_recipient", "original-recipient"),
        ):
            value = _field(block, name)
            if value and key not in facts:
                facts[key] = value.split()[0] if key == "dsn_status" else value
    return facts


def original_message_id(part: Message) -> str | None:
    """The Message-ID of the returned original (message/rfc822, */rfc822-headers)."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        headers: Message = payload[0]
    elif isinstance(payload, str):
        headers = HeaderParser().parsestr(payload)
    else:
        return None
    match = re.search(r"<([^<>\s]+)>", str(headers.get("message-id") or ""))
    return match.group(1) if match else None


def facts_from_text(text: str) -> dict[str, str]:
    """DSN facts of a plain-text bounce (no report part): status code and original Message-ID."""
    facts: dict[str, str] = {}
    match = _MESSAGE_ID_IN_TEXT.search(text)
    if match:
        facts["dsn_original_message_id"] = match.group(1)
    match = _STATUS_IN_TEXT.search(text)
    if match:
        facts["dsn_status"] = match.group(1)
    return facts
