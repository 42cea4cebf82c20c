"""The WeCom parser: app callbacks (XML) and 微信客服 messages (sync_msg JSON).

Pure. One journal payload is either

- a callback body, plain or an AES envelope (``<Encrypt>``, checked and
  opened with wechatpy's ``enterprise`` crypto, receive_id = corp_id) — the
  message kinds are an Official Account's, so the mapping is shared
  (:func:`connectors.wechat.parse.xml_inbound`); the sender is the employee,
  ``wecom_userid`` = ``"<corp_id>:<userid>"`` — for an event WeCom generated
  itself (FromUserName ``sys``) the customer or employee it names;
- one message of a ``kf/sync_msg`` answer, as the WeCom connector journals
  them (JSON). Customers are ``wecom_external`` = their external_userid;
  messages a servicer (接待人员) sent from the WeCom client are
  ``wecom_userid``. Session events set ``meta["ticket_status"]``.

The ``kf_msg_or_event`` callback only says "pull now": it normalizes to
nothing, the messages come through sync_msg.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Mapping


from connectors.base import PayloadRejected
from connectors.wechat.envelope import open_callback
from connectors.wechat.safexml import MAX_XML_BYTES, text_field
from connectors.wechat.parse import SYSTEM_SENDER, xml_inbound
from connectors.webhooks import decode_json
from routing.model import Attachment, Inbound, Sender, ThreadHints

CHANNEL = "wecom"
KF_NOTIFY_EVENT = "kf_msg_or_event"

#: sync_msg ``origin``: who wrote the message.
ORIGIN_CUSTOMER, ORIGIN_SYSTEM, ORIGIN_SERVICER = 3, 4, 5
_ORIGIN_NAMES = {ORIGIN_CUSTOMER: "customer", ORIGIN_SYSTEM: "system", ORIGIN_SERVICER: "servicer"}

#: session_status_change ``change_type`` → ticket status (doc 94670, 事件消息):
#: 1 taken from the queue, 2 transferred, 3 ended, 4 re-entered an ended one.
SESSION_CHANGE_STATUS = {1: "open", 2: "open", 3: "solved", 4: "open"}
#: servicer_status_change ``status`` → the servicer's presence.
SERVICER_PRESENCE = {1: "online", 2: "away"}

_META_MAX_CHARS = 1024
_MEDIA_TYPES = {"image": "image/jpeg", "voice": "audio/amr", "video": "video/mp4", "file": "application/octet-stream"}


def wecom_user(corp_id: str, userid: str) -> Sender:
    """WeCom userids are unique within one corp only."""
    return Sender(kind="wecom_userid", value=f"{corp_id}:{userid}")


def kf_session_id(open_kfid: str, external_userid: str) -> str:
    """One 微信客服 conversation: a customer with one customer-service account."""
    return f"{open_kfid}:{external_userid}"


def open_kfid_of(session_id: str | None) -> str | None:
    return session_id.split(":", 1)[0] if session_id and ":" in session_id else None


# ---------------------------------------------------------------- XML callbacks


def _system_event_sender(fields: Mapping[str, Any], corp_id: str) -> Sender:
    """Who an event WeCom generated itself (FromUserName ``sys``: 通讯录 and
    客户联系 changes …) is about — never an employee named "sys": the customer
    (``ExternalUserID``, e.g. add_external_contact), else the employee
    (``UserID``), else the corp."""
    external = text_field(fields, "ExternalUserID")
    if external:
        return Sender(kind="wecom_external", value=external)
    employee = text_field(fields, "UserID")
    return wecom_user(corp_id, employee) if employee else Sender(kind="wecom_userid", value=corp_id)


def _parse_callback(raw: bytes, context: Mapping[str, Any]) -> list[Inbound]:
    fields = open_callback(raw, context, "wecom").fields
    if text_field(fields, "Event") == KF_NOTIFY_EVENT:
        return []
    # Inbound callbacks are addressed to the corp: ToUserName is its corp_id.
    corp_id = str(context.get("corp_id") or text_field(fields, "ToUserName") or "")
    account = str(context.get("account") or corp_id)
    userid = text_field(fields, "FromUserName")
    if not userid and not corp_id:  # nobody to attribute it to: never an empty identity
        raise PayloadRejected("not a WeCom callback: neither FromUserName nor ToUserName")
    if userid == SYSTEM_SENDER:
        sender = _system_event_sender(fields, corp_id)
    else:
        sender = wecom_user(corp_id, userid) if userid else Sender(kind="wecom_userid", value=corp_id)
    inbound = xml_inbound(fields, channel=CHANNEL, account=account, sender=sender)
    if userid is None:
        inbound.defects.append("no FromUserName: the corp itself is the sender")
    return [inbound]


# ---------------------------------------------------------------- sync_msg JSON


def _leaves(obj: Any, prefix: str = "") -> dict[str, str]:
    """Scalar leaves of a JSON object as ``a.b`` → str (lists are skipped)."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                out.update(_leaves(v, f"{key}."))
            elif isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v).strip():
                out[key] = str(v).strip()[:_META_MAX_CHARS]
    return out


def _s(obj: Any, key: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    return str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""


def _joined(*values: str) -> str:
    return "\n".join(dict.fromkeys(v for v in values if v))


def _kf_media(kind: str) -> Callable[[dict], tuple[str, list[Attachment]]]:
    def body(part: dict) -> tuple[str, list[Attachment]]:
        media_id = _s(part, "media_id")
        att = Attachment(name=None, content_type=_MEDIA_TYPES[kind], size=0, sha256="", url=media_id)
        return "", [att] if media_id else []

    return body


# msgtype → (text, attachments) of the message's own object (e.g. msg["text"]).
_KF_BODIES: dict[str, Callable[[dict], tuple[str, list[Attachment]]]] = {
    "text": lambda p: (_s(p, "content"), []),
    "image": _kf_media("image"),
    "voice": _kf_media("voice"),
    "video": _kf_media("video"),
    "file": _kf_media("file"),
    "location": lambda p: (_joined(_s(p, "name"), _s(p, "address")), []),
    "link": lambda p: (_joined(_s(p, "title"), _s(p, "desc"), _s(p, "url")), []),
    "business_card": lambda p: ("", []),
    "miniprogram": lambda p: (_s(p, "title"), []),
    "msgmenu": lambda p: (_joined(_s(p, "head_content"), _s(p, "tail_content")), []),
    # what a customer shares from WeChat Channels (视频号) and its shop, and a forwarded chat record
    "channels_shop_product": lambda p: (_joined(_s(p, "title"), _s(p, "sales_price"), _s(p, "shop_nickname")), []),
    "channels_shop_order": lambda p: (
        _joined(_s(p, "product_titles"), _s(p, "price_wording"), _s(p, "state"), _s(p, "order_id")), []),
    "channels": lambda p: (_joined(_s(p, "title"), _s(p, "nickname")), []),
    "merged_msg": lambda p: (_merged_text(p), []),
}


def _merged_text(part: dict) -> str:
    """A forwarded chat record (聊天记录): its title, then ``name: content`` per item."""
    items = part.get("item") if isinstance(part.get("item"), list) else []
    lines = [f"{_s(i, 'sender_name')}: {_s(i, 'msg_content')}".strip(": ") for i in items if isinstance(i, dict)]
    return _joined(_s(part, "title"), *lines)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _event_status(event: dict, meta: dict[str, str]) -> None:
    """The 微信客服 session states that say something about the ticket."""
    match _s(event, "event_type"):
        case "session_status_change":
            status = SESSION_CHANGE_STATUS.get(_int(event.get("change_type")) or 0)
            if status:
                meta["ticket_status"] = status
        case "enter_session":
            meta["ticket_status"] = "open"
        case "servicer_status_change":
            presence = SERVICER_PRESENCE.get(_int(event.get("status")) or 0)
            if presence:
                meta["servicer_presence"] = presence


def _kf_sender(msg: dict, event: dict, corp_id: str, defects: list[str], meta: dict[str, str]) -> Sender:
    """Who the conversation is with. A servicer's own message to a customer
    (sent from the WeCom client, not through omnigate) belongs to that
    customer's conversation: the customer is the sender identity, and
    ``meta["direction"] = "outbound"`` with ``meta["agent"]`` says who wrote it."""
    external = _s(msg, "external_userid") or _s(event, "external_userid")
    servicer = _s(msg, "servicer_userid") or _s(event, "servicer_userid")
    if _int(msg.get("origin")) == ORIGIN_SERVICER and external:
        meta["direction"] = "outbound"
        meta["agent"] = wecom_user(corp_id, servicer).value if servicer else "wecom:servicer"
        return Sender(kind="wecom_external", value=external)
    if _int(msg.get("origin")) == ORIGIN_SERVICER or (servicer and not external):
        if not corp_id:
            defects.append("no corp_id in the context: the servicer's userid is not corp-scoped")
        return wecom_user(corp_id, servicer)
    if not external:
        defects.append("message names neither external_userid nor servicer_userid")
    return Sender(kind="wecom_external", value=external)


def _sent_at(msg: dict, defects: list[str]) -> datetime | None:
    ts = _int(msg.get("send_time"))
    if ts is None:
        defects.append("send_time missing or not a Unix time")
        return None
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):  # beyond what a datetime holds: no time, not a crash
        defects.append(f"send_time {ts} is out of range")
        return None


def kf_inbound(msg: dict, context: Mapping[str, Any]) -> Inbound:
    """One message of a ``kf/sync_msg`` answer → its Inbound."""
    msgid = _s(msg, "msgid")
    if not msgid:
        raise PayloadRejected("not a 微信客服 message: no msgid")
    defects: list[str] = []
    msgtype = _s(msg, "msgtype") or "unknown"
    part = msg.get(msgtype) if isinstance(msg.get(msgtype), dict) else {}
    event = part if msgtype == "event" else {}
    corp_id = str(context.get("corp_id") or "")
    open_kfid = _s(msg, "open_kfid") or _s(event, "open_kfid")
    meta = _leaves(part)
    meta["origin"] = _ORIGIN_NAMES.get(_int(msg.get("origin")) or 0, _s(msg, "origin") or "unknown")
    if open_kfid:
        meta["open_kfid"] = open_kfid
    text, attachments = "", []
    if msgtype in _KF_BODIES:
        kind, raw_type = "message", msgtype
        text, attachments = _KF_BODIES[msgtype](part)
    else:
        kind, raw_type = "event", (_s(event, "event_type") or msgtype)
        _event_status(event, meta)
    sender = _kf_sender(msg, event, corp_id, defects, meta)
    external = sender.value if sender.kind == "wecom_external" else ""
    thread = ThreadHints(session_id=kf_session_id(open_kfid, external)) if open_kfid and external else ThreadHints()
    return Inbound(
        channel=CHANNEL,
        account=str(context.get("account") or corp_id or open_kfid),
        external_id=msgid,
        kind=kind,
        sender=sender,
        text=text,
        attachments=attachments,
        thread=thread,
        sent_at=_sent_at(msg, defects),
        defects=defects,
        raw_type=raw_type,
        meta=meta,
    )


def _parse_kf_message(raw: bytes, context: Mapping[str, Any]) -> list[Inbound]:
    try:
        msg = decode_json(raw)  # half an emoji escaped alone is read, as U+FFFD; too deep is refused
    except PayloadRejected as exc:
        raise PayloadRejected(f"malformed JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise PayloadRejected(f"not a WeCom kf message: JSON {type(msg).__name__}, expected an object")
    return [kf_inbound(msg, context)]  # a dict: parse only comes here for "{"


def parse(raw: bytes, context: Mapping[str, Any]) -> list[Inbound]:
    """A WeCom journal payload (callback XML or one sync_msg message) → Inbounds."""
    if len(raw) > MAX_XML_BYTES:
        raise PayloadRejected(f"payload of {len(raw)} bytes exceeds the {MAX_XML_BYTES}-byte limit")
    if raw.lstrip()[:1] == b"{":
        return _parse_kf_message(raw, context)
    return _parse_callback(raw, context)
