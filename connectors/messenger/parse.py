"""Messenger and Instagram messaging webhooks: one body → its Inbounds.

Both platforms post the Graph "messaging" webhook: ``object`` is ``page``
(Messenger) or ``instagram``, each ``entry`` (``id`` = the Page or Instagram
professional account) holds ``messaging[]`` events (``standby[]`` when
another app has the thread, and older Instagram subscriptions send
``changes[]`` of field ``messages``). The Inbound's ``channel`` is the
platform (``messenger`` or ``instagram``), its ``account`` the entry id.

Identities are page-scoped (CONTRACTS.md): ``messenger`` ``<pageid>:<psid>``,
``instagram`` ``<igid>:<igsid>`` — a PSID means nothing outside its page. A
Chat Plugin guest (or a checkbox-plugin opt-in, whose ``optin`` event has
no sender but ``optin.user_ref``) has no PSID, only a ``user_ref``:
``<pageid>:user_ref:<ref>``, which ``send`` answers by ``recipient.user_ref``.

What each event becomes:

- ``message`` → a message (text, attachments referenced by their CDN URL
  until ``fetch_media`` downloads them, ``quick_reply.payload`` in
  ``meta["reply_id"]``, the ad or Shops product it was written from in
  ``meta["referral_…"]``, ``reply_to.mid`` as ``in_reply_to``, an Instagram
  story reply's ``reply_to.story`` as ``meta["story_id"]``/``["story_url"]``);
- ``message`` with ``is_echo`` → the page's own message: sent by omnigate
  (its ``metadata`` starts with ``omnigate:``, or it comes from the
  account's ``app_id`` in the context) it is only a delivery status
  of that reply; sent from the Page inbox or another app it is recorded as
  the agent's message (``meta["direction"] = "outbound"``), never as the
  customer's;
- ``message`` with ``is_deleted`` → an event that empties the original;
  ``message_edit`` → a message that ``edits`` the original;
- ``postback`` → the customer's choice: a message with the button's title
  as text (an event when it has no title), the payload in ``meta``;
- ``delivery`` (``mids``) and ``read`` → delivery statuses of our messages
  (raw_type ``status``), never customer messages;
- ``reaction`` and anything else → an event carrying the raw type; a
  ``policy_enforcement`` or ``app_roles`` event names no user and comes
  from the account (``external`` ``<channel>-account:<id>``);
- attachments that are no file (a shared link, a location, a template)
  give the message a readable text when it has none; a message that is
  only a ``fallback`` without payload (an unsupported share) is an event
  ``unsupported``, as ``is_unsupported``;
- a change of another field (Page ``feed``, Instagram ``comments`` and
  ``mentions`` …) → one event of raw_type = the field with the comment's
  text, never dropped.

Signature: as WhatsApp (``X-Hub-Signature-256`` with the app secret), checked
when the context has the request's ``headers`` and ``app_secret``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone, tzinfo
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from connectors.base import PayloadRejected
from connectors.webhooks import as_dict as _d
from connectors.webhooks import body_key as _body_key
from connectors.webhooks import decode_json, hub_signature_ok, verify_context
from connectors.webhooks import dicts as _dicts
from connectors.webhooks import epoch_ms as _time
from connectors.webhooks import id_str as _str
from routing.model import Attachment, Inbound, Sender, ThreadHints

OBJECTS = {"page": "messenger", "instagram": "instagram"}
SIGNATURE_HEADER = "X-Hub-Signature-256"
OWN_METADATA = "omnigate:"  # what send() puts in message.metadata, echoed back
#: Events about the Page (or Instagram account) itself, which name no user:
#: a policy warning or block, the app roles of the handover protocol.
ACCOUNT_EVENTS = frozenset({"policy_enforcement", "app_roles"})
ATTACHMENT_TYPES = {"image": "image/jpeg", "video": "video/mp4", "audio": "audio/mpeg", "file": "application/octet-stream",
                    "ig_reel": "video/mp4", "reel": "video/mp4", "story_mention": "image/jpeg", "animated_image_share": "image/gif",
                    "sticker": "image/png"}  # Messenger's stickers are PNG images


def decode(raw: bytes) -> dict[str, Any]:
    obj = decode_json(raw)
    if not isinstance(obj, dict):
        raise PayloadRejected(f"not a Messenger/Instagram webhook: JSON {type(obj).__name__}, expected an object")
    if not isinstance(obj.get("object"), str) or obj["object"] not in OBJECTS:
        raise PayloadRejected(f"not a Messenger/Instagram webhook: object is {obj.get('object')!r}, "
                              "expected 'page' or 'instagram'")
    if not isinstance(obj.get("entry"), list):
        raise PayloadRejected("not a Messenger/Instagram webhook: no entry list")
    return obj


def verify(raw: bytes, context: Mapping[str, Any]) -> None:
    verify_context(raw, context, signature_header=SIGNATURE_HEADER, secret_field="app_secret",
                   signature_ok=hub_signature_ok)


def events(obj: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(entry id, event) of every messaging event of the body, in order."""
    out = []
    for entry in _dicts(obj.get("entry")):
        eid = _str(entry.get("id")) or ""
        for ev in _dicts(entry.get("messaging")) + _dicts(entry.get("standby")):
            out.append((eid, ev))
        for change in _dicts(entry.get("changes")):
            if change.get("field") == "messages" and isinstance(change.get("value"), dict):
                out.append((eid, change["value"]))
    return out


def event_key(eid: str, ev: Mapping[str, Any]) -> str:
    """External id of one event: the message id where it has one, else a
    hash of the event (Meta redelivers the same JSON)."""
    msg = _d(ev.get("message"))
    mid = _str(msg.get("mid"))  # a number where a string belongs: its digits, like the parse's message id
    if mid:
        return mid if not msg.get("is_deleted") else f"{mid}:deleted"
    edit = _d(ev.get("message_edit"))
    if _str(edit.get("mid")):
        return f"{edit['mid']}:edit:{edit.get('num_edit', ev.get('timestamp'))}"
    canonical = json.dumps(ev, sort_keys=True, ensure_ascii=False).encode()
    kind = next((k for k in ev if k not in ("sender", "recipient", "timestamp")), "event")
    return f"{eid}:{kind}:{hashlib.sha256(canonical).hexdigest()[:32]}"


def body_key(obj: Mapping[str, Any], raw: bytes) -> str:
    return _body_key([event_key(eid, ev) for eid, ev in events(obj)], raw)


def _attachments(msg: Mapping[str, Any], meta: dict[str, str]) -> list[Attachment]:
    out = []
    # until August 2026 Meta sends a sticker twice, as a ``sticker`` and as an ``image`` with its sticker_id
    stickers = {_str(_d(a.get("payload")).get("sticker_id")) for a in _dicts(msg.get("attachments"))
                if a.get("type") == "sticker"} - {None}
    for n, a in enumerate(_dicts(msg.get("attachments"))):
        kind = _str(a.get("type")) or "file"
        payload = _d(a.get("payload"))
        url = _str(payload.get("url"))
        if kind == "location" or payload.get("coordinates"):
            coords = _d(payload.get("coordinates"))
            meta["latitude"], meta["longitude"] = str(coords.get("lat")), str(coords.get("long"))
            continue
        if _str(payload.get("sticker_id")):
            meta["sticker_id"] = _str(payload["sticker_id"]) or ""  # a number in Meta's JSON
            if kind != "sticker" and meta["sticker_id"] in stickers:
                continue
        if _str(payload.get("ig_post_media_id")):
            meta["ig_post_media_id"] = payload["ig_post_media_id"]
        retailer_ids = [_str(e.get("retailer_id")) for e in _dicts(_d(payload.get("product")).get("elements"))]
        if any(retailer_ids):
            meta["retailer_ids"] = ",".join(r for r in retailer_ids if r)
        if kind == "appointment_booking":
            for key in ("booking_id", "status", "start_time", "end_time", "timezone"):
                if _str(payload.get(key)):
                    meta[f"booking_{key.removeprefix('booking_')}"] = _str(payload[key]) or ""
        if kind in ("post", "ig_post") and _str(payload.get("id")):
            meta["post_id"] = _str(payload["id"]) or ""
        if kind in ("fallback", "template", "share", "post", "ig_post") or not url:
            meta[f"attachment_{n}"] = kind if not url else f"{kind} {url}"
            continue
        out.append(Attachment(name=_str(a.get("title")) or _str(payload.get("title")),
                              content_type=ATTACHMENT_TYPES.get(kind, "application/octet-stream"),
                              size=0, sha256="", url=url))
    return out


def _booking_text(booking: Mapping[str, Any]) -> str:
    """An appointment booking's status and time span (``start_time``/``end_time``:
    Unix seconds, shown in its IANA ``timezone`` when that is one)."""
    name = _str(booking.get("timezone")) or "UTC"
    try:
        zone: tzinfo = ZoneInfo(name)
    except (ValueError, OSError, ZoneInfoNotFoundError):  # "../x", "America" (a folder), unknown
        zone, name = timezone.utc, "UTC"
    when = []
    for key in ("start_time", "end_time"):
        value = booking.get(key)
        at = _time(value * 1000) if isinstance(value, int) and not isinstance(value, bool) else None
        if at is not None:
            when.append(at.astimezone(zone).strftime("%Y-%m-%d %H:%M"))
    span = f"{' – '.join(when)} ({name})" if when else ""
    return " ".join(p for p in (f"Appointment {_str(booking.get('status')) or 'booking'}:", span) if p).rstrip(":")


def _attachment_text(msg: Mapping[str, Any]) -> str:
    """A readable text for attachments that are no file: a shared link's
    title and URL (``fallback``, ``share``, a shared ``post`` or Instagram
    ``ig_post``), a location's coordinates, a template's element titles
    (a shared product's title and price), an appointment booking's status
    and time."""
    lines = []
    for a in _dicts(msg.get("attachments")):
        kind = _str(a.get("type")) or ""
        payload = _d(a.get("payload"))
        coords = _d(payload.get("coordinates"))
        if kind == "location" or coords:
            lines.append(f"📍 {coords.get('lat')}, {coords.get('long')}")
        elif kind in ("fallback", "share", "post", "ig_post"):
            title = _str(a.get("title")) or _str(payload.get("title"))
            line = " ".join(p for p in (title, _str(a.get("url")) or _str(payload.get("url"))) if p)
            if kind != "ig_post" or line not in lines:  # a post shared since Nov 2025 is also a ``share``
                lines.append(line)
        elif kind == "appointment_booking":
            lines.append(_booking_text(payload))
        elif kind == "template":
            lines += [_str(e.get("title")) or "" for e in _dicts(payload.get("elements"))]
            # a product the customer shared from the Page's shop: its title and price
            lines += [" — ".join(p for p in (_str(e.get("title")), _str(e.get("subtitle"))) if p)
                      for e in _dicts(_d(payload.get("product")).get("elements"))]
    return "\n".join(line for line in lines if line)


def _change_event(channel: str, eid: str, field: str, value: Mapping[str, Any], at: Any) -> Inbound:
    """A change of a field other than ``messages`` (a Page ``feed`` post or
    comment, Instagram ``comments`` and ``mentions`` …): one event carrying
    the field, the comment's text, and who wrote it when the change says —
    in the platform's app-scoped id space, not the PSID/IGSID of messaging,
    so it names its own ``<account>:<id>`` identity."""
    author = _d(value.get("from"))
    who = _str(author.get("id"))
    meta = {"field": field}
    for key, item in value.items():
        if (key not in ("text", "message") and isinstance(item, (str, int, float)) and not isinstance(item, bool)
                and len(str(item)) <= 256):
            meta[key] = str(item)
    if _str(author.get("username")) or _str(author.get("name")):
        meta["author"] = _str(author.get("username")) or _str(author.get("name")) or ""
    sender = (Sender(kind=channel, value=f"{eid}:{who}", name=meta.get("author")) if who
              else Sender(kind="external", value=f"{channel}-account:{eid}"))
    canonical = json.dumps(value, sort_keys=True, ensure_ascii=False).encode()
    key = _str(value.get("comment_id")) or _str(value.get("id")) or hashlib.sha256(canonical).hexdigest()[:32]
    if isinstance(at, int) and not isinstance(at, bool) and at < 10**11:
        at *= 1000  # changes webhooks give Unix seconds, messaging ones milliseconds
    return Inbound(channel=channel, account=eid, external_id=f"{eid}:{field}:{key}", kind="event", sender=sender,
                   text=_str(value.get("text")) or _str(value.get("message")) or "", sent_at=_time(at),
                   raw_type=field, meta=meta)


def _event_time(value: Any) -> datetime | None:
    """A messaging event's ``timestamp``: Unix milliseconds — or seconds, as an
    Instagram ``messages`` change can give it (Meta's field test sends
    ``"timestamp": "1527459824"``), which read as milliseconds fell in 1970."""
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return _time(n * 1000 if 0 < n < 10**11 else n)


def _status(channel: str, account: str, user: Sender, mid: str, status: str, ev: Mapping[str, Any],
            key: str) -> Inbound:
    meta = {"status_of": mid, "status": status}
    watermark = _str(_d(ev.get(status if status != "delivered" else "delivery")).get("watermark"))
    if watermark:
        meta["watermark"] = watermark
    return Inbound(channel=channel, account=account, external_id=key, kind="event", sender=user,
                   sent_at=_event_time(ev.get("timestamp")), raw_type="status", meta=meta)


def _party(party: Any) -> str | None:
    """A sender/recipient's id: the PSID/IGSID, else ``user_ref:<ref>`` — a
    Chat Plugin guest or a checkbox-plugin opt-in has only a ``user_ref``
    (each its own contact, never one shared "unknown")."""
    body = _d(party)
    ref = _str(body.get("user_ref"))
    return _str(body.get("id")) or (f"user_ref:{ref}" if ref else None)


def _event(channel: str, eid: str, ev: dict[str, Any], own_app: str | None) -> list[Inbound]:
    # a Checkbox Plugin opt-in has no sender at all: its user is only ``optin.user_ref``
    sender_id = _party(ev.get("sender")) or _party({"user_ref": _d(ev.get("optin")).get("user_ref")}) or "unknown"
    recipient_id = _party(ev.get("recipient")) or ""
    account = eid or recipient_id
    msg = _d(ev.get("message"))
    echo = bool(msg.get("is_echo"))
    customer = recipient_id if echo else sender_id
    user = Sender(kind=channel, value=f"{account}:{customer}")
    key = event_key(eid, ev)
    at = _event_time(ev.get("timestamp"))
    meta: dict[str, str] = {}
    if "delivery" in ev:
        given = _d(ev["delivery"]).get("mids")
        mids = [m for m in given if isinstance(m, str) and m] if isinstance(given, list) else []
        mids = mids or [""]  # a watermark only: nothing to match
        return [_status(channel, account, user, mid, "delivered", ev, f"{mid or key}:status:delivered")
                for mid in mids]
    if "read" in ev:
        mid = _str(_d(ev["read"]).get("mid")) or ""  # Instagram names the message; Messenger gives a watermark
        return [_status(channel, account, user, mid, "read", ev, f"{mid or key}:status:read")]
    inbound = Inbound(channel=channel, account=account, external_id=key, kind="message", sender=user, sent_at=at,
                      meta=meta)
    if msg:
        mid = _str(msg.get("mid")) or key
        reply_to = _d(msg.get("reply_to"))
        inbound.thread = ThreadHints(message_id=mid, in_reply_to=_str(reply_to.get("mid")))
        story = _d(reply_to.get("story"))
        for field in ("id", "url"):  # an Instagram story reply: which story
            if _str(story.get(field)):
                meta[f"story_{field}"] = story[field]
        inbound.raw_type = "message"
        own = (_str(msg.get("metadata")) or "").startswith(OWN_METADATA) or (
            own_app is not None and _str(msg.get("app_id")) == own_app)
        if echo and own:
            # our own reply coming back: only proof that it was sent
            return [_status(channel, account, user, mid, "sent", ev, f"{mid}:status:sent")]
        if msg.get("is_deleted"):
            inbound.kind, inbound.edits, inbound.raw_type = "event", mid, "message_deleted"
            meta["deleted"] = "true"
            return [inbound]
        inbound.text = _str(msg.get("text")) or _attachment_text(msg)
        inbound.attachments = _attachments(msg, meta)
        if _str(_d(msg.get("quick_reply")).get("payload")):
            meta["reply_id"] = msg["quick_reply"]["payload"]
        referral = _d(msg.get("referral"))  # written from an ad (Click-to-Messenger) or a Shops product page
        for field in ("ref", "ad_id", "source", "type"):
            if _str(referral.get(field)):
                meta[f"referral_{field}"] = _str(referral[field]) or ""
        if _str(_d(referral.get("product")).get("id")):
            meta["referral_product_id"] = _str(referral["product"]["id"]) or ""
        attachments = _dicts(msg.get("attachments"))
        # "for unsupported shares … a fallback with no payload might be sent": nothing to show
        empty_fallback = bool(attachments) and all(a.get("type") == "fallback" and not a.get("payload")
                                                   and not _str(a.get("url")) for a in attachments)
        if msg.get("is_unsupported") or (empty_fallback and not inbound.text and not inbound.attachments):
            inbound.kind, inbound.raw_type = "event", "unsupported"
        if echo:
            meta["direction"] = "outbound"
            app_id = _str(msg.get("app_id"))
            meta["agent"] = f"{channel}:app:{app_id}" if app_id else f"{channel}:page"
        return [inbound]
    if "message_edit" in ev:
        edit = _d(ev["message_edit"])
        inbound.text = _str(edit.get("text")) or ""
        inbound.edits = _str(edit.get("mid"))
        inbound.raw_type = "message_edit"
        return [inbound]
    if "postback" in ev:
        pb = _d(ev["postback"])
        payload = pb.get("payload")
        payload_s = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, sort_keys=True)
        meta["reply_id"] = payload_s
        if _str(_d(pb.get("referral")).get("ref")):
            meta["ref"] = pb["referral"]["ref"]
        inbound.raw_type = "postback"
        inbound.text = _str(pb.get("title")) or ""
        if not inbound.text:
            inbound.kind = "event"
        if _str(pb.get("mid")):
            inbound.thread = ThreadHints(message_id=_str(pb["mid"]))
        return [inbound]
    kind = next((k for k in ev if k not in ("sender", "recipient", "timestamp")), "unknown")
    inbound.kind, inbound.raw_type = "event", kind
    body = _d(ev.get(kind))
    for field in ("emoji", "action", "reaction", "ref", "source", "type", "ad_id", "notification_messages_status",
                  "new_owner_app_id", "previous_owner_app_id", "requested_owner_app_id"):
        if isinstance(body.get(field), (str, int)):
            meta[field] = str(body[field])
    if kind == "reaction" and _str(body.get("mid")):
        inbound.thread = ThreadHints(in_reply_to=_str(body["mid"]))
        meta["reacted_to"] = _str(body["mid"])
    if sender_id == "unknown" and kind in ACCOUNT_EVENTS:
        # the Page's own notice, as a change of another field: not a shared "<page>:unknown" contact
        inbound.sender = Sender(kind="external", value=f"{channel}-account:{account}")
    elif sender_id == "unknown":
        inbound.defects.append(f"{kind}: no sender to attribute it to")
    return [inbound]


def parse(raw: bytes, context: Mapping[str, Any]) -> list[Inbound]:
    obj = decode(raw)
    verify(raw, context)
    channel = OBJECTS[obj["object"]]
    out: list[Inbound] = []
    own_app = _str(context.get("app_id"))
    for eid, ev in events(obj):
        out += _event(channel, eid, ev, own_app)
    for entry in _dicts(obj.get("entry")):
        for change in _dicts(entry.get("changes")):
            field, value = _str(change.get("field")) or "unknown", change.get("value")
            if field != "messages" and isinstance(value, dict):
                out.append(_change_event(channel, _str(entry.get("id")) or "", field, value, entry.get("time")))
    return out
