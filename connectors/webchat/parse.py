"""The webchat parser: one journaled widget frame → one Inbound.

The connector journals each visitor message as a JSON *envelope*: the
widget's ``message`` frame (``cid``, ``text``, ``files``) plus what the
server knows about the socket it came on (``site``, ``visitor``, the signed
``user`` as the page gave it, the pre-chat ``profile``, the ``page``), and
``received_at`` (the server's clock at the append). The frame protocol is in
the README ("Webchat frame protocol"). Parsing is pure: the signed identity
is checked again here with the site's ``secret`` from the context, against
``received_at`` (so a replay parses exactly like the live call).

Identities:

- anonymous visitor: ``webchat`` ``<site>:<visitor id>``;
- a signed logged-in user (HMAC-SHA256 of ``"{id}.{expires}"`` with the
  site secret, CONTRACTS.md): ``external`` ``<site>:<user id>``, and the
  email/phone linked (``meta.email``/``meta.phone``) only when the signature
  covers them (``"{id}.{expires}.{email}.{phone}"``);
- an email or phone the visitor merely typed (pre-chat form, an unsigned
  claim) is kept as ``meta.claimed_email``/``claimed_phone``: recorded on the
  timeline, never linked.

``type: "end"`` envelopes (a conversation closed after inactivity) become an
``event`` Inbound with ``meta.ticket_status = "solved"``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from datetime import datetime
from typing import Any, Mapping

import msgspec

from connectors.base import PayloadRejected
from routing.model import Attachment, Inbound, Sender

#: Visitor ids, client message ids, site names: what the widget makes.
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
#: File types the widget may upload, by their magic bytes (never by the claimed type).
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
)
MAX_TEXT_CHARS = 4000
MAX_FILES = 5


class File(msgspec.Struct):
    name: str
    content_type: str
    data_base64: str


class User(msgspec.Struct):
    """``window.omnigateUser`` as the page gave it (not yet trusted)."""

    id: str
    expires: int | str
    signature: str
    name: str | None = None
    email: str | None = None
    phone: str | None = None


class Profile(msgspec.Struct):
    """What the visitor typed into the pre-chat or offline form (unverified)."""

    name: str | None = None
    email: str | None = None
    phone: str | None = None


class Page(msgspec.Struct):
    url: str | None = None
    title: str | None = None


class Envelope(msgspec.Struct):
    v: int
    type: str
    site: str
    visitor: str
    cid: str = ""
    text: str = ""
    files: list[File] = msgspec.field(default_factory=list)
    user: User | None = None
    profile: Profile | None = None
    page: Page | None = None
    lang: str | None = None
    form: str | None = None  # "offline": left through the offline form
    #: ``end`` only (written by the server, never by a widget): whose conversation ended
    conversation: str | None = None
    received_at: datetime | None = None


_decoder = msgspec.json.Decoder(Envelope)


def sniff(data: bytes) -> str | None:
    """The content type the bytes really are (of the allowed ones), or None."""
    for magic, ctype in MAGIC:
        if data.startswith(magic):
            return ctype
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def sign(secret: str, *parts: str) -> str:
    """Lowercase hex HMAC-SHA256 of the parts joined by dots (CONTRACTS.md)."""
    return hmac.new(secret.encode(), ".".join(parts).encode(), hashlib.sha256).hexdigest()


def verify_user(user: User, secret: str | None, now: datetime | None) -> tuple[str, str | None]:
    """How far a signed user is to be believed: ``("full", None)`` (id, email
    and phone signed), ``("id", None)`` (the id only), or ``("none", reason)``."""
    if not secret:
        return "none", "no site secret to check the signed user with"
    if not ID_RE.match(user.id.replace(".", "_").replace("@", "_")) or len(user.id) > 128:
        return "none", "user.id has characters outside [A-Za-z0-9_.@-]"
    expires = str(user.expires)
    if not expires.isascii() or not expires.isdigit() or len(expires) > 12:
        return "none", "user.expires is not Unix seconds"
    if now is not None and int(expires) < now.timestamp():
        return "none", "the signed user has expired"
    sig = user.signature.strip().lower()
    full = sign(secret, user.id, expires, user.email or "", user.phone or "")
    if hmac.compare_digest(sig.encode(), full.encode()):
        return "full", None
    if hmac.compare_digest(sig.encode(), sign(secret, user.id, expires).encode()):
        return "id", None
    return "none", "the signature does not match"


def decode(raw: bytes) -> Envelope:
    try:
        env = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise PayloadRejected(f"not a webchat frame: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise PayloadRejected(f"not a webchat frame (JSON): {exc}") from None
    except RecursionError:  # {"x":{"x":…}} thousands deep: msgspec's depth guard
        raise PayloadRejected("not a webchat frame: JSON nested too deeply") from None
    if env.v != 1:
        raise PayloadRejected(f"unknown webchat frame version {env.v}")
    if not ID_RE.match(env.site):
        raise PayloadRejected("site must match [A-Za-z0-9_-]{1,64}")
    if not ID_RE.match(env.visitor):
        raise PayloadRejected("visitor must match [A-Za-z0-9_-]{1,64}")
    return env


def parse(raw: bytes, context: Mapping[str, Any]) -> list[Inbound]:
    env = decode(raw)
    defects: list[str] = []
    meta: dict[str, str] = {"visitor": env.visitor}
    sender = Sender("webchat", f"{env.site}:{env.visitor}")
    name = None
    if env.user is not None:
        trust, why = verify_user(env.user, context.get("secret"), env.received_at)
        if trust == "none":
            defects.append(f"signed user {env.user.id!r} not believed: {why}")
            meta["claimed_user"] = env.user.id
            for k in ("email", "phone"):
                if getattr(env.user, k):
                    meta[f"claimed_{k}"] = getattr(env.user, k)
        else:
            sender = Sender("external", f"{env.site}:{env.user.id}")
            name = env.user.name
            for k in ("email", "phone"):
                value = getattr(env.user, k)
                if value:
                    meta[k if trust == "full" else f"claimed_{k}"] = value
    if env.profile is not None:
        name = name or env.profile.name
        for k in ("email", "phone"):
            value = getattr(env.profile, k)
            if value and meta.get(k) != value:
                claimed = meta.get(f"claimed_{k}")
                meta[f"claimed_{k}"] = value if not claimed or claimed == value else f"{claimed}, {value}"
    sender = Sender(sender.kind, sender.value, (name or "").strip()[:200] or None)
    if env.page is not None and env.page.url:
        meta["page_url"] = env.page.url[:2000]
        if env.page.title:
            meta["page_title"] = env.page.title[:300]
    if env.form:
        meta["form"] = env.form
    if env.lang:
        meta["lang"] = env.lang[:20]
    if env.type == "end":
        kind, _, value = (env.conversation or "").partition(":")
        if kind in ("webchat", "external") and value.startswith(f"{env.site}:"):
            sender = Sender(kind, value, sender.name)
        return [Inbound(channel="webchat", account=env.site, external_id=f"{env.visitor}:end:{env.cid}",
                        kind="event", sender=sender, raw_type="conversation_end",
                        text="the conversation ended after inactivity", sent_at=env.received_at,
                        meta={**meta, "ticket_status": "solved"}, defects=defects)]
    if env.type != "message":
        return [Inbound(channel="webchat", account=env.site, external_id=f"{env.visitor}:{env.type}:{env.cid}",
                        kind="event", sender=sender, raw_type=env.type, sent_at=env.received_at,
                        meta=meta, defects=defects)]
    if not ID_RE.match(env.cid):
        raise PayloadRejected("cid (the client message id) must match [A-Za-z0-9_-]{1,64}")
    text = env.text
    if len(text) > MAX_TEXT_CHARS * 4:
        raise PayloadRejected(f"text longer than {MAX_TEXT_CHARS * 4} characters")
    attachments = []
    for n, f in enumerate(env.files[:MAX_FILES]):
        try:
            data = base64.b64decode(f.data_base64, validate=True)
        except (binascii.Error, ValueError):
            defects.append(f"files[{n}]: not base64, dropped")
            continue
        real = sniff(data)
        if real is None:
            defects.append(f"files[{n}]: not an allowed file type, dropped")
            continue
        attachments.append(Attachment(name=f.name[:200] or None, content_type=real, size=len(data),
                                      sha256=hashlib.sha256(data).hexdigest(), data=data))
    if len(env.files) > MAX_FILES:
        defects.append(f"more than {MAX_FILES} files: the rest dropped")
    return [Inbound(channel="webchat", account=env.site, external_id=f"{env.visitor}:{env.cid}", kind="message",
                    sender=sender, text=text, attachments=attachments, sent_at=env.received_at,
                    language=env.lang, meta=meta, defects=defects)]

