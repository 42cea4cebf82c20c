"""The generic API channel's parser: the JSON body of ``POST /channels/api/messages``.

The body shape is fixed by CONTRACTS.md. Validation errors name the field
at fault (``$.sender.kind``) so the HTTP handler can answer 400 with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from datetime import datetime
from typing import Any, Mapping

import msgspec

from connectors.base import PayloadRejected
from routing.identity import normalize as normalize_identity
from routing.model import IDENTITY_KINDS, Attachment, Inbound, Sender, ThreadHints

MAX_TEXT_CHARS = 256 * 1024
#: The idempotency key is an id, not a document (Message-IDs stay well under it).
MAX_EXTERNAL_ID_CHARS = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _Sender(msgspec.Struct, forbid_unknown_fields=True):
    kind: str
    value: str
    name: str | None = None


class Upload(msgspec.Struct, forbid_unknown_fields=True):
    """A file given inline in a JSON body (a message or a reply)."""

    name: str
    content_type: str
    data_base64: str


class ApiMessage(msgspec.Struct, forbid_unknown_fields=True):
    external_id: str
    sender: _Sender
    text: str
    subject: str | None = None
    attachments: list[Upload] = []
    sent_at: datetime | None = None
    ticket_ref: str | None = None
    account: str | None = None


_decoder = msgspec.json.Decoder(ApiMessage)


class InvalidMessage(PayloadRejected):
    """The body is not a valid API message; ``field`` is the JSON path at fault.

    ``status``: 400 for a body that is not the contract's shape, 422 for a
    well-formed body whose content cannot be used (a phone of ``"abc"``)."""

    def __init__(self, reason: str, field: str | None = None, status: int = 400):
        super().__init__(reason)
        self.field = field
        self.status = status


def _field_of(text: str) -> str | None:
    if " - at `" in text:
        return text.rsplit(" - at `", 1)[1].rstrip("`")
    m = re.search(r"(?:missing required field|unknown field) `([^`]+)`", text)
    return f"$.{m.group(1)}" if m else "$"  # msgspec names no path for the top level


def decode(raw: bytes) -> ApiMessage:
    """Validate a request body; raises :class:`InvalidMessage` naming the field."""
    try:
        msg = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidMessage(str(exc), _field_of(str(exc))) from None
    except msgspec.DecodeError as exc:  # the body as a whole is at fault: its JSON path is "$"
        raise InvalidMessage(f"malformed JSON: {exc}", "$") from None
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"the body is not UTF-8: {exc.reason} at byte {exc.start}", "$") from None
    except RecursionError:
        raise InvalidMessage("JSON nested too deeply", "$") from None
    if not msg.external_id.strip():
        raise InvalidMessage("external_id must not be empty", "$.external_id")
    if len(msg.external_id) > MAX_EXTERNAL_ID_CHARS:
        raise InvalidMessage(f"external_id longer than {MAX_EXTERNAL_ID_CHARS} characters", "$.external_id")
    if _CONTROL.search(msg.external_id):
        raise InvalidMessage("external_id must not hold control characters", "$.external_id")
    if msg.sender.kind not in IDENTITY_KINDS:
        raise InvalidMessage(
            f"unknown sender kind {msg.sender.kind!r}; one of {', '.join(sorted(IDENTITY_KINDS))}", "$.sender.kind"
        )
    if not msg.sender.value.strip():
        raise InvalidMessage("sender.value must not be empty", "$.sender.value", 422)
    try:  # the same check the pipeline makes: no unusable identity is ever journaled
        normalize_identity(msg.sender.kind, msg.sender.value)
    except ValueError as exc:
        raise InvalidMessage(f"sender.value is not a usable {msg.sender.kind}: {exc}", "$.sender.value", 422) from None
    if len(msg.text) > MAX_TEXT_CHARS:
        raise InvalidMessage(f"text longer than {MAX_TEXT_CHARS} characters", "$.text")
    if msg.sent_at is not None and msg.sent_at.tzinfo is None:
        raise InvalidMessage("sent_at needs a UTC offset (ISO 8601, e.g. 2026-01-02T03:04:05+08:00)", "$.sent_at")
    return msg


#: a JSON string token (escapes included) and the colon after it if it is a key: scanned left to
#: right, a valid body's quotes all open or close a token, so each match is one whole string
_STRING_TOKEN = re.compile(rb'"([^"\\]*(?:\\.[^"\\]*)*)"(\s*:)?', re.S)


class _Pairs(list):
    """A JSON object as its (key, value) pairs, in order, duplicates kept."""

    __slots__ = ()


def duplicate_key(raw: bytes) -> str | None:
    """The JSON path (``$.sender.kind``) of the first key an object of ``raw``
    gives twice, or None. JSON leaves a repeated key's meaning open (msgspec
    keeps the last, other readers the first), so an intake refuses it rather
    than journal a body whose readers may disagree. It says nothing about
    malformed JSON (None): the strict decoder that runs next says why.

    Most bodies name no key twice anywhere, whatever the object: the string
    tokens followed by a colon (the keys, found by one C-speed scan) settle
    that in ~70 % of a full parse's time; a body where some key recurs (in
    another object, say) or is written with an escape is parsed in full."""
    keys = [key for key, colon in _STRING_TOKEN.findall(raw) if colon]
    if len(set(keys)) == len(keys) and b"\\" not in b"".join(keys):
        return None
    try:
        return _first_duplicate(json.loads(raw, object_pairs_hook=_Pairs), "$")
    except (ValueError, RecursionError):
        return None


def _first_duplicate(node: Any, path: str) -> str | None:
    if isinstance(node, _Pairs):
        seen: set[str] = set()
        for key, value in node:
            here = f"{path}.{key}"
            if key in seen:
                return here
            seen.add(key)
            if isinstance(value, list) and (found := _first_duplicate(value, here)):
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, list) and (found := _first_duplicate(value, f"{path}[{i}]")):
                return found
    return None


def decode_uploads(uploads: list[Upload]) -> list[Attachment]:
    """Inline files → Attachments with their bytes; all are decoded before any
    is used, and a bad one raises InvalidMessage naming its field."""
    out = []
    for i, up in enumerate(uploads):
        try:
            data = base64.b64decode(up.data_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidMessage("data_base64 is not valid base64", f"$.attachments[{i}].data_base64") from None
        out.append(Attachment(name=up.name, content_type=up.content_type, size=len(data),
                              sha256=hashlib.sha256(data).hexdigest(), data=data))
    return out


def parse(raw: bytes, context: Mapping[str, Any]) -> list[Inbound]:
    msg = decode(raw)
    attachments = decode_uploads(msg.attachments)
    value = msg.sender.value.strip()
    if msg.sender.kind == "email":
        value = value.lower()
    return [
        Inbound(
            channel="api",
            account=msg.account or str(context.get("account") or "api"),
            external_id=msg.external_id,
            kind="message",
            sender=Sender(msg.sender.kind, value, msg.sender.name),
            subject=msg.subject,
            text=msg.text,
            attachments=attachments,
            thread=ThreadHints(ticket_ref=msg.ticket_ref),
            sent_at=msg.sent_at,
        )
    ]
