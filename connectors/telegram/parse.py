"""Telegram's pure parser: one Bot API ``Update`` (JSON) → one :class:`Inbound`.

The same function serves webhook bodies and the updates a getUpdates poll
returned (the poller journals each update as its own JSON object), the
daemon's pipeline, replays and ``omnigate parse telegram``.

Third-party input is read tolerantly: unknown keys are ignored (the Zammad
captures of the corpus add ``bid`` and ``callback_token``) and optional
fields may be absent. PTB's ``Update.de_json`` is deliberately not used here:
its constructors require fields older payloads lack (``User.is_bot`` is
missing from every corpus payload, so it raises ``TypeError``), and msgspec
Structs are several times faster on the webhook path.

What an update becomes (https://core.telegram.org/bots/api#update):

- ``message`` / ``channel_post`` → kind ``message``; text = text or caption;
  attachments reference the file by ``file_id`` (``url``) with ``sha256=""``
  until the connector's ``fetch_media`` downloads them;
- ``edited_message`` / ``edited_channel_post`` → kind ``message`` with
  ``edits`` = the original's external id and ``sent_at`` = the edit time;
- ``business_message`` / ``edited_business_message`` (a customer writing to
  a connected Telegram Business account) → the same, their ids prefixed
  ``business:`` (the business chat numbers its messages apart from the
  bot's) and ``meta["business_connection_id"]`` kept; replies still go
  through the bot's own chat; one the business account itself wrote (its
  ``from`` is not the customer the private chat is with) is its agent's
  outbound message to that customer (``meta["direction"] = "outbound"``),
  as WhatsApp's and Messenger's echoes;
- a location, venue, poll, dice, checklist, giveaway, invoice, game, Web App
  data or forwarded story without text gets a readable one (📍 and the
  coordinates, venue name and address, the question and its options, the
  emoji and value, the tasks, the prize …);
  paid media's photos and videos are attachments like a photo's;
- a message that only carries a service notice (member joined, title
  changed, message pinned …) → kind ``event``, raw_type ``message.<field>``;
- ``deleted_business_messages`` → one ``event`` per deleted message that
  empties it (``edits`` = ``business:<chat>:<message>``, ``meta["deleted"]``),
  its external id ``business:<chat>:<message>:deleted``;
- ``callback_query`` → ``event``, the button's data in ``meta["data"]``;
- ``message_reaction`` → ``event`` on the reacted-to message
  (``in_reply_to``), the emoji now set in ``meta["emoji"]`` (empty: removed);
- ``my_chat_member`` / ``chat_member`` → ``event``; for ``my_chat_member``
  in a private chat ``meta["blocked"]`` says whether the user has just
  blocked (``"true"``) or unblocked (``"false"``) the bot;
- any other update kind → ``event`` with raw_type = the update's key.

:func:`update_key` is both the journal's idempotency key and the Inbound's
``external_id``. It is derived from the content, so a redelivered update (a
webhook retry, a batch polled again after a crash) maps onto the same key.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping

import msgspec

from connectors.base import PayloadRejected
from connectors.webhooks import decode_json
from routing.model import Attachment, Inbound, Sender, ThreadHints

CHANNEL = "telegram"

MESSAGE_KINDS = frozenset({"message", "channel_post", "edited_message", "edited_channel_post",
                           "business_message", "edited_business_message"})
EDIT_KINDS = frozenset({"edited_message", "edited_channel_post", "edited_business_message"})
#: A customer writing to a Telegram Business account the bot is connected to:
#: its own chat, whose message ids are not the bot chat's.
BUSINESS_KINDS = frozenset({"business_message", "edited_business_message"})
MEMBER_KINDS = frozenset({"my_chat_member", "chat_member"})
#: Updates about the bot's own things that name no user: a poll's new state
#: (a bot only gets those of its own polls). They come from the bot, as the
#: other channels' account events do, not from a shared "unknown" user.
BOT_KINDS = frozenset({"poll"})
#: The most deleted business messages one update empties (deleteBusinessMessages
#: takes 100 at a time; a body may list more, but not without bound).
MAX_DELETED = 1000

#: Message fields that make a message a service notice rather than something
#: a person wrote (Bot API, Message object).
SERVICE_FIELDS = (
    "new_chat_members",
    "left_chat_member",
    "new_chat_title",
    "new_chat_photo",
    "delete_chat_photo",
    "group_chat_created",
    "supergroup_chat_created",
    "channel_chat_created",
    "message_auto_delete_timer_changed",
    "migrate_to_chat_id",
    "migrate_from_chat_id",
    "pinned_message",
    "write_access_allowed",
    "forum_topic_created",
    "forum_topic_edited",
    "forum_topic_closed",
    "forum_topic_reopened",
    "video_chat_scheduled",
    "video_chat_started",
    "video_chat_ended",
    "video_chat_participants_invited",
    "boost_added",
    "chat_background_set",
    "proximity_alert_triggered",
    "successful_payment",
    "refunded_payment",
    "users_shared",
    "chat_shared",
    "connected_website",
    "passport_data",
    "giveaway_created",
    "giveaway_completed",
    "gift",
    "unique_gift",
    "general_forum_topic_hidden",
    "general_forum_topic_unhidden",
    "paid_message_price_changed",
    "direct_message_price_changed",
    "checklist_tasks_done",
    "checklist_tasks_added",
    "suggested_post_approved",
    "suggested_post_approval_failed",
    "suggested_post_declined",
    "suggested_post_paid",
    "suggested_post_refunded",
    "chat_owner_left",
    "chat_owner_changed",
    "gift_upgrade_sent",
    "managed_bot_created",
    "poll_option_added",
    "poll_option_deleted",
    # the names older Bot API versions gave (video chats were "voice chats"
    # before 6.0, users_shared was user_shared before 7.0): recorded updates keep them
    "voice_chat_scheduled",
    "voice_chat_started",
    "voice_chat_ended",
    "voice_chat_participants_invited",
    "user_shared",
)

#: File-carrying message fields in the order they are read, with the content
#: type Telegram implies when it gives no ``mime_type``. ``document`` comes
#: after ``animation`` because Telegram sends a GIF as both.
MEDIA_FIELDS: tuple[tuple[str, str], ...] = (
    ("animation", "video/mp4"),
    ("document", "application/octet-stream"),
    ("video", "video/mp4"),
    ("video_note", "video/mp4"),
    ("audio", "audio/mpeg"),
    ("voice", "audio/ogg"),
    ("sticker", "image/webp"),
)
PHOTO_TYPE = "image/jpeg"  # Telegram re-encodes every photo size as JPEG


# ---------------------------------------------------------------- Bot API objects (the fields read)


class _User(msgspec.Struct):
    id: int
    first_name: str = ""
    last_name: str | None = None
    username: str | None = None


class _Chat(msgspec.Struct):
    id: int
    type: str = ""
    title: str | None = None
    username: str | None = None
    first_name: str | None = None
    last_name: str | None = None


class _File(msgspec.Struct):
    """PhotoSize, Document, Audio, Video, Voice, Animation, VideoNote, Sticker."""

    file_id: str
    file_name: str | None = None
    mime_type: str | None = None
    file_size: int | None = None
    width: int = 0
    height: int = 0
    is_animated: bool = False
    is_video: bool = False


class _PaidMedia(msgspec.Struct):
    """One item of paid media; a ``preview`` item (not yet bought) has no file."""

    type: str = ""
    photo: list[_File] = []
    video: _File | None = None


class _MessageRef(msgspec.Struct):
    """A replied-to message, or the (possibly inaccessible) message of a callback."""

    message_id: int
    chat: _Chat | None = None


class _Location(msgspec.Struct):
    latitude: float
    longitude: float


class _Contact(msgspec.Struct):
    phone_number: str
    first_name: str = ""
    last_name: str | None = None
    user_id: int | None = None


class _Message(msgspec.Struct, rename={"from_": "from"}):
    message_id: int
    chat: _Chat
    date: int = 0
    from_: _User | None = None
    sender_chat: _Chat | None = None
    text: str | None = None
    caption: str | None = None
    edit_date: int | None = None
    reply_to_message: _MessageRef | None = None
    media_group_id: str | None = None
    photo: list[_File] = []
    animation: _File | None = None
    document: _File | None = None
    video: _File | None = None
    video_note: _File | None = None
    audio: _File | None = None
    voice: _File | None = None
    sticker: _File | None = None
    location: _Location | None = None
    contact: _Contact | None = None
    venue: dict[str, Any] | None = None
    poll: dict[str, Any] | None = None
    dice: dict[str, Any] | None = None
    # read only for a readable text or their files: any shape is taken (a
    # field Telegram reshapes later must not make the whole message refused)
    story: Any = None
    giveaway: Any = None
    giveaway_winners: Any = None
    checklist: Any = None
    invoice: Any = None
    game: Any = None
    web_app_data: Any = None
    paid_media: Any = None
    business_connection_id: str | None = None


class _CallbackQuery(msgspec.Struct, rename={"from_": "from"}):
    id: str
    from_: _User
    message: _MessageRef | None = None
    data: str | None = None
    game_short_name: str | None = None


class _DeletedBusinessMessages(msgspec.Struct):
    business_connection_id: str
    chat: _Chat
    message_ids: list[int]


class _ChatMember(msgspec.Struct):
    status: str


class _ChatMemberUpdated(msgspec.Struct, rename={"from_": "from"}):
    chat: _Chat
    from_: _User
    date: int
    old_chat_member: _ChatMember
    new_chat_member: _ChatMember


# ---------------------------------------------------------------- envelope: validation, kind, key


def validate_update(obj: Any) -> dict[str, Any]:
    """``obj`` if it is a Bot API Update (an object with an integer ``update_id``)."""
    if not isinstance(obj, dict):
        raise PayloadRejected(f"not a Telegram update: JSON {type(obj).__name__}, expected an object")
    update_id = obj.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool):
        raise PayloadRejected("not a Telegram update: no integer update_id")
    return obj


def decode_update(raw: bytes) -> dict[str, Any]:
    """The JSON object of an update; :class:`PayloadRejected` when it is not one."""
    try:
        obj = decode_json(raw)  # half an emoji escaped alone is read, as U+FFFD
    except RecursionError:  # [[[[…]]]] 10,000 deep: msgspec's depth guard
        raise PayloadRejected("not a Telegram update: JSON nested too deeply") from None
    return validate_update(obj)


def update_kind(update: Mapping[str, Any]) -> str | None:
    """The update's one optional object field (``message``, ``callback_query`` …).

    Telegram sets exactly one; keys a relay added (``bid``, ``_comment``) are
    not objects and are skipped.
    """
    for key, value in update.items():
        if key != "update_id" and isinstance(value, dict):
            return key
    return None


def _int(value: Any) -> int | None:
    digits = value.removeprefix("-") if isinstance(value, str) else ""
    if digits.isascii() and digits.isdigit() and len(value) <= 20:  # "²" is a digit to isdigit(), not to int()
        return int(value)  # a relay that wrote the number as a string
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def update_key(update: Mapping[str, Any]) -> str:
    """Idempotency key and external id of an update, from its content.

    ``<chat_id>:<message_id>`` for a message (``business:…`` in a business chat; the id Telegram's own
    ``reply_to_message`` points at), ``…:edit:<edit_date>`` for an edit of it,
    ``callback:<id>`` for a button press, ``<kind>:<chat>:<date>:<status>`` for
    a membership change; ``update:<update_id>`` when the content has no id.
    """
    kind = update_kind(update)
    body = update.get(kind) if kind else None
    if isinstance(body, dict):
        chat = body.get("chat")
        chat_id = _int(chat.get("id")) if isinstance(chat, dict) else None
        if kind in MESSAGE_KINDS and chat_id is not None and _int(body.get("message_id")) is not None:
            key = f"{'business:' if kind in BUSINESS_KINDS else ''}{chat_id}:{_int(body['message_id'])}"
            edit_date = _int(body.get("edit_date"))
            if kind not in EDIT_KINDS:
                return key
            if edit_date is not None:
                return f"{key}:edit:{edit_date}"
        elif kind == "callback_query" and isinstance(body.get("id"), str):
            return f"callback:{body['id']}"
        elif kind in MEMBER_KINDS and chat_id is not None:
            member = body.get("new_chat_member")
            status = member.get("status") if isinstance(member, dict) else None
            return f"{kind}:{chat_id}:{_int(body.get('date'))}:{status}"
    return f"update:{update['update_id']}"


# ---------------------------------------------------------------- helpers


def _time(ts: int | None) -> datetime | None:
    # Telegram dates are Unix seconds; 0 marks an inaccessible message, and
    # one beyond what a datetime holds is no time at all (not a crash).
    try:
        return datetime.fromtimestamp(ts, timezone.utc) if ts else None
    except (OverflowError, OSError, ValueError):
        return None


def _join(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


def _user_sender(user: _User) -> Sender:
    return Sender(kind=CHANNEL, value=str(user.id), name=_join(user.first_name, user.last_name) or user.username)


def _chat_sender(chat: _Chat) -> Sender:
    name = chat.title or _join(chat.first_name, chat.last_name) or chat.username
    return Sender(kind=CHANNEL, value=str(chat.id), name=name)


def _message_sender(msg: _Message) -> Sender:
    # sender_chat is set when a chat speaks for itself (an anonymous group
    # admin, a linked channel): then ``from`` is a placeholder bot.
    if msg.sender_chat is not None:
        return _chat_sender(msg.sender_chat)
    if msg.from_ is not None:
        return _user_sender(msg.from_)
    return _chat_sender(msg.chat)  # channel posts carry no ``from``


def _attachment(media: _File, default_type: str) -> Attachment:
    return Attachment(
        name=media.file_name,
        content_type=media.mime_type or default_type,
        size=media.file_size or 0,
        sha256="",  # known once fetch_media has downloaded the file
        url=media.file_id,
    )


def _sticker_type(sticker: _File) -> str:
    if sticker.is_animated:
        return "application/x-tgsticker"
    return "video/webm" if sticker.is_video else "image/webp"


def _largest(photo: list[_File]) -> Attachment:
    # Telegram lists the sizes of one photo smallest first; keep the largest.
    return _attachment(max(photo, key=lambda p: (p.width * p.height, p.file_size or 0)), PHOTO_TYPE)


def _paid_media(info: Any) -> list[_PaidMedia]:
    """The readable items of a PaidMediaInfo; an item of another shape is skipped."""
    items = info.get("paid_media") if isinstance(info, dict) else None
    out: list[_PaidMedia] = []
    for item in items if isinstance(items, list) else ():
        try:
            out.append(msgspec.convert(item, _PaidMedia, strict=False))
        except msgspec.ValidationError:
            continue
    return out


def _attachments(msg: _Message) -> list[Attachment]:
    out: list[Attachment] = []
    if msg.photo:
        out.append(_largest(msg.photo))
    for item in _paid_media(msg.paid_media):
        if item.photo:
            out.append(_largest(item.photo))
        elif item.video is not None:
            out.append(_attachment(item.video, "video/mp4"))
    for field, default_type in MEDIA_FIELDS:
        media: _File | None = getattr(msg, field)
        if media is None or (field == "document" and msg.animation is not None):
            continue
        out.append(_attachment(media, _sticker_type(media) if field == "sticker" else default_type))
    return out


def _chat_meta(chat: _Chat, update_id: int) -> dict[str, str]:
    meta = {"chat_id": str(chat.id), "chat_type": chat.type, "update_id": str(update_id)}
    if chat.title:
        meta["chat_title"] = chat.title
    return meta


def _convert(body: Any, kind: str, type_: type[msgspec.Struct]) -> Any:
    try:
        # strict=False: an id or date a relay wrote as a string ("1441645532") still reads
        return msgspec.convert(body, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise PayloadRejected(f"not a Telegram {kind}: {exc}") from None


# ---------------------------------------------------------------- one function per update kind


def _message(kind: str, body: Any, update_id: int, key: str, account: str) -> Inbound:
    msg: _Message = _convert(body, kind, _Message)
    sender = _message_sender(msg)
    meta = _chat_meta(msg.chat, update_id)
    meta["message_id"] = str(msg.message_id)
    # the bot sees both sides of a business chat: a message from someone other than the
    # customer the private chat is with is the business account's own (its owner or staff)
    private = msg.sender_chat is None and msg.chat.type in ("private", "")
    owner = msg.from_ if kind in BUSINESS_KINDS and private else None
    outbound = owner is not None and owner.id != msg.chat.id
    if owner is not None and outbound:
        sender = _chat_sender(msg.chat)
        meta.update(direction="outbound", agent=f"{CHANNEL}:business:{owner.id}")
    username = msg.from_.username if msg.from_ and msg.sender_chat is None and not outbound else msg.chat.username
    if username:
        meta["username"] = username
    if msg.media_group_id:
        meta["media_group_id"] = msg.media_group_id
    if msg.location:
        meta["latitude"], meta["longitude"] = str(msg.location.latitude), str(msg.location.longitude)
    if msg.contact:
        meta["contact_phone"] = msg.contact.phone_number
        if msg.from_ is not None and msg.contact.user_id == msg.from_.id and not outbound:
            # the user shared their own number (Telegram's "share my phone"):
            # a phone identity Telegram vouches for, linked to other channels
            meta["phone"] = msg.contact.phone_number
    business = "business:" if kind in BUSINESS_KINDS else ""
    if msg.business_connection_id:
        meta["business_connection_id"] = msg.business_connection_id
    original = f"{business}{msg.chat.id}:{msg.message_id}"
    edited = kind in EDIT_KINDS
    attachments = _attachments(msg)
    text = msg.text if msg.text is not None else (msg.caption or "")
    if not text and msg.contact:
        name = " ".join(x for x in (msg.contact.first_name, msg.contact.last_name) if x)
        text = f"{name} {msg.contact.phone_number}".strip()
    if not text:
        text = _readable(msg)
    if not text and msg.location:  # a shared (or live) location: where, as the other channels say it
        text = f"📍 {msg.location.latitude}, {msg.location.longitude}"
    service = "" if text or attachments or msg.location or msg.contact else _service_field(body)
    return Inbound(
        channel=CHANNEL,
        account=account,
        external_id=key,
        kind="event" if service else "message",
        sender=sender,
        text=text,
        attachments=attachments,
        thread=ThreadHints(
            message_id=original,
            in_reply_to=f"{business}{msg.chat.id}:{msg.reply_to_message.message_id}" if msg.reply_to_message else None,
        ),
        sent_at=_time(msg.edit_date if edited and msg.edit_date else msg.date),
        raw_type=f"{kind}.{service}" if service else kind,
        edits=original if edited else None,
        meta=meta,
    )


def _strings(obj: Mapping[str, Any], *keys: str, sep: str = " — ") -> str:
    """The named string fields of an object that are set, joined."""
    return sep.join(str(obj[k]) for k in keys if isinstance(obj.get(k), str) and obj[k])


def _item_lines(head: str, items: Any, key: str) -> str:
    """A heading and one ``- item`` line per object of a list that has ``key`` as a string."""
    texts = [o[key] for o in items or [] if isinstance(o, dict) and isinstance(o.get(key), str)] if isinstance(items, list) else []
    return "\n".join([head, *(f"- {t}" for t in texts)]) if head or texts else ""


def _readable(msg: _Message) -> str:
    """The text of content that has none of its own: a venue's name and
    address, a poll's question and options, a dice throw, a checklist's
    tasks, a giveaway's prize, an invoice's or a game's title, a Web App's
    data, a forwarded story."""
    if msg.venue:
        return _strings(msg.venue, "title", "address")
    if msg.poll and isinstance(msg.poll.get("question"), str):
        return _item_lines(msg.poll["question"], msg.poll.get("options"), "text")
    if msg.dice and isinstance(msg.dice.get("emoji"), str):
        return f"{msg.dice['emoji']} {msg.dice.get('value', '')}".strip()
    if isinstance(msg.checklist, dict):
        return _item_lines(_strings(msg.checklist, "title"), msg.checklist.get("tasks"), "text")
    for giveaway in (msg.giveaway, msg.giveaway_winners):
        if isinstance(giveaway, dict):
            count = giveaway.get("winner_count")
            winners = f"({count} winner{'' if count == 1 else 's'})" if isinstance(count, int) else None
            return _join("Giveaway:", _strings(giveaway, "prize_description"), winners)
    for titled in (msg.invoice, msg.game):
        if isinstance(titled, dict):
            return _strings(titled, "title", "description")
    if isinstance(msg.web_app_data, dict):
        return _strings(msg.web_app_data, "button_text", "data", sep=": ")
    if isinstance(msg.story, dict):
        chat = msg.story.get("chat") if isinstance(msg.story.get("chat"), dict) else {}
        origin = _strings(chat, "title") or (f"@{chat['username']}" if isinstance(chat.get("username"), str) else "")
        return _join("Story", f"from {origin}" if origin else None)
    return ""


def _service_field(body: Mapping[str, Any]) -> str:
    return next((f for f in SERVICE_FIELDS if f in body), "")


def _callback_query(kind: str, body: Any, update_id: int, key: str, account: str) -> Inbound:
    cq: _CallbackQuery = _convert(body, kind, _CallbackQuery)
    meta = {"update_id": str(update_id), "callback_id": cq.id}
    if cq.from_.username:
        meta["username"] = cq.from_.username
    if cq.data is not None:
        meta["data"] = cq.data
    if cq.game_short_name:
        meta["game_short_name"] = cq.game_short_name
    in_reply_to = None
    if cq.message is not None and cq.message.chat is not None:
        meta.update(chat_id=str(cq.message.chat.id), chat_type=cq.message.chat.type)
        # the bot's message that carried the button: what send() returned as its id
        in_reply_to = f"{cq.message.chat.id}:{cq.message.message_id}"
    return Inbound(
        channel=CHANNEL,
        account=account,
        external_id=key,
        kind="event",
        sender=_user_sender(cq.from_),
        thread=ThreadHints(in_reply_to=in_reply_to),
        raw_type=kind,
        meta=meta,
    )


def _member_update(kind: str, body: Any, update_id: int, key: str, account: str) -> Inbound:
    cmu: _ChatMemberUpdated = _convert(body, kind, _ChatMemberUpdated)
    meta = _chat_meta(cmu.chat, update_id)
    meta.update(old_status=cmu.old_chat_member.status, new_status=cmu.new_chat_member.status)
    if cmu.from_.username:
        meta["username"] = cmu.from_.username
    if kind == "my_chat_member" and cmu.chat.type == "private":
        # In a private chat the bot's own membership only changes when the
        # user blocks it ("kicked") or unblocks/restarts it ("member").
        meta["blocked"] = "true" if cmu.new_chat_member.status == "kicked" else "false"
    return Inbound(
        channel=CHANNEL,
        account=account,
        external_id=key,
        kind="event",
        sender=_user_sender(cmu.from_),
        sent_at=_time(cmu.date),
        raw_type=kind,
        meta=meta,
    )


def _deleted_business_messages(kind: str, body: Any, update_id: int, key: str, account: str) -> list[Inbound]:
    """Messages deleted in a business chat: one event per message, each
    emptying it (``edits`` = its id, ``meta["deleted"]``), as a revoke,
    unsend or deleted message does on the other channels."""
    deleted: _DeletedBusinessMessages = _convert(body, kind, _DeletedBusinessMessages)
    if not deleted.message_ids:
        return [_other(kind, body, update_id, key, account)]
    meta = _chat_meta(deleted.chat, update_id)
    meta.update(business_connection_id=deleted.business_connection_id, deleted="true")
    ids = list(dict.fromkeys(deleted.message_ids))  # a repeated id is one deletion
    inbounds = [
        Inbound(
            channel=CHANNEL,
            account=account,
            external_id=f"business:{deleted.chat.id}:{mid}:deleted",
            kind="event",
            sender=_chat_sender(deleted.chat),  # the private chat with the customer: their id
            raw_type=kind,
            edits=f"business:{deleted.chat.id}:{mid}",
            meta={**meta, "message_id": str(mid)},
        )
        for mid in ids[:MAX_DELETED]
    ]
    if len(ids) > MAX_DELETED:  # a hostile body of half a million ids: not as many Inbounds
        inbounds[0].defects.append(f"{kind}: {len(ids)} message ids, only the first {MAX_DELETED} emptied")
    return inbounds


def _other(kind: str, body: Any, update_id: int, key: str, account: str) -> Inbound:
    """An update kind this parser does not model: kept as an event, never dropped."""
    defects: list[str] = []
    sender = _find_sender(body)
    if sender is None and kind in BOT_KINDS:
        sender = Sender(kind="external", value=f"telegram-bot:{account}", name=f"Telegram bot {account}")
    elif sender is None:
        sender = Sender(kind=CHANNEL, value="unknown")
        defects.append(f"{kind}: no user or chat to attribute it to")
    return Inbound(
        channel=CHANNEL,
        account=account,
        external_id=key,
        kind="event",
        sender=sender,
        raw_type=kind,
        defects=defects,
        meta={"update_id": str(update_id)},
    )


def _message_reaction(kind: str, body: Any, update_id: int, key: str, account: str) -> Inbound:
    """A reaction changed on a message: an event on that message, with the
    emoji now set (``meta["emoji"]``, empty when the reaction was removed),
    as WhatsApp's and Messenger's reactions."""
    event = _other(kind, body, update_id, key, account)  # body: an object (update_kind)
    chat = body.get("chat") if isinstance(body.get("chat"), dict) else {}
    chat_id, message_id = _int(chat.get("id")), _int(body.get("message_id"))
    if chat_id is not None and message_id is not None:
        event.thread = ThreadHints(in_reply_to=f"{chat_id}:{message_id}")
        event.meta.update(chat_id=str(chat_id), reacted_to=f"{chat_id}:{message_id}")
    new = body.get("new_reaction")
    reactions = [r for r in new if isinstance(r, dict)] if isinstance(new, list) else []
    event.meta["emoji"] = "".join(r["emoji"] for r in reactions if isinstance(r.get("emoji"), str))
    if any(r.get("type") == "custom_emoji" for r in reactions):
        event.meta["custom_emoji"] = "true"
    event.sent_at = _time(_int(body.get("date")))
    return event


def _find_sender(body: Any) -> Sender | None:
    if not isinstance(body, dict):
        return None
    # an anonymous voter or reacting admin is the chat they act for (``voter_chat``,
    # ``actor_chat``), not the group the update happened in (``chat``)
    for field, type_, make in (("from", _User, _user_sender), ("user", _User, _user_sender),
                               ("voter_chat", _Chat, _chat_sender), ("actor_chat", _Chat, _chat_sender),
                               ("chat", _Chat, _chat_sender)):
        try:
            return make(msgspec.convert(body[field], type_))
        except (KeyError, msgspec.ValidationError):
            continue
    return None


_BY_KIND = {
    **dict.fromkeys(MESSAGE_KINDS, _message),
    "callback_query": _callback_query,
    "message_reaction": _message_reaction,
    **dict.fromkeys(MEMBER_KINDS, _member_update),
}


def account_of(context: Mapping[str, Any]) -> str:
    """The bot id: given as ``account``, or the numeric prefix of the ``token``."""
    account = context.get("account")
    if account:
        return str(account)
    token = context.get("token")
    if isinstance(token, str) and token.partition(":")[0].isdigit():
        return token.partition(":")[0]
    return CHANNEL


def parse(raw: bytes, context: Mapping[str, Any]) -> list[Inbound]:
    """One Inbound per update; :class:`PayloadRejected` for bytes that are not one."""
    update = decode_update(raw)
    kind = update_kind(update)
    if kind is None:
        raise PayloadRejected("not a Telegram update: update_id but no update object (message, callback_query …)")
    if kind == "deleted_business_messages":  # several messages at once: one Inbound each
        return _deleted_business_messages(kind, update[kind], update["update_id"], update_key(update),
                                          account_of(context))
    handler = _BY_KIND.get(kind, _other)
    return [handler(kind, update[kind], update["update_id"], update_key(update), account_of(context))]
