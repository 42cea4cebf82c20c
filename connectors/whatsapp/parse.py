"""WhatsApp Cloud API's pure parser: one webhook body → its Inbounds.

A POST carries ``entry[].changes[]``; a change of field ``messages`` has
``value.metadata.phone_number_id`` (the business number: the Inbound's
``account``), ``value.contacts`` (profile names by ``wa_id``) and
``value.messages`` and/or ``value.statuses``. Each message and each status
is one Inbound, so one POST may give several (the pipeline commits them one
by one and marks the journal entry done with the last).

What each becomes (https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/components):

- ``text`` → a message; ``image``/``video``/``audio``/``document``/``sticker``
  → a message whose attachment references the media id (``url``) until the
  connector's ``fetch_media`` downloads it; the caption is the text;
- ``location``, ``contacts`` → a message with a readable text and the facts
  in ``meta``; ``interactive`` (button/list replies, flows) and ``button``
  (a template's quick reply) → a message whose text is what the customer
  chose, the choice's id in ``meta["reply_id"]``; an ``interactive`` that is
  no reply (``call_permission_reply``, the customer's answer to a call
  permission request; a type Meta adds; none, when it comes with only
  ``errors``) → an event of raw_type the interactive type (or
  ``interactive``), its scalar fields in ``meta``; ``order`` (a cart from
  the catalog) → a message listing its items;
- ``reaction`` → an event on the reacted-to message;
- ``edit`` → a message that ``edits`` the original; ``revoke`` (the customer
  deleted a message) → an event that edits the original to an empty text
  (``meta["deleted"]``); both shapes follow Meta's changelog and are covered
  by synthetic fixtures;
- ``unsupported``, ``system`` and any unknown type → an event carrying the raw type;
- a status (``sent``/``delivered``/``read``/``failed``) → an event of
  raw_type ``status`` with ``meta["status_of"]`` = the wamid of our message:
  the pipeline updates that reply's delivery and emits ``message.status``,
  it never becomes a customer message;
- a change of another field (``account_update``,
  ``message_template_status_update``, ``calls``, ``user_preferences``, fields
  Meta adds later), and a ``messages`` change with neither messages nor
  statuses (a value-level ``errors`` list: Meta could not deliver the
  customer's messages to the webhook) → one event of raw_type = the field,
  its scalar values and first error (``error_code``/``error_title``/
  ``error_details``) in ``meta``, from the customer it names or else the business account
  (``external`` ``whatsapp-account:<WABA id>``); ``smb_message_echoes`` (sent
  from the WhatsApp Business app) → the agent's outbound message
  (``meta["direction"] = "outbound"``), as Messenger's echoes.

A message written from a click-to-WhatsApp ad keeps the ad in ``meta``
(``referral_url``, ``referral_source_type``/``_source_id``/``_headline``/
``_ctwa_clid``), one asking about a catalog product that product
(``referred_catalog_id``, ``referred_product_retailer_id``).

The sender is the ``whatsapp`` identity ``+<wa_id>`` (a wa_id is the phone
number in international form, so it also gives the ``phone`` identity). A
user who adopted a WhatsApp username may come without a phone number, named
only by a business-scoped user id (BSUID: ``from_user_id``, the contact's
``user_id``): then the sender is the ``external`` identity
``whatsapp-user:<BSUID>`` (one contact per user, answered by ``recipient``);
the BSUID is in ``meta["bsuid"]`` whenever Meta gives it.

Signature: with an ``app_secret`` and the request ``headers`` in the context
(``omnigate parse --context``, a live request), ``X-Hub-Signature-256`` must
verify over the exact bytes. The daemon verifies before journaling and does
not keep headers in the journal, so a replay does not verify again.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Mapping

from connectors.base import PayloadRejected
from connectors.webhooks import body_key as _body_key
from connectors.webhooks import decode_json, hub_signature_ok, verify_context
from connectors.webhooks import dicts as _dicts
from connectors.webhooks import id_str as _str
from routing.model import Attachment, Inbound, Sender, ThreadHints

CHANNEL = "whatsapp"
OBJECT = "whatsapp_business_account"
SIGNATURE_HEADER = "X-Hub-Signature-256"
MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")
DEFAULT_MEDIA_TYPE = {"image": "image/jpeg", "video": "video/mp4", "audio": "audio/ogg",
                      "document": "application/octet-stream", "sticker": "image/webp"}
STATUSES = ("sent", "delivered", "read", "failed", "deleted", "warning")


def decode(raw: bytes) -> dict[str, Any]:
    """The webhook's JSON object; :class:`PayloadRejected` when it is not one."""
    obj = decode_json(raw)
    if not isinstance(obj, dict):
        raise PayloadRejected(f"not a WhatsApp webhook: JSON {type(obj).__name__}, expected an object")
    if obj.get("object") != OBJECT:
        raise PayloadRejected(f"not a WhatsApp webhook: object is {obj.get('object')!r}, expected {OBJECT!r}")
    if not isinstance(obj.get("entry"), list):
        raise PayloadRejected("not a WhatsApp webhook: no entry list")
    return obj


def verify(raw: bytes, context: Mapping[str, Any]) -> None:
    """Check ``X-Hub-Signature-256`` when the context carries a live request's
    headers and the app secret; :class:`PayloadRejected` when it does not verify."""
    verify_context(raw, context, signature_header=SIGNATURE_HEADER, secret_field="app_secret",
                   signature_ok=hub_signature_ok)


def _time(ts: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(ts), timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def changes(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``value`` of every ``messages`` change, in order."""
    return [value for field, _entry, value in all_changes(obj) if field == "messages"]


def all_changes(obj: Mapping[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(field, entry, value)`` of every change of the body, in order."""
    out = []
    for entry in _dicts(obj.get("entry")):
        for change in _dicts(entry.get("changes")):
            value = change.get("value")
            if isinstance(value, dict):
                out.append((_str(change.get("field")) or "unknown", entry, value))
    return out


def item_ids(obj: Mapping[str, Any]) -> list[str]:
    """The external ids of every message and status in a body."""
    ids: list[str] = []
    for value in changes(obj):
        for m in _dicts(value.get("messages")):
            ids.append(str(m.get("id")))
        for s in _dicts(value.get("statuses")):
            ids.append(f"{s.get('id')}:status:{s.get('status')}")
    return ids


def body_key(obj: Mapping[str, Any], raw: bytes) -> str:
    """The journal's idempotency key of a body: its one item's id, or a hash
    of all its items' ids (Meta redelivers the same body after a failed
    answer), or of the bytes when it has none."""
    return _body_key(item_ids(obj), raw)


#: The contact identity of a WhatsApp user Meta names by their business-scoped
#: user id (BSUID) only: one who adopted a username, whose phone number the
#: webhook withholds. ``send`` answers it through ``recipient``.
BSUID_PREFIX = "whatsapp-user:"


def _sender(wa_id: str, names: Mapping[str, str], bsuid: str | None = None) -> Sender:
    if bsuid and (not wa_id or wa_id == "unknown"):
        return Sender(kind="external", value=f"{BSUID_PREFIX}{bsuid}", name=names.get(bsuid))
    digits = wa_id.lstrip("+")
    return Sender(kind=CHANNEL, value=f"+{digits}", name=names.get(digits))


def _bsuid(item: Mapping[str, Any], key: str, user_ids: list[str]) -> str | None:
    """An item's BSUID (``from_user_id``, ``recipient_user_id``), else the
    only contact's ``user_id`` of the change."""
    return _str(item.get(key)) or (user_ids[0] if len(user_ids) == 1 else None)


def _attachment(kind: str, media: Mapping[str, Any]) -> Attachment:
    return Attachment(
        name=_str(media.get("filename")),
        content_type=_str(media.get("mime_type")) or DEFAULT_MEDIA_TYPE[kind],
        size=0,
        sha256="",  # known once fetch_media has downloaded it (WhatsApp's own sha256 is in meta)
        url=_str(media.get("id")),
    )


def _location_text(loc: Mapping[str, Any]) -> str:
    parts = [p for p in (_str(loc.get("name")), _str(loc.get("address"))) if p]
    where = f"{loc.get('latitude')}, {loc.get('longitude')}"
    return " — ".join([*parts, where]) if parts else f"📍 {where}"


def _contacts_text(cards: list[dict[str, Any]]) -> str:
    lines = []
    for card in cards:
        name = card.get("name") if isinstance(card.get("name"), dict) else {}
        label = _str(name.get("formatted_name")) or " ".join(
            p for p in (_str(name.get("first_name")), _str(name.get("last_name"))) if p) or "contact"
        phones = [_str(p.get("phone")) or _str(p.get("wa_id")) for p in _dicts(card.get("phones"))]
        lines.append(f"{label}: {', '.join(p for p in phones if p)}".rstrip(": "))
    return "\n".join(lines)


def _content(kind: str, m: Mapping[str, Any], meta: dict[str, str], defects: list[str]) -> tuple[str, list[Attachment]]:
    """(text, attachments) of one message's own content."""
    body = m.get(kind) if isinstance(m.get(kind), dict) else {}
    if kind == "text":
        return _str(body.get("body")) or "", []
    if kind in MEDIA_TYPES:
        if body.get("voice") is True:
            meta["voice"] = "true"
        if _str(body.get("sha256")):
            meta["media_sha256"] = body["sha256"]
        if body.get("animated") is True:
            meta["animated"] = "true"
        if not _str(body.get("id")):
            defects.append(f"{kind} without a media id: cannot be downloaded")
            return _str(body.get("caption")) or "", []
        return _str(body.get("caption")) or "", [_attachment(kind, body)]
    if kind == "location":
        for key in ("latitude", "longitude", "name", "address", "url"):
            if body.get(key) is not None:
                meta[key] = str(body[key])
        return _location_text(body), []
    if kind == "contacts":
        return _contacts_text(_dicts(m.get("contacts"))), []
    if kind == "interactive":
        sub = _str(body.get("type")) or ""
        choice = body.get(sub) if isinstance(body.get(sub), dict) else {}
        meta["interactive_type"] = sub
        if _str(choice.get("id")):
            meta["reply_id"] = choice["id"]
        if sub == "nfm_reply":  # a WhatsApp Flow's answer
            if _str(choice.get("response_json")):
                meta["response_json"] = choice["response_json"]
            return _str(choice.get("body")) or _str(choice.get("name")) or "", []
        text = _str(choice.get("title")) or ""
        if _str(choice.get("description")):
            text = f"{text} — {choice['description']}" if text else choice["description"]
        return text, []
    if kind == "button":  # a quick-reply button of a template
        if _str(body.get("payload")):
            meta["reply_id"] = body["payload"]
        return _str(body.get("text")) or "", []
    if kind == "order":  # a cart sent from the business's catalog
        if _str(body.get("catalog_id")):
            meta["catalog_id"] = body["catalog_id"]
        lines = [_str(body.get("text")) or ""]
        for item in _dicts(body.get("product_items")):
            price = f" @ {item.get('item_price')} {_str(item.get('currency')) or ''}".rstrip() if item.get("item_price") is not None else ""
            lines.append(f"{item.get('quantity', 1)} × {_str(item.get('product_retailer_id')) or '?'}{price}")
        return "\n".join(line for line in lines if line), []
    return "", []


#: Interactive replies that are what the customer chose (a button, a list row, a Flow's answer).
_INTERACTIVE_REPLIES = frozenset({"button_reply", "list_reply", "nfm_reply"})


def _interactive_event(m: Mapping[str, Any], inbound: Inbound) -> bool:
    """Make an interactive message that is no reply an event: a call-permission
    answer (raw_type ``call_permission_reply``, its fields in meta), another
    type Meta adds, or none at all (undeliverable: only ``errors``). True if it did."""
    body = m.get("interactive") if isinstance(m.get("interactive"), dict) else {}
    sub = _str(body.get("type")) or ""
    if sub in _INTERACTIVE_REPLIES:
        return False
    inbound.kind = "event"
    if sub:
        inbound.raw_type = sub
        choice = body.get(sub) if isinstance(body.get(sub), dict) else {}
        for key, value in choice.items():
            if isinstance(value, (str, int, float)):
                inbound.meta[key] = str(value)
    return True


def _message(m: dict[str, Any], account: str, names: Mapping[str, str], user_ids: list[str] = ()) -> Inbound:
    kind = _str(m.get("type")) or "unknown"
    bsuid = _bsuid(m, "from_user_id", list(user_ids))
    wa_id = _str(m.get("from")) or "unknown"
    mid = _str(m.get("id")) or f"{wa_id if wa_id != 'unknown' else bsuid}:{m.get('timestamp')}"
    meta: dict[str, str] = {"phone_number_id": account}
    if bsuid:
        meta["bsuid"] = bsuid
    defects: list[str] = []
    context = m.get("context") if isinstance(m.get("context"), dict) else {}
    if context.get("forwarded") or context.get("frequently_forwarded"):
        meta["forwarded"] = "true"
    if isinstance(m.get("referral"), dict) and _str(m["referral"].get("source_url")):
        meta["referral_url"] = m["referral"]["source_url"]
    referral = m.get("referral") if isinstance(m.get("referral"), dict) else {}
    for key in ("source_type", "source_id", "headline", "ctwa_clid"):  # the ad or post a click-to-WhatsApp came from
        if _str(referral.get(key)):
            meta[f"referral_{key}"] = _str(referral[key]) or ""
    product = context.get("referred_product") if isinstance(context.get("referred_product"), dict) else {}
    for key in ("catalog_id", "product_retailer_id"):  # "Message business" on a catalog product
        if _str(product.get(key)):
            meta[f"referred_{key}"] = _str(product[key]) or ""
    for err in _dicts(m.get("errors")):
        defects.append(f"WhatsApp error {err.get('code')}: {err.get('title') or err.get('message')}")
    inbound = Inbound(
        channel=CHANNEL, account=account, external_id=mid, kind="message", sender=_sender(wa_id, names, bsuid),
        thread=ThreadHints(message_id=mid, in_reply_to=_str(context.get("id"))),
        sent_at=_time(m.get("timestamp")), raw_type=kind, meta=meta, defects=defects,
    )
    if kind == "reaction":
        body = m.get("reaction") if isinstance(m.get("reaction"), dict) else {}
        inbound.kind = "event"
        inbound.thread.in_reply_to = _str(body.get("message_id"))
        meta["emoji"] = _str(body.get("emoji")) or ""  # empty: the reaction was removed
        if inbound.thread.in_reply_to:
            meta["reacted_to"] = inbound.thread.in_reply_to
        return inbound
    if kind == "edit":
        body = m.get("edit") if isinstance(m.get("edit"), dict) else {}
        original = _str(body.get("original_message_id"))
        edited = body.get("message") if isinstance(body.get("message"), dict) else {}
        inner = _str(edited.get("type")) or "text"
        inbound.text, inbound.attachments = _content(inner, edited, meta, defects)
        inbound.edits = original
        return inbound
    if kind == "revoke":
        body = m.get("revoke") if isinstance(m.get("revoke"), dict) else {}
        inbound.kind = "event"
        inbound.edits = _str(body.get("original_message_id"))
        meta["deleted"] = "true"
        return inbound
    if kind == "system":
        body = m.get("system") if isinstance(m.get("system"), dict) else {}
        inbound.kind = "event"
        inbound.text = _str(body.get("body")) or ""
        if _str(body.get("wa_id")) or _str(body.get("new_wa_id")):
            meta["new_wa_id"] = _str(body.get("wa_id")) or _str(body.get("new_wa_id")) or ""
        return inbound
    known = kind in ("text", "location", "contacts", "interactive", "button", "order", *MEDIA_TYPES)
    if not known:  # "unsupported", "order", new types: kept as an event, never dropped
        inbound.kind = "event"
        return inbound
    if kind == "interactive" and _interactive_event(m, inbound):
        return inbound
    inbound.text, inbound.attachments = _content(kind, m, meta, defects)
    return inbound


def _error_meta(item: Mapping[str, Any], meta: dict[str, str]) -> None:
    """The first of an item's ``errors`` as ``error_code``/``error_title``/``error_details``."""
    for err in _dicts(item.get("errors"))[:1]:
        meta["error_code"] = str(err.get("code", ""))
        meta["error_title"] = str(err.get("title") or err.get("message") or "")
        details = err.get("error_data", {}).get("details") if isinstance(err.get("error_data"), dict) else None
        if isinstance(details, str):
            meta["error_details"] = details


def _status(s: dict[str, Any], account: str, names: Mapping[str, str], user_ids: list[str] = ()) -> Inbound:
    wamid = _str(s.get("id")) or ""
    status = _str(s.get("status")) or "unknown"
    meta = {"status_of": wamid, "status": status, "phone_number_id": account}
    _error_meta(s, meta)
    conversation = s.get("conversation") if isinstance(s.get("conversation"), dict) else {}
    if _str(conversation.get("expiration_timestamp")):
        meta["conversation_expires"] = str(conversation["expiration_timestamp"])
    return Inbound(
        channel=CHANNEL, account=account, external_id=f"{wamid}:status:{status}", kind="event",
        sender=_sender(_str(s.get("recipient_id")) or "unknown", names, _bsuid(s, "recipient_user_id", list(user_ids))),
        sent_at=_time(s.get("timestamp")),
        raw_type="status", meta=meta,
    )


def _echo(m: dict[str, Any], account: str, names: Mapping[str, str]) -> Inbound:
    """A message the business sent from the WhatsApp Business app (field
    ``smb_message_echoes``): the agent's message to the customer ``to``,
    recorded as outbound, never as the customer's."""
    inbound = _message({**m, "from": _str(m.get("to")) or "unknown"}, account, names)
    inbound.meta["direction"] = "outbound"
    inbound.meta["agent"] = f"{CHANNEL}:business-app"
    return inbound


#: Per-user lists of the non-message fields, and the key naming the user in each.
_USER_LISTS = (("calls", "from"), ("statuses", "recipient_id"), ("user_preferences", "wa_id"))


def _change_event(field: str, entry: Mapping[str, Any], value: Mapping[str, Any], key: str, account: str,
                  names: Mapping[str, str]) -> Inbound:
    """A change of a field other than ``messages`` (``account_update``,
    ``message_template_status_update``, ``calls``, ``user_preferences`` …):
    one event carrying the field as its raw type, never dropped. It belongs
    to the customer it names, else to the business account itself."""
    meta: dict[str, str] = {"field": field}
    if account != CHANNEL:
        meta["phone_number_id"] = account
    for name, item in value.items():
        if isinstance(item, (str, int, float)) and not isinstance(item, bool) and len(str(item)) <= 256:
            meta[name] = str(item)
    _error_meta(value, meta)
    user, at = None, _time(entry.get("time"))
    for list_name, user_key in _USER_LISTS:
        for item in _dicts(value.get(list_name))[:1]:
            user = _str(item.get(user_key))
            if list_name == "calls" and str(item.get("direction", "")).upper() == "BUSINESS_INITIATED":
                user = _str(item.get("to")) or user
            for name in ("id", "event", "status", "direction", "value", "category"):
                if isinstance(item.get(name), str):
                    meta[f"{list_name}.{name}"] = item[name]
            at = _time(item.get("timestamp")) or at
        if user:
            break
    if user is None:
        user = next((_str(c.get("wa_id")) for c in _dicts(value.get("contacts")) if _str(c.get("wa_id"))), None)
    waba = _str(entry.get("id")) or account
    sender = _sender(user, names) if user else Sender(kind="external", value=f"whatsapp-account:{waba}",
                                                      name=f"WhatsApp Business account {waba}")
    return Inbound(
        channel=CHANNEL, account=account, external_id=f"{field}:{waba}:{key}", kind="event", sender=sender,
        sent_at=at, raw_type=field, meta=meta,
    )


def parse(raw: bytes, context: Mapping[str, Any]) -> list[Inbound]:
    """Every message and status of the body, in order; a change of another
    field (an account or template update, a call, a marketing preference)
    is one event carrying the field, and a business-app echo the agent's
    outbound message — nothing is dropped."""
    obj = decode(raw)
    verify(raw, context)
    out: list[Inbound] = []
    digest = hashlib.sha256(raw).hexdigest()[:16]  # these changes carry no id: the body's hash and position
    for n, (field, entry, value) in enumerate(all_changes(obj)):
        metadata = value.get("metadata") if isinstance(value.get("metadata"), dict) else {}
        account = _str(metadata.get("phone_number_id")) or str(context.get("account") or CHANNEL)
        names: dict[str, str] = {}
        user_ids: list[str] = []
        for c in _dicts(value.get("contacts")):
            profile = c.get("profile") if isinstance(c.get("profile"), dict) else {}
            wa_id, user_id = _str(c.get("wa_id")), _str(c.get("user_id"))
            name = _str(profile.get("name")) or _str(profile.get("username"))
            if user_id:
                user_ids.append(user_id)
            for key in (wa_id.lstrip("+") if wa_id else None, user_id):
                if key and name:
                    names[key] = name
        if field == "messages" and (_dicts(value.get("messages")) or _dicts(value.get("statuses"))):
            out += [_message(m, account, names, user_ids) for m in _dicts(value.get("messages"))]
            out += [_status(s, account, names, user_ids) for s in _dicts(value.get("statuses"))]
        elif field == "smb_message_echoes" and _dicts(value.get("message_echoes")):
            out += [_echo(m, account, names) for m in _dicts(value.get("message_echoes"))]
        else:
            out.append(_change_event(field, entry, value, f"{digest}:{n}", account, names))
    return out
