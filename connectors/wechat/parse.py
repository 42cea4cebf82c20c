"""The Official Account parser: a callback's XML (plain or AES envelope) → Inbound.

Pure: the same bytes and context give the same Inbounds. The context is the
shape of ``omnigate parse --context`` (the corpus's ``*.meta.json``): the
account's ``token``, ``encoding_aes_key`` and ``appid``, and the request's
``query``. What the checks refuse is :class:`PayloadRejected`
(``envelope.open_callback``); everything else normalizes, unknown kinds as an
``event`` Inbound carrying their raw type (and their ``Content``, if any, as
its text: the hardware platform's ``device_text``/``device_event``).

The XML-fields → Inbound mapping (:func:`xml_inbound`) is shared with WeCom,
whose app callbacks use the same message kinds; only the sender differs.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from connectors.base import PayloadRejected
from connectors.wechat.envelope import open_callback
from connectors.wechat.safexml import text_field
from routing.model import Attachment, Inbound, Sender
from routing.text import int64

CHANNEL = "wechat"

#: Message kinds (MsgType) that are a customer's message; anything else is an event.
MESSAGE_KINDS = frozenset({"text", "image", "voice", "video", "shortvideo", "location", "link", "file",
                           "miniprogrampage"})

#: Fields the Inbound carries in its own fields (or meta["unionid"]), not as raw meta.
_NOT_META = frozenset(
    {"ToUserName", "FromUserName", "CreateTime", "MsgType", "MsgId", "Event", "Content", "Encrypt", "UnionId"}
)

#: Longest meta value kept: meta is for small facts, not payload copies.
_META_MAX_CHARS = 1024

_MEDIA_TYPES = {"image": "image/jpeg", "video": "video/mp4", "shortvideo": "video/mp4"}
_VOICE_TYPES = {"amr": "audio/amr", "speex": "audio/speex", "mp3": "audio/mpeg"}

#: FromUserName of the events WeCom generates itself (通讯录、客户联系 changes).
SYSTEM_SENDER = "sys"

#: Customer-service session events and the ticket status they imply.
SESSION_STATUS = {"kf_create_session": "open", "kf_close_session": "solved"}


def external_id(fields: Mapping[str, Any]) -> str:
    """The idempotency key: MsgId, else FromUserName + CreateTime + Event.

    WeChat retries a callback up to three times; its documentation names
    exactly these as the deduplication key (events carry no MsgId) — WeCom's
    own events (FromUserName ``sys``) add a digest of their fields. A
    message's ``MsgID`` (how SDKs that re-serialize messages, WxJava, spell
    it) is its MsgId; the job events' ``MsgID`` (TEMPLATESENDJOBFINISH) names
    the job, not the callback, and stays in meta.
    """
    msg_id = text_field(fields, "MsgId")
    if msg_id is None and text_field(fields, "MsgType") in MESSAGE_KINDS:
        msg_id = text_field(fields, "MsgID")
    if msg_id:
        return msg_id
    kind = text_field(fields, "Event") or text_field(fields, "MsgType") or ""
    key = f"{text_field(fields, 'FromUserName') or ''}:{text_field(fields, 'CreateTime') or ''}:{kind}"
    if text_field(fields, "FromUserName") == SYSTEM_SENDER:
        # WeCom's own events all come from "sys": two customers adding an
        # employee in one second had one key, and the second was dropped as a
        # redelivery. A retry repeats the same fields, so their digest tells
        # the events apart and still matches the retry.
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
        key = f"{key}:{digest}"
    return key


#: Nesting levels of a callback's elements read into meta (WeChat's nest two
#: or three: ``ScanCodeInfo.ScanResult``, ``SendPicsInfo.PicList.item``).
_META_MAX_DEPTH = 8


def _flat_meta(fields: Mapping[str, Any], prefix: str = "", depth: int = 0) -> dict[str, str]:
    """Every small leaf outside the envelope, nested ones as ``Parent.Child``
    (down to :data:`_META_MAX_DEPTH` levels: elements nested thousands deep
    were a RecursionError)."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        if not prefix and name in _NOT_META:
            continue
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            if depth < _META_MAX_DEPTH:
                out.update(_flat_meta(value, f"{key}.", depth + 1))
        elif isinstance(value, str) and value.strip():
            out[key] = value.strip()[:_META_MAX_CHARS]
    return out


def _media(fields: Mapping[str, Any], content_type: str, name: str | None = None) -> list[Attachment]:
    """A referenced media file (downloaded later by ``fetch_media``)."""
    media_id = text_field(fields, "MediaId")
    if media_id is None:
        return []
    return [Attachment(name=name, content_type=content_type, size=0, sha256="", url=media_id)]


def _file(fields: Mapping[str, Any]) -> list[Attachment]:
    """A file message names its file but gives no media id to download it by."""
    size = text_field(fields, "FileTotalLen") or ""
    return [
        Attachment(
            name=text_field(fields, "Title"),
            content_type="application/octet-stream",
            size=int64(size) or 0,
            sha256="",
        )
    ]


def _lines(fields: Mapping[str, Any], *names: str) -> str:
    """The named fields, one per line, blanks and repeats left out."""
    values = (text_field(fields, n) for n in names)
    return "\n".join(dict.fromkeys(v for v in values if v))


# MsgType → (text, attachments) of a message; one entry per kind WeChat documents.
_BODIES: dict[str, Callable[[Mapping[str, Any]], tuple[str, list[Attachment]]]] = {
    "text": lambda f: (text_field(f, "Content") or "", []),
    "image": lambda f: ("", _media(f, _MEDIA_TYPES["image"])),
    "voice": lambda f: (
        text_field(f, "Recognition") or "",
        _media(f, _VOICE_TYPES.get((text_field(f, "Format") or "amr").lower(), "application/octet-stream")),
    ),
    "video": lambda f: ("", _media(f, _MEDIA_TYPES["video"])),
    "shortvideo": lambda f: ("", _media(f, _MEDIA_TYPES["shortvideo"])),
    "location": lambda f: (
        text_field(f, "Label") or _lines(f, "Location_X", "Location_Y").replace("\n", ","),
        [],
    ),
    "link": lambda f: (_lines(f, "Title", "Description", "Url"), []),
    "file": lambda f: (_lines(f, "Title", "Description"), _file(f)),
    # a mini-program card the customer sent into the customer-service chat
    "miniprogrampage": lambda f: (_lines(f, "Title", "PagePath"), []),
}


def _sent_at(fields: Mapping[str, Any], defects: list[str]) -> datetime | None:
    value = text_field(fields, "CreateTime")
    if value is None:
        defects.append("CreateTime missing")
        return None
    try:
        return datetime.fromtimestamp(int(value), tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        defects.append(f"CreateTime {value[:32]!r} is not a Unix time")
        return None


def xml_inbound(fields: Mapping[str, Any], *, channel: str, account: str, sender: Sender) -> Inbound:
    """One callback's fields → its Inbound (message kinds, events, unknown kinds)."""
    msg_type = text_field(fields, "MsgType")
    if msg_type is None:
        raise PayloadRejected("not a WeChat callback: no MsgType")
    defects: list[str] = []
    meta = _flat_meta(fields)
    text, attachments = "", []
    if msg_type in MESSAGE_KINDS:
        kind, raw_type = "message", msg_type
        text, attachments = _BODIES[msg_type](fields)
    else:
        kind = "event"
        raw_type = (text_field(fields, "Event") if msg_type == "event" else None) or msg_type
        if msg_type == "event" and raw_type == msg_type:
            defects.append("event without an Event field")
        # an event's own data, where it has some: the hardware platform's
        # device_text/device_event carry it (base64) in Content, kept as sent
        text = text_field(fields, "Content") or ""
    if raw_type in SESSION_STATUS:
        meta["ticket_status"] = SESSION_STATUS[raw_type]
    if raw_type == "subscribe" and meta.get("EventKey", "").startswith("qrscene_"):
        meta["scene"] = meta["EventKey"].removeprefix("qrscene_")
    unionid = text_field(fields, "UnionId")
    if unionid:
        meta["unionid"] = unionid
    return Inbound(
        channel=channel,
        account=account,
        external_id=external_id(fields),
        kind=kind,
        sender=sender,
        text=text,
        attachments=attachments,
        sent_at=_sent_at(fields, defects),
        defects=defects,
        raw_type=raw_type,
        meta=meta,
    )


def openid_sender(appid: str, openid: str) -> Sender:
    """openids are scoped to one official account, so the identity carries its appid."""
    return Sender(kind="wechat_openid", value=f"{appid}:{openid}")


def parse(raw: bytes, context: Mapping[str, Any]) -> list[Inbound]:
    """An Official Account callback body → one Inbound (or PayloadRejected)."""
    fields = open_callback(raw, context, "oa").fields
    openid = text_field(fields, "FromUserName")
    if openid is None:
        raise PayloadRejected("not a WeChat callback: no FromUserName")
    # The live gateway always knows the appid; a bare file falls back to the
    # account's original id (ToUserName) so the sender is still account-scoped.
    appid = str(context.get("appid") or context.get("account") or text_field(fields, "ToUserName") or "")
    account = str(context.get("account") or appid)
    return [xml_inbound(fields, channel=CHANNEL, account=account, sender=openid_sender(appid, openid))]
