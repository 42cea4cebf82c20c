"""LINE Messaging API's pure parser: one webhook body → an Inbound per event.

A body is ``{"destination": <bot user id>, "events": [...]}``; each event has
``type``, ``source`` (``user`` / ``group`` / ``room`` with ``userId``),
``timestamp`` (ms), ``webhookEventId`` and ``deliveryContext.isRedelivery``.

- The ``account`` is the channel id (``channel_id`` in the context, or the
  journal's account), else the ``destination``; the ``line`` identity is
  ``<channelid>:<userId>`` (a userId is per provider, the channel makes it
  unambiguous). In a group or room the reply goes to the group
  (``meta["chat_id"]``).
- ``message`` → a message: ``text``; ``image``/``video``/``audio``/``file``
  referencing the content by message id (``fetch_media`` downloads it from
  ``/v2/bot/message/{id}/content``; an ``external`` provider's URL is kept);
  ``location`` and ``sticker`` with a readable text; ``quotedMessageId`` as
  ``in_reply_to``.
- ``messageEdited`` → a message that ``edits`` the original; ``unsend`` → an
  event emptying it (``meta["deleted"]``).
- ``follow``/``unfollow`` → events setting ``meta["blocked"]``; ``postback``
  → an event with ``meta["data"]`` (its ``displayText``, when given, is the
  text); anything else → an event carrying the raw type, and what its own
  object says in meta (who joined or left a group, a membership's type, a
  beacon's, a LINE Things device's, an account link's result). A module channel's
  events about the account itself (``module`` attached/detached,
  ``botSuspended``, ``botResumed``) and a LINE notification message's
  ``delivery`` completion name no user: they come from the ``external``
  identity ``line-account:<account>``, as WhatsApp's account events do.

Idempotency: a message's external id is its message id; any other event's is
its ``webhookEventId``, which LINE keeps when it redelivers
(``isRedelivery``); the journal key of a body is built from them.

Signature: with a ``channel_secret`` and the request ``headers`` in the
context, ``X-Line-Signature`` must verify over the exact bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from connectors.base import PayloadRejected
from connectors.webhooks import as_dict as _d
from connectors.webhooks import body_key as _body_key
from connectors.webhooks import decode_json, line_signature_ok, verify_context
from connectors.webhooks import epoch_ms as _time
from connectors.webhooks import id_str as _str
from routing.model import Attachment, Inbound, Sender

CHANNEL = "line"
SIGNATURE_HEADER = "X-Line-Signature"
MEDIA_TYPES = {"image": "image/jpeg", "video": "video/mp4", "audio": "audio/m4a", "file": "application/octet-stream"}
#: Events about the LINE Official Account itself, sent without a ``source``: to a
#: module channel (module attached/detached, account suspended/resumed), and the
#: delivery completion of a LINE notification message (``delivery``, which names
#: its recipient only by a hashed phone number or the sender's delivery tag).
ACCOUNT_EVENTS = frozenset({"module", "botSuspended", "botResumed", "delivery"})


#: What an event's own object says, kept in meta: ``(object, key, meta name)``
#: — a membership joined/left/renewed, a beacon entered, a LINE Things device
#: linked, an account link's result, the tracking id of a video watched.
_EVENT_FACTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "membership": (("membership", "type", "membership"), ("membership", "membershipId", "membership_id")),
    "beacon": (("beacon", "type", "beacon"), ("beacon", "hwid", "hwid")),
    "things": (("things", "type", "things"), ("things", "deviceId", "device_id")),
    "accountLink": (("link", "result", "link_result"),),
    "videoPlayComplete": (("videoPlayComplete", "trackingId", "tracking_id"),),
}


def decode(raw: bytes) -> dict[str, Any]:
    obj = decode_json(raw)
    if not isinstance(obj, dict) or not isinstance(obj.get("events"), list):
        raise PayloadRejected("not a LINE webhook: expected an object with an events list")
    return obj


def verify(raw: bytes, context: Mapping[str, Any]) -> None:
    verify_context(raw, context, signature_header=SIGNATURE_HEADER, secret_field="channel_secret",
                   signature_ok=line_signature_ok)


def event_key(ev: Mapping[str, Any]) -> str:
    msg = _d(ev.get("message"))
    kind = _str(ev.get("type")) or "event"
    if kind == "message" and _str(msg.get("id")):
        return msg["id"]
    if _str(ev.get("webhookEventId")):
        return f"{kind}:{ev['webhookEventId']}"
    canonical = json.dumps(ev, sort_keys=True, ensure_ascii=False).encode()
    return f"{kind}:{hashlib.sha256(canonical).hexdigest()[:32]}"


def body_key(obj: Mapping[str, Any], raw: bytes) -> str:
    """The journal key: one event's id, or a hash of all the events' ids
    (``webhookEventId`` stays the same when LINE redelivers)."""
    return _body_key([_str(ev.get("webhookEventId")) or event_key(ev) for ev in obj["events"] if isinstance(ev, dict)],
                     raw)


def account_of(obj: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    return str(context.get("channel_id") or context.get("account") or obj.get("destination") or CHANNEL)


def _message(ev: Mapping[str, Any], msg: Mapping[str, Any], inbound: Inbound) -> None:
    kind = _str(msg.get("type")) or "unknown"
    meta = inbound.meta
    inbound.raw_type = f"message/{kind}"
    if kind == "text":
        inbound.text = _str(msg.get("text")) or ""
    elif kind in MEDIA_TYPES:
        provider = _d(msg.get("contentProvider"))
        url = _str(provider.get("originalContentUrl")) if provider.get("type") == "external" else None
        inbound.attachments = [Attachment(name=_str(msg.get("fileName")), content_type=MEDIA_TYPES[kind],
                                          size=int(msg["fileSize"]) if isinstance(msg.get("fileSize"), int) else 0,
                                          sha256="", url=url or _str(msg.get("id")))]
        if _str(_d(msg.get("imageSet")).get("id")):
            meta["image_set"] = msg["imageSet"]["id"]
    elif kind == "location":
        for key in ("title", "address", "latitude", "longitude"):
            if msg.get(key) is not None:
                meta[key] = str(msg[key])
        where = f"{msg.get('latitude')}, {msg.get('longitude')}"
        inbound.text = " — ".join(p for p in (_str(msg.get("title")), _str(msg.get("address")), where) if p)
    elif kind == "sticker":
        meta["sticker"] = f"{msg.get('packageId')}/{msg.get('stickerId')}"
        words = [k for k in msg.get("keywords", []) if isinstance(k, str)] if isinstance(msg.get("keywords"), list) else []
        inbound.text = _str(msg.get("text")) or ("[sticker] " + ", ".join(words[:5])).strip()
    else:
        inbound.kind = "event"
    if _str(msg.get("quotedMessageId")):
        inbound.thread.in_reply_to = msg["quotedMessageId"]
    if _str(msg.get("quoteToken")):
        meta["quote_token"] = msg["quoteToken"]


def _event(ev: dict[str, Any], account: str) -> Inbound:
    kind = _str(ev.get("type")) or "unknown"
    source = _d(ev.get("source"))
    user = _str(source.get("userId"))
    chat = _str(source.get("groupId")) or _str(source.get("roomId"))
    defects: list[str] = []
    sender = Sender(kind=CHANNEL, value=f"{account}:{user or chat or 'unknown'}")
    if user is None and chat is None and kind in ACCOUNT_EVENTS:
        sender = Sender(kind="external", value=f"line-account:{account}", name=f"LINE Official Account {account}")
    elif user is None and chat is None:
        defects.append(f"{kind}: no source user, group or room")
    meta: dict[str, str] = {"source_type": _str(source.get("type")) or ""}
    if kind == "module" and _str(_d(ev.get("module")).get("type")):
        meta["module"] = ev["module"]["type"]  # attached / detached
    for field, key, name in _EVENT_FACTS.get(kind, ()):
        if _str(_d(ev.get(field)).get(key)):
            meta[name] = _str(ev[field][key]) or ""
    if kind in ("memberJoined", "memberLeft"):  # who joined or left the group: LINE identities
        members = _d(ev.get("joined" if kind == "memberJoined" else "left")).get("members")
        ids = [_str(_d(m).get("userId")) for m in members] if isinstance(members, list) else []
        if any(ids):
            meta["members"] = ",".join(f"{account}:{i}" for i in ids if i)
    if kind == "delivery" and _str(_d(ev.get("delivery")).get("data")):
        meta["delivery_data"] = ev["delivery"]["data"]  # hashed phone number or X-Line-Delivery-Tag
    if chat:
        meta["chat_id"] = f"{account}:{chat}"
    if _d(ev.get("deliveryContext")).get("isRedelivery") is True:
        meta["redelivery"] = "true"
    if _str(ev.get("webhookEventId")):
        meta["webhook_event_id"] = ev["webhookEventId"]
    if _str(ev.get("mode")) == "standby":
        meta["mode"] = "standby"
    inbound = Inbound(channel=CHANNEL, account=account, external_id=event_key(ev), kind="event", sender=sender,
                      sent_at=_time(ev.get("timestamp")), raw_type=kind, meta=meta, defects=defects)
    msg = _d(ev.get("message"))
    if kind == "message":
        inbound.kind = "message"
        inbound.thread.message_id = _str(msg.get("id"))
        _message(ev, msg, inbound)
    elif kind == "messageEdited":
        inbound.kind = "message"
        _message(ev, msg, inbound)
        inbound.raw_type = f"messageEdited/{msg.get('type')}"
        inbound.edits = _str(msg.get("id"))
    elif kind == "unsend":
        inbound.edits = _str(_d(ev.get("unsend")).get("messageId"))
        meta["deleted"] = "true"
    elif kind in ("follow", "unfollow"):
        meta["blocked"] = "true" if kind == "unfollow" else "false"
    elif kind == "postback":
        pb = _d(ev.get("postback"))
        meta["data"] = _str(pb.get("data")) or ""
        for key, value in _d(pb.get("params")).items():
            if isinstance(value, (str, int)):
                meta[f"param_{key}"] = str(value)
    return inbound


def parse(raw: bytes, context: Mapping[str, Any]) -> list[Inbound]:
    obj = decode(raw)
    verify(raw, context)
    account = account_of(obj, context)
    return [_event(ev, account) for ev in obj["events"] if isinstance(ev, dict)]
