"""The pure Telegram parser (no outside resource): every telegram row of the
corpus, the labelled synthetic fixtures, and what must be refused."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from connectors.base import PayloadRejected
from connectors.registry import validate_all
from connectors.telegram.parse import parse, update_key
from routing.model import Inbound
from tests.corpus import Row, params

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "telegram"
ROOT = Path(__file__).resolve().parents[3]
CONTEXT = {"account": "1111111"}


def parse_one(raw: bytes, context: dict | None = None) -> Inbound:
    inbounds = parse(raw, CONTEXT if context is None else context)
    assert len(inbounds) == 1
    return inbounds[0]


def fixture(name: str) -> Inbound:
    return parse_one((FIXTURES / name).read_bytes())


# ---------------------------------------------------------------- corpus

#: Manifest facts checked below; anything else in a telegram row fails the
#: test, so a new fact is never silently ignored.
FACT_KEYS = {
    "update_id", "kind", "chat.id", "chat.type", "chat.title", "from", "from.id", "from.name",
    "from.username", "message_id", "date", "text", "caption",
    "document.file_id", "document.file_name", "document.mime_type", "video.file_id",
    "video.mime_type", "voice.file_id", "voice.mime_type", "sticker.file_id",
}  # fmt: skip


def check_fact(inbound: Inbound, key: str, value: str) -> None:
    meta = inbound.meta
    if key == "update_id":
        assert meta["update_id"] == value
    elif key == "kind":
        assert inbound.raw_type == value and inbound.kind == "message"
    elif key == "chat.id":
        assert meta["chat_id"] == value
    elif key == "chat.type":
        assert meta["chat_type"] == value
    elif key == "chat.title":
        assert meta["chat_title"] == value
    elif key == "from":  # "absent": a channel post speaks as its chat
        assert value == "absent" and inbound.sender.value == meta["chat_id"]
    elif key == "from.id":
        assert inbound.sender.value == value
    elif key == "from.name":
        assert inbound.sender.name == value
    elif key == "from.username":
        assert meta["username"] == value
    elif key == "message_id":
        assert inbound.external_id == f"{meta['chat_id']}:{value}" == inbound.thread.message_id
    elif key == "date":
        assert inbound.sent_at == datetime.fromtimestamp(int(value), timezone.utc)
    elif key in ("text", "caption"):
        assert inbound.text == value
    else:  # <media>.file_id / file_name / mime_type: the one attachment
        (attachment,) = inbound.attachments
        attr = {"file_id": "url", "file_name": "name", "mime_type": "content_type"}[key.split(".")[1]]
        assert getattr(attachment, attr) == value
        assert attachment.sha256 == ""  # until fetch_media downloads it


@pytest.mark.corpus
@pytest.mark.parametrize("corpus_row", params("telegram"), indirect=True)
def test_corpus_row(corpus_row: Row) -> None:
    inbound = parse_one(corpus_row.read(), {**corpus_row.context, **CONTEXT})
    facts = corpus_row.facts()
    assert set(facts) <= FACT_KEYS, f"unchecked facts: {set(facts) - FACT_KEYS}"
    for key, value in facts.items():
        check_fact(inbound, key, value)
    largest = re.search(r"largest file_id=(\w+)", corpus_row.expected)
    if largest:  # "photo sizes=3; largest file_id=…": one attachment, the biggest size
        (photo,) = inbound.attachments
        assert (photo.url, photo.content_type) == (largest.group(1), "image/jpeg")
    assert inbound.account == "1111111"
    assert inbound.external_id == update_key(json.loads(corpus_row.read()))
    assert parse(corpus_row.read(), CONTEXT) == parse(corpus_row.read(), CONTEXT)  # pure


# ---------------------------------------------------------------- synthetic fixtures (labelled)


def test_fixtures_are_labelled() -> None:
    for path in FIXTURES.glob("*.json"):
        assert "synthetic" in path.name
        assert "core.telegram.org/bots/api" in json.loads(path.read_text())["_comment"]


def test_edited_message_points_at_the_original() -> None:
    edit = fixture("synthetic_edited_message.json")
    assert (edit.kind, edit.raw_type, edit.text) == ("message", "edited_message", "Hello, I need your help with order 4711")
    assert edit.edits == "111111:5"  # the external id of the corpus's zammad_private_text.json
    assert edit.external_id == "111111:5:edit:1441645600" != edit.edits
    assert edit.sent_at == datetime(2015, 9, 7, 17, 6, 40, tzinfo=timezone.utc)  # the edit's time


def test_business_messages_are_messages_in_their_own_chat() -> None:
    msg = fixture("synthetic_business_message.json")
    assert (msg.kind, msg.raw_type, msg.text) == ("message", "business_message", "hi business")
    assert msg.sender.value == "424242" and msg.meta["business_connection_id"] == "bc1"
    # the business chat's message ids are not the bot chat's: its keys never collide with them
    assert msg.external_id == msg.thread.message_id == "business:424242:77"
    edit = fixture("synthetic_edited_business_message.json")
    assert (edit.kind, edit.edits, edit.text) == ("message", "business:424242:77", "hi business!")
    assert edit.external_id == "business:424242:77:edit:1700000100"


@pytest.mark.parametrize(("name", "text"), [
    ("synthetic_venue.json", "Cafe — 1 Main St"),
    ("synthetic_poll.json", "Which plan?\n- A"),
    ("synthetic_dice.json", "🎲 4"),
    ("synthetic_checklist.json", "Return steps\n- Pack the shoes\n- Print the label"),
    ("synthetic_web_app_data.json", 'Order form: {"order":4711,"size":42}'),
    ("synthetic_story.json", "Story from Shoe Shop News"),
    ("synthetic_giveaway.json", "Giveaway: Running shoes (3 winners)"),
])
def test_content_without_text_gets_a_readable_one(name: str, text: str) -> None:
    msg = fixture(name)
    assert (msg.kind, msg.text) == ("message", text)


def test_paid_media_files_are_attachments() -> None:
    msg = fixture("synthetic_paid_media.json")
    assert msg.kind == "message"
    (photo,) = msg.attachments  # the preview item has no file
    assert (photo.url, photo.content_type, photo.size) == ("paidlarge", "image/jpeg", 98000)


def test_payment_notice_is_an_event_and_odd_shapes_are_not_refused() -> None:
    event = fixture("synthetic_successful_payment.json")
    assert (event.kind, event.raw_type) == ("event", "message.successful_payment")
    # a field read only for a text or its files, in a shape Telegram may give it later
    update = json.loads((FIXTURES / "synthetic_paid_media.json").read_text())
    update["message"]["paid_media"]["paid_media"].append({"type": "photo", "photo": "not-a-list"})
    update["message"]["story"] = "12"
    assert [a.url for a in parse_one(json.dumps(update).encode()).attachments] == ["paidlarge"]


@pytest.mark.parametrize("field", ["suggested_post_paid", "suggested_post_approved", "suggested_post_approval_failed",
                                   "suggested_post_declined", "suggested_post_refunded"])
def test_suggested_post_notices_are_events(field: str) -> None:
    # Bot API 9.2 service messages (https://core.telegram.org/bots/api#message): they
    # were empty customer messages from the channel
    update = json.loads((FIXTURES / "synthetic_suggested_post_paid.json").read_text())
    update["message"][field] = update["message"].pop("suggested_post_paid")
    event = parse_one(json.dumps(update).encode())
    assert (event.kind, event.raw_type, event.text) == ("event", f"message.{field}", "")


def test_shared_location_says_where() -> None:
    # https://core.telegram.org/bots/api#location: it was a customer message with an empty text
    # (the coordinates only in meta), where the other channels say "📍 lat, long"
    msg = fixture("synthetic_location.json")
    assert (msg.kind, msg.text, msg.meta["latitude"]) == ("message", "📍 52.520008, 13.404954", "52.520008")


def test_deleted_business_messages_are_bounded() -> None:
    # a hostile body listing 200,000 ids (1.4 MB) gave as many Inbounds; a repeated id gave two
    update = json.loads((FIXTURES / "synthetic_deleted_business_messages.json").read_text())
    update["deleted_business_messages"]["message_ids"] = [7, 7, *range(100, 200_100)]
    inbounds = parse(json.dumps(update).encode(), CONTEXT)
    assert len(inbounds) == 1000 and len({i.external_id for i in inbounds}) == 1000
    assert inbounds[0].defects == ["deleted_business_messages: 200001 message ids, only the first 1000 emptied"]


def test_business_owners_own_message_is_outbound_to_the_customer() -> None:
    # both sides of a business chat arrive as business_message: the owner's answer was a customer
    # message from a contact "Shoe Shop" (515151)
    msg = fixture("synthetic_business_message_from_owner.json")
    assert (msg.kind, msg.sender.value, msg.sender.name) == ("message", "424242", "Ann Lee")
    assert (msg.meta["direction"], msg.meta["agent"], msg.meta["username"]) == (
        "outbound", "telegram:business:515151", "annlee")
    assert msg.thread.in_reply_to == "business:424242:77"
    assert "direction" not in fixture("synthetic_business_message.json").meta  # the customer's own


def test_deleted_business_messages_empty_each_message() -> None:
    # https://core.telegram.org/bots/api#businessmessagesdeleted: it was one event naming no message,
    # the deletion lost (WhatsApp's revoke, Messenger's is_deleted and LINE's unsend empty theirs)
    first, second = parse((FIXTURES / "synthetic_deleted_business_messages.json").read_bytes(), CONTEXT)
    assert (first.kind, first.raw_type, first.edits, first.meta["deleted"]) == (
        "event", "deleted_business_messages", "business:424242:77", "true")
    assert (second.edits, second.external_id) == ("business:424242:78", "business:424242:78:deleted")
    assert first.sender.value == "424242"
    assert first.meta["business_connection_id"] == "synthetic-business-connection-171"


@pytest.mark.parametrize("field", ["chat_owner_left", "chat_owner_changed", "gift_upgrade_sent",
                                   "managed_bot_created", "poll_option_added", "poll_option_deleted"])
def test_bot_api_9_service_notices_are_events(field: str) -> None:
    # Bot API 9.x service messages (https://core.telegram.org/bots/api#message): they were
    # empty customer messages from whoever triggered them
    update = json.loads((FIXTURES / "synthetic_chat_owner_left.json").read_text())
    update["message"][field] = update["message"].pop("chat_owner_left")
    event = parse_one(json.dumps(update).encode())
    assert (event.kind, event.raw_type, event.text) == ("event", f"message.{field}", "")


@pytest.mark.parametrize("field", ["voice_chat_started", "voice_chat_scheduled", "voice_chat_ended",
                                   "voice_chat_participants_invited", "user_shared"])
def test_service_notices_under_their_older_names_are_events(field: str) -> None:
    # recorded Bot API 5.x/6.x updates (https://core.telegram.org/bots/api-changelog): they were
    # empty customer messages
    update = json.loads((FIXTURES / "synthetic_voice_chat_started.json").read_text())
    update["message"][field] = update["message"].pop("voice_chat_started")
    event = parse_one(json.dumps(update).encode())
    assert (event.kind, event.raw_type, event.text) == ("event", f"message.{field}", "")


def test_ids_written_as_strings_and_dates_out_of_range_still_parse() -> None:
    # A relay that re-serialises the Bot API Update (https://core.telegram.org/bots/api#update)
    # with numbers as strings; a date no datetime holds was an OverflowError crash.
    update = json.loads((FIXTURES / "synthetic_edited_message.json").read_text())
    body = update["edited_message"]
    body["message_id"], body["chat"]["id"], body["from"]["id"] = "5", "111111", "111111"
    msg = parse_one(json.dumps(update).encode())
    assert (msg.external_id.split(":edit:")[0], msg.sender.value) == ("111111:5", "111111")
    body["edit_date"] = body["date"] = 10**20
    msg = parse_one(json.dumps(update).encode())
    assert msg.sent_at is None and msg.text


def test_ids_written_in_digits_int_does_not_read_are_not_numbers_not_a_crash() -> None:
    # "²" is a digit to str.isdigit() but not to int(): the webhook's key was a ValueError (a 500)
    update = json.loads((FIXTURES / "synthetic_edited_message.json").read_text())
    body = update["edited_message"]
    body["message_id"], body["chat"]["id"] = "\u00b2", "-\u00b2"
    assert update_key(update)  # not numbers: the update's own key
    with pytest.raises(PayloadRejected, match="message_id"):  # refused with the field, not a ValueError crash
        parse_one(json.dumps(update).encode())


def test_callback_query_is_an_event_with_its_data() -> None:
    event = fixture("synthetic_callback_query.json")
    assert (event.kind, event.raw_type, event.external_id) == ("event", "callback_query", "callback:4382bfdwdsb323b2d9")
    assert event.sender.value == "111111" and event.sender.name == "Test Firstname Test Lastname"
    assert event.meta["data"] == "csat:yes"
    assert event.meta["chat_id"] == "111111"
    assert event.thread.in_reply_to == "111111:42"  # the bot's message that carried the button


@pytest.mark.parametrize(
    ("name", "blocked", "status"),
    [("synthetic_my_chat_member_kicked.json", "true", "kicked"), ("synthetic_my_chat_member_unblocked.json", "false", "member")],
)
def test_my_chat_member_says_whether_the_user_blocked_the_bot(name: str, blocked: str, status: str) -> None:
    event = fixture(name)
    assert (event.kind, event.raw_type, event.sender.value) == ("event", "my_chat_member", "111111")
    assert event.meta["blocked"] == blocked and event.meta["new_status"] == status


@pytest.mark.parametrize("member", [-1, "kicked", ["kicked"], None])
def test_a_member_update_of_another_shape_is_refused_not_a_crash(member) -> None:
    # the idempotency key read new_chat_member.status without a type check: AttributeError
    update = json.loads((FIXTURES / "synthetic_my_chat_member_kicked.json").read_text())
    update["my_chat_member"]["new_chat_member"] = member
    assert update_key(update) == f"my_chat_member:111111:{update['my_chat_member']['date']}:None"
    with pytest.raises(PayloadRejected, match="not a Telegram my_chat_member"):
        parse_one(json.dumps(update).encode())


def test_group_message_with_audio_replying_to_the_bot() -> None:
    msg = fixture("synthetic_group_audio_reply.json")
    assert msg.sender.value == "222222"  # the person, not the group
    assert msg.meta["chat_id"] == "-1001234567890" and msg.meta["chat_title"] == "Customer Group"
    assert msg.text == "here is the recording"
    assert msg.thread.in_reply_to == "-1001234567890:76"
    (audio,) = msg.attachments
    assert (audio.url, audio.name, audio.content_type, audio.size) == ("audiofileid", "call.mp3", "audio/mpeg", 20480)


def test_service_message_is_an_event() -> None:
    event = fixture("synthetic_group_new_members.json")
    assert (event.kind, event.raw_type, event.sender.name) == ("event", "message.new_chat_members", "New Member")


def test_unknown_update_kind_is_kept_as_an_event() -> None:
    event = fixture("synthetic_message_reaction.json")
    assert (event.kind, event.raw_type, event.external_id) == ("event", "message_reaction", "update:17")
    assert event.sender.value == "111111" and not event.defects


def test_reaction_names_the_message_and_the_emoji() -> None:
    # https://core.telegram.org/bots/api#messagereactionupdated: which message and which emoji were
    # dropped (WhatsApp's and Messenger's reactions keep both)
    event = fixture("synthetic_message_reaction.json")
    assert (event.thread.in_reply_to, event.meta["reacted_to"], event.meta["emoji"]) == (
        "111111:42", "111111:42", "\N{THUMBS UP SIGN}")
    removed = json.loads((FIXTURES / "synthetic_message_reaction_actor_chat.json").read_text())
    removed["message_reaction"].update(old_reaction=removed["message_reaction"]["new_reaction"], new_reaction=[])
    assert parse_one(json.dumps(removed).encode()).meta["emoji"] == ""


def test_unknown_update_without_a_person_records_a_defect() -> None:
    event = parse_one(b'{"update_id": 9, "future_update": {"id": "5", "question": "?", "options": []}}')
    assert (event.kind, event.raw_type, event.sender.value) == ("event", "future_update", "unknown")
    assert event.defects == ["future_update: no user or chat to attribute it to"]


def test_poll_state_comes_from_the_bot() -> None:
    # https://core.telegram.org/bots/api#update (poll: "bots receive only updates about manually
    # stopped polls and polls, which are sent by the bot"): it was the shared "unknown" user
    (event,) = parse((FIXTURES / "synthetic_poll_state.json").read_bytes(), CONTEXT)
    assert (event.kind, event.raw_type, event.defects) == ("event", "poll", [])
    assert (event.sender.kind, event.sender.value) == ("external", "telegram-bot:1111111")


@pytest.mark.parametrize(("name", "sender", "name_"), [
    ("synthetic_poll_answer_voter_chat.json", "-1009000000051", "Shoe Shop News"),
    ("synthetic_message_reaction_actor_chat.json", "-1009000000053", "Shoe Shop News"),
])
def test_an_update_on_behalf_of_a_chat_comes_from_that_chat(name: str, sender: str, name_: str) -> None:
    # https://core.telegram.org/bots/api#pollanswer (voter_chat) and #messagereactionupdated
    # (actor_chat): the vote was from the shared "unknown" sender, the reaction from the group
    event = fixture(name)
    assert (event.kind, event.sender.value, event.sender.name, event.defects) == ("event", sender, name_, [])


# ---------------------------------------------------------------- keys, account, refusals


def test_redelivery_keeps_its_key_and_an_edit_gets_a_new_one() -> None:
    text = {"update_id": 5, "message": {"message_id": 5, "date": 1, "chat": {"id": 7}, "text": "a"}}
    redelivered = dict(text, update_id=6)  # same message, delivered again under another update id
    edited = {"update_id": 7, "edited_message": dict(text["message"], edit_date=2, text="b")}
    assert update_key(text) == update_key(redelivered) == "7:5"
    assert update_key(edited) == "7:5:edit:2"


def test_account_is_the_bot_id_from_the_context() -> None:
    raw = b'{"update_id": 1, "message": {"message_id": 1, "date": 1, "chat": {"id": 7}, "text": "hi"}}'
    assert parse_one(raw, {"token": "987654:AAH-secret"}).account == "987654"
    assert parse_one(raw, {"account": "42", "token": "987654:x"}).account == "42"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"<xml>not json</xml>", "not JSON"),
        (b'{"message": {"message_id": 1, "chat": {"id": 1}}}', "no integer update_id"),
        (b'{"update_id": "1", "message": {}}', "no integer update_id"),
        (b"[1, 2]", "expected an object"),
        (b'{"update_id": 1}', "no update object"),
        (b'{"update_id": 1, "message": {"message_id": 1, "chat": {"id": "x"}}}', "$.chat.id"),
    ],
)
def test_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadRejected, match=re.escape(reason)):
        parse(raw, CONTEXT)


def test_manifest_is_valid() -> None:
    assert validate_all(["telegram"]) == []


def test_cli_refuses_what_is_not_an_update(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"ok": true}')
    good = FIXTURES / "synthetic_callback_query.json"
    cli = [sys.executable, "-m", "gateway.cli", "parse", "telegram", str(good), str(bad)]
    done = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.strip() == f"{bad}: error: not a Telegram update: no integer update_id"
    (line,) = done.stdout.splitlines()
    assert json.loads(line)["raw_type"] == "callback_query"


def test_a_user_sharing_their_own_number_gives_a_phone_identity():
    """Synthetic, after the Bot API's Contact object (core.telegram.org/bots/api#contact)."""
    update = {"update_id": 12, "message": {
        "message_id": 8, "date": 1700000000, "chat": {"id": 42, "type": "private", "first_name": "Li"},
        "from": {"id": 42, "is_bot": False, "first_name": "Li"},
        "contact": {"phone_number": "+8613800138000", "first_name": "Li", "user_id": 42}}}
    (inbound,) = parse(json.dumps(update).encode(), {})
    assert inbound.meta["phone"] == "+8613800138000" and inbound.text == "Li +8613800138000"
    update["message"]["contact"]["user_id"] = 7  # someone else's card: not the sender's identity
    (inbound,) = parse(json.dumps(update).encode(), {})
    assert "phone" not in inbound.meta and inbound.meta["contact_phone"] == "+8613800138000"
