"""The pure WhatsApp, Messenger/Instagram and LINE parsers (no outside
resource): every social row of the corpus, the labelled synthetic fixtures
built from the platforms' documentation, and what must be refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from connectors.base import PayloadRejected
from connectors.line import parse as line
from connectors.messenger import client as messenger_client
from connectors.messenger import parse as messenger
from connectors.registry import parse_channels, validate_all
from connectors.whatsapp import parse as whatsapp
from routing.model import Inbound
from tests.corpus import Row, params

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "social"
PARSERS = {"whatsapp": whatsapp.parse, "messenger": messenger.parse, "line": line.parse}


def platform(row: Row) -> str:
    name = Path(row.path).name
    return next(p for p in ("whatsapp", "messenger", "instagram", "line") if p in name)


def test_registry_knows_the_four_parser_names() -> None:
    assert {"whatsapp", "messenger", "instagram", "line"} <= set(parse_channels())
    assert validate_all(["whatsapp", "messenger", "instagram", "line"]) == []


# ---------------------------------------------------------------- corpus


@pytest.mark.parametrize("corpus_row", params("social"), indirect=True)
def test_corpus_payload(corpus_row: Row) -> None:
    """Each payload normalizes; its sender, text and message id are there."""
    row = corpus_row
    inbounds = PARSERS[platform(row)](row.file.read_bytes(), row.context)
    assert inbounds, "no Inbound"
    exp = row.expected
    m = re.search(r"\btext=([^;]+)", exp)
    if m:
        assert m.group(1).strip() in " ".join(i.text for i in inbounds)
    m = re.search(r"from(?:/wa_id)?=(\d{6,})", exp)
    if m:
        assert inbounds[0].sender == inbounds[0].sender.__class__("whatsapp", f"+{m.group(1)}", inbounds[0].sender.name)
    m = re.search(r"\bid=(wamid\.[^\s;]+)", exp)
    if m and "status=" not in exp:  # the manifest abbreviates long ids with "..."
        assert inbounds[0].external_id.startswith(m.group(1).removesuffix("..."))


def corpus_file(name: str) -> Path:
    from tests.corpus import CORPUS, require_corpus

    require_corpus()
    assert CORPUS is not None
    return CORPUS / "social" / name


def test_whatsapp_signed_corpus_payload_verifies_and_a_tampered_one_is_refused() -> None:
    raw = corpus_file("whatsapp_pywa_signed_text.json").read_bytes()
    meta = json.loads(corpus_file("whatsapp_pywa_signed_text.meta.json").read_text())
    context = {"app_secret": meta["app_secret"], "headers": meta["headers"]}
    (inbound,) = whatsapp.parse(raw, context)
    assert (inbound.sender.value, inbound.sender.name, inbound.account) == ("+972544401243", "PyWa Tests", "277321005464405")
    with pytest.raises(PayloadRejected, match="X-Hub-Signature-256 does not match"):
        whatsapp.parse(raw.replace(b"Hey", b"Hay"), context)
    with pytest.raises(PayloadRejected, match="does not match"):
        whatsapp.parse(raw, {**context, "app_secret": "another-secret"})
    with pytest.raises(PayloadRejected, match="header missing"):
        whatsapp.parse(raw, {"app_secret": meta["app_secret"], "headers": {"Content-Type": "application/json"}})


def test_whatsapp_status_is_a_delivery_report_not_a_message() -> None:
    (status,) = whatsapp.parse(corpus_file("whatsapp_pywa_message_status_sent.json").read_bytes(), {})
    assert (status.kind, status.raw_type, status.external_id) == ("event", "status", "wamid.xyzxyz:status:sent")
    assert status.meta["status_of"] == "wamid.xyzxyz" and status.meta["status"] == "sent"


def test_whatsapp_corpus_kinds() -> None:
    def one(name: str) -> Inbound:
        (i,) = whatsapp.parse(corpus_file(name).read_bytes(), {})
        return i

    image = one("whatsapp_pywa_message_image.json")
    assert [(a.url, a.content_type) for a in image.attachments] == [("65463453", "image/jpeg")]
    voice = one("whatsapp_pywa_message_voice.json")
    assert voice.meta["voice"] == "true" and voice.attachments[0].content_type.startswith("audio/ogg")
    document = one("whatsapp_pywa_message_document.json")
    assert (document.text, document.attachments[0].name, document.meta["forwarded"]) == ("caption", "filename.pdf", "true")
    location = one("whatsapp_pywa_message_current_location.json")
    assert (location.meta["latitude"], location.meta["longitude"]) == ("12.25089", "43.90539")
    button = one("whatsapp_pywa_callback_button_button.json")
    assert (button.kind, button.text, button.meta["reply_id"], button.thread.in_reply_to) == (
        "message", "title", "callback_data", "wamid.xyzxyz")
    reaction = one("whatsapp_pywa_message_reaction.json")
    assert (reaction.kind, reaction.meta["emoji"], reaction.thread.in_reply_to) == ("event", "😮", "wamid.yzxyzx=")
    reply = one("whatsapp_pywa_message_reply.json")
    assert (reply.text, reply.thread.in_reply_to) == ("replied text", "wamid.xyzxyz==")


def test_line_corpus_batch_gives_every_event() -> None:
    raw = corpus_file("line_webhook_v3.json").read_bytes()
    inbounds = line.parse(raw, {"channel_id": "1650000001"})
    assert len(inbounds) == 28
    first = inbounds[0]
    assert (first.kind, first.text, first.sender.value) == ("message", "Hello, world", "1650000001:U206d25c2ea6bd87c17655609a1c37cb8")
    by_type = {i.raw_type: i for i in inbounds}
    assert by_type["unfollow"].meta["blocked"] == "true" and by_type["follow"].meta["blocked"] == "false"
    assert by_type["unsend"].edits and by_type["unsend"].meta["deleted"] == "true"
    edited = by_type["messageEdited/text"]
    assert edited.kind == "message" and edited.edits and edited.external_id != edited.edits
    assert by_type["undefined"].kind == "event"
    assert by_type["postback"].meta["data"].startswith("action=")
    room = next(i for i in inbounds if i.meta.get("source_type") == "room")
    assert room.meta["chat_id"].startswith("1650000001:R")
    assert any(i.meta.get("redelivery") == "true" for i in inbounds)
    # without a channel id the destination (the bot's user id) is the account
    assert line.parse(raw, {})[0].account == "U123"


def test_line_module_account_events_come_from_the_account() -> None:
    # module/botSuspended/botResumed have no source: they were "<account>:unknown", a LINE
    # user contact shared by every account-level event
    attached, suspended, resumed = line.parse(
        (FIXTURES / "line_synthetic_module_account_events.json").read_bytes(), {"channel_id": "1650000001"})
    for event in (attached, suspended, resumed):
        assert (event.kind, event.sender.kind, event.sender.value) == ("event", "external", "line-account:1650000001")
        assert not event.defects
    assert (attached.raw_type, attached.meta["module"]) == ("module", "attached")
    assert (suspended.raw_type, resumed.raw_type) == ("botSuspended", "botResumed")


def test_line_notification_delivery_comes_from_the_account() -> None:
    # a LINE notification message's delivery completion has no source: it was "<account>:unknown"
    raw = (FIXTURES / "line_synthetic_pnp_delivery.json").read_bytes()
    (delivered,) = line.parse(raw, {"channel_id": "1650000001"})
    assert (delivered.kind, delivered.raw_type) == ("event", "delivery")
    assert delivered.meta["delivery_data"] == "order-4711-shipped"
    assert (delivered.sender.kind, delivered.sender.value) == ("external", "line-account:1650000001")
    assert not delivered.defects


def test_line_events_keep_what_their_object_says() -> None:
    # who joined or left, a membership's type, a beacon's, a device's, a link's result: all were dropped
    joined, left, membership, beacon, things, link, video = line.parse(
        (FIXTURES / "line_synthetic_event_facts.json").read_bytes(), {"channel_id": "1650000001"})
    assert all(e.kind == "event" and not e.defects for e in (joined, left, membership, beacon, things, link, video))
    assert joined.meta["members"] == ("1650000001:U4af4980629a1b2c3d4e5f60718293a4c,"
                                      "1650000001:U4af4980629a1b2c3d4e5f60718293a4d")
    assert left.meta["members"] == "1650000001:U4af4980629a1b2c3d4e5f60718293a4c"
    assert (membership.meta["membership"], membership.meta["membership_id"]) == ("renewed", "3189")
    assert (beacon.meta["beacon"], beacon.meta["hwid"]) == ("enter", "d41d8cd98f")
    assert (things.meta["things"], things.meta["device_id"]) == ("unlink", "t2c449c9d1")
    assert (link.meta["link_result"], video.meta["tracking_id"]) == ("failed", "spring-sale-video")


def test_line_signature() -> None:
    raw = corpus_file("line_webhook_v3.json").read_bytes()
    good = base64.b64encode(hmac.new(b"s3cret", raw, hashlib.sha256).digest()).decode()
    assert line.parse(raw, {"channel_secret": "s3cret", "headers": {"x-line-signature": good}})
    with pytest.raises(PayloadRejected, match="X-Line-Signature does not match"):
        line.parse(raw, {"channel_secret": "other", "headers": {"X-Line-Signature": good}})


def test_messenger_corpus_postback_without_title_is_an_event() -> None:
    (pb,) = messenger.parse(corpus_file("messenger_postback.json").read_bytes(), {})
    assert (pb.channel, pb.kind, pb.raw_type) == ("messenger", "event", "postback")
    assert pb.sender.value == "574839570934:624734821115"
    assert json.loads(pb.meta["reply_id"]) == {"action": "schedule"}


# ---------------------------------------------------------------- synthetic fixtures


def test_whatsapp_synthetic_all_types() -> None:
    inbounds = whatsapp.parse((FIXTURES / "whatsapp_synthetic_all_types.json").read_bytes(), {})
    by_id = {i.external_id: i for i in inbounds}
    assert by_id["wamid.VID"].text == "unboxing" and by_id["wamid.VID"].attachments[0].url == "2001"
    assert by_id["wamid.STK"].attachments[0].content_type == "image/webp"
    assert by_id["wamid.CON"].text == "Ann Lee: +1 415 555 0100"
    assert (by_id["wamid.LST"].text, by_id["wamid.LST"].meta["reply_id"]) == ("Track my order — where is it", "track")
    assert (by_id["wamid.BTN"].text, by_id["wamid.BTN"].meta["reply_id"]) == ("Stop promotions", "STOP_PROMOS")
    edit = by_id["wamid.EDT"]
    assert (edit.kind, edit.edits, edit.text) == ("message", "wamid.ORIG", "order 4712, not 4711")
    revoke = by_id["wamid.RVK"]
    assert (revoke.kind, revoke.edits, revoke.text, revoke.meta["deleted"]) == ("event", "wamid.ORIG", "", "true")
    assert by_id["wamid.UNS"].kind == "event" and "131051" in by_id["wamid.UNS"].defects[0]
    assert by_id["wamid.SYS"].meta["new_wa_id"] == "16315559999"
    failed = by_id["wamid.OUR:status:failed"]
    assert (failed.meta["error_code"], failed.raw_type) == ("131047", "status")
    assert all(i.sender.value == "+16315551234" and i.sender.name == "Kerry Fisher" for i in inbounds)
    assert all(i.account == "106540352242922" for i in inbounds)


def test_whatsapp_changes_of_other_fields_are_kept_as_events_and_echoes_as_outbound() -> None:
    # Built from Meta's "WhatsApp Business Account" webhook field reference
    # (account_update, message_template_status_update, smb_message_echoes,
    # user_preferences): none of them was printed before (no Inbound at all).
    inbounds = whatsapp.parse((FIXTURES / "whatsapp_synthetic_account_fields.json").read_bytes(), {})
    got = [(i.kind, i.raw_type, i.sender.kind, i.sender.value) for i in inbounds]
    assert got == [
        ("event", "message_template_status_update", "external", "whatsapp-account:102290129340398"),
        ("event", "account_update", "external", "whatsapp-account:102290129340398"),
        ("message", "text", "whatsapp", "+16505551234"),
        ("event", "user_preferences", "whatsapp", "+16505551234"),
        ("event", "some_future_field", "external", "whatsapp-account:102290129340398"),
    ]
    template, account, echo, prefs, future = inbounds
    assert (template.meta["event"], template.meta["message_template_name"]) == ("REJECTED", "abandoned_cart")
    assert account.meta["event"] == "ACCOUNT_VIOLATION"
    assert echo.text == "Your order has shipped" and echo.meta["direction"] == "outbound"
    assert echo.sender.name == "Sheena Nelson" or echo.sender.name is None
    assert prefs.meta["user_preferences.value"] == "stop" and prefs.sender.name == "Sheena Nelson"
    assert len({i.external_id for i in inbounds}) == len(inbounds)
    # the same body parses to the same ids (a redelivery dedupes)
    again = whatsapp.parse((FIXTURES / "whatsapp_synthetic_account_fields.json").read_bytes(), {})
    assert [i.external_id for i in again] == [i.external_id for i in inbounds]


def test_whatsapp_username_user_without_phone_is_one_contact_by_bsuid() -> None:
    # no "from" and no wa_id: every such message was from "+unknown" (one contact for all of them,
    # or none at all once the phone identity was refused)
    first, second = whatsapp.parse((FIXTURES / "whatsapp_synthetic_username_bsuid.json").read_bytes(), {})
    assert first.sender == second.sender
    assert (first.sender.kind, first.sender.value, first.sender.name) == (
        "external", "whatsapp-user:US.13491208655302741918", "Sheena Nelson")
    assert first.meta["bsuid"] == "US.13491208655302741918" and first.text == "Is my order 4711 on its way?"
    from connectors.whatsapp.client import addressee
    assert addressee(first.sender.value) == {"recipient": "US.13491208655302741918"}
    assert addressee("+16505551234") == {"to": "16505551234"}


def test_whatsapp_messages_change_with_only_errors_is_an_event() -> None:
    # it printed no Inbound at all (omnigate parse: "no JSON Inbound printed")
    (event,) = whatsapp.parse((FIXTURES / "whatsapp_synthetic_value_errors.json").read_bytes(), {})
    assert (event.kind, event.raw_type, event.sender.value) == ("event", "messages", "whatsapp-account:102290129340398")
    assert (event.meta["error_code"], event.meta["error_title"]) == ("131000", "Something went wrong")
    assert event.meta["error_details"].startswith("Message failed to send")


def test_whatsapp_interactive_that_is_no_reply_is_an_event() -> None:
    # a call-permission answer, and an interactive message WhatsApp could not deliver (errors,
    # no interactive object), were customer messages with an empty text
    answer, failed = whatsapp.parse((FIXTURES / "whatsapp_synthetic_call_permission_reply.json").read_bytes(), {})
    assert (answer.kind, answer.raw_type, answer.text) == ("event", "call_permission_reply", "")
    assert answer.sender.value == "+15551234567" and answer.thread.in_reply_to == "wamid.synthetic-permission-request"
    assert (answer.meta["response"], answer.meta["expiration_timestamp"]) == ("accept", "1753186982")
    assert (failed.kind, failed.raw_type) == ("event", "interactive")
    assert failed.defects == ["WhatsApp error 131051: Message type unknown"]


def test_whatsapp_field_changes_of_different_bodies_have_different_ids() -> None:
    # the external id ended in the last key of the value ("…:reason"): a second
    # template's status update was taken for a redelivery of the first and dropped
    body = json.loads((FIXTURES / "whatsapp_synthetic_account_fields.json").read_text())
    first = whatsapp.parse(json.dumps(body).encode(), {})[0]
    body["entry"][0]["changes"][0]["value"]["message_template_name"] = "order_shipped"
    second = whatsapp.parse(json.dumps(body).encode(), {})[0]
    assert first.raw_type == second.raw_type == "message_template_status_update"
    assert first.external_id != second.external_id


def test_messenger_chat_plugin_guests_have_their_own_identities() -> None:
    # sender.user_ref and no id: both were "<page>:unknown", one contact for every guest
    one, two = messenger.parse((FIXTURES / "messenger_synthetic_chat_plugin_guests.json").read_bytes(), {})
    assert one.sender.value == "106540352242922:user_ref:guest-ref-0001"
    assert two.sender.value == "106540352242922:user_ref:guest-ref-0002"
    assert not one.defects and one.text == "Hi, do you ship to Austria?"
    assert messenger_client.recipient_of(one.sender.value) == {"user_ref": "guest-ref-0001"}
    assert messenger_client.recipient_of("106540352242922:6247348") == {"id": "6247348"}


def test_messenger_checkbox_optins_name_their_user_ref() -> None:
    # no sender, only optin.user_ref: both were "<page>:unknown", one contact for every shopper
    one, two = messenger.parse((FIXTURES / "messenger_synthetic_checkbox_optin.json").read_bytes(), {})
    assert (one.kind, one.raw_type, one.meta["ref"]) == ("event", "optin", "checkout-page")
    assert one.sender.value == "106540352242922:user_ref:shopper-ref-0001" and not one.defects
    assert two.sender.value == "106540352242922:user_ref:shopper-ref-0002"
    assert messenger_client.recipient_of(one.sender.value) == {"user_ref": "shopper-ref-0001"}


def test_messenger_page_events_come_from_the_page_account() -> None:
    # policy_enforcement and app_roles name no user: both were the shared "<page>:unknown" contact
    policy, roles = messenger.parse((FIXTURES / "messenger_synthetic_page_account_events.json").read_bytes(), {})
    assert (policy.kind, policy.raw_type, policy.meta["action"]) == ("event", "policy_enforcement", "warning")
    assert (roles.kind, roles.raw_type) == ("event", "app_roles")
    for event in (policy, roles):
        assert (event.sender.kind, event.sender.value, event.defects) == (
            "external", "messenger-account:106540352242922", [])


def test_messenger_referral_opt_out_and_handover_facts_are_kept() -> None:
    # the ad or product a message was written from, an ad referral's ad_id, a marketing opt-out's
    # status and a handover's apps were all dropped
    from_ad, from_shop, referral, optout, handover = messenger.parse(
        (FIXTURES / "messenger_synthetic_referrals_optout_handover.json").read_bytes(), {})
    assert (from_ad.kind, from_ad.meta["referral_ad_id"], from_ad.meta["referral_ref"]) == (
        "message", "6400000000000001", "spring-boots")
    assert from_shop.meta["referral_product_id"] == "7300000000000501"
    assert (referral.kind, referral.meta["ad_id"]) == ("event", "6400000000000001")
    assert (optout.kind, optout.meta["notification_messages_status"]) == ("event", "STOP_NOTIFICATIONS")
    assert (handover.meta["previous_owner_app_id"], handover.meta["new_owner_app_id"]) == (
        "263902037430900", "123456789012345")


def test_instagram_messages_change_in_seconds_keeps_its_time() -> None:
    # value.timestamp "1717000499" (seconds) was read as milliseconds: sent_at in January 1970
    (msg,) = messenger.parse((FIXTURES / "instagram_synthetic_messages_change_seconds.json").read_bytes(), {})
    assert (msg.channel, msg.kind, msg.text, msg.sender.value) == (
        "instagram", "message", "Do you have this in size 42?", "17841400000000002:99887700")
    assert msg.sent_at == datetime(2024, 5, 29, 16, 34, 59, tzinfo=timezone.utc)
    # messaging events keep their milliseconds
    message, read = messenger.parse((FIXTURES / "instagram_synthetic_message_read.json").read_bytes(), {})
    assert message.sent_at == datetime.fromtimestamp(1790000000, timezone.utc)
    assert read.sent_at == datetime.fromtimestamp(1790000000.001, timezone.utc)


def test_instagram_story_reply_names_the_story() -> None:
    (reply,) = messenger.parse((FIXTURES / "instagram_synthetic_story_reply.json").read_bytes(), {})
    assert (reply.channel, reply.kind, reply.text) == ("instagram", "message", "Is this jacket still available?")
    assert reply.meta["story_id"] == "17900000000000001"
    assert reply.meta["story_url"].startswith("https://lookaside.fbsbx.com/")


def test_instagram_shared_post_is_its_caption_and_link_not_a_file() -> None:
    # the ig_post attachment (Nov 2025) was a file "Spring sale: …" of application/octet-stream,
    # beside the share's text
    both, alone = messenger.parse((FIXTURES / "instagram_synthetic_ig_post_share.json").read_bytes(), {})
    url = "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=18000000000000301&signature=synthetic"
    assert (both.kind, both.text, both.attachments) == ("message", f"Spring sale: every sneaker 20% off {url}", [])
    assert both.meta["ig_post_media_id"] == "18000000000000301"
    assert (alone.kind, alone.attachments, alone.meta["ig_post_media_id"]) == ("message", [], "18000000000000302")
    assert alone.text.startswith("New colours for the runner https://lookaside.fbsbx.com/")


def test_messenger_shared_post_is_its_title_and_link_not_a_file() -> None:
    # a post attachment was a file "Winter boots …" of application/octet-stream and no text
    (post,) = messenger.parse((FIXTURES / "messenger_synthetic_shared_post.json").read_bytes(), {})
    assert (post.kind, post.attachments, post.meta["post_id"]) == ("message", [], "122100000000000401")
    assert post.text == ("Winter boots are back in stock "
                         "https://www.facebook.com/106540352242922/posts/122100000000000401")


def test_messenger_shared_product_names_the_products() -> None:
    # payload.product.elements was not read: an empty customer message
    (shared,) = messenger.parse((FIXTURES / "messenger_synthetic_product_template.json").read_bytes(), {})
    assert (shared.kind, shared.attachments) == ("message", [])
    assert shared.text == "Leather boot, brown — €89.00\nWool socks — €9.50"
    assert shared.meta["retailer_ids"] == "BOOT-BRN-42,SOCK-WOOL-M"


def test_messenger_appointment_booking_says_what_and_when() -> None:
    # an appointment_booking attachment carries no url: it was an empty customer message
    (booking,) = messenger.parse((FIXTURES / "messenger_synthetic_appointment_booking.json").read_bytes(), {})
    assert (booking.kind, booking.attachments) == ("message", [])
    assert booking.text == "Appointment requested: 2025-12-31 10:00 – 2025-12-31 10:30 (Europe/Berlin)"
    assert (booking.meta["booking_id"], booking.meta["booking_status"]) == ("880000000000601", "requested")


def test_messenger_sticker_attachment_is_one_image() -> None:
    # the sticker type was an application/octet-stream file, a second one beside the transition's
    # image, and the sticker_id a number in meta
    both, alone = messenger.parse((FIXTURES / "messenger_synthetic_sticker_transition.json").read_bytes(), {})
    for message in (both, alone):
        assert [(a.content_type, a.url) for a in message.attachments] == [
            ("image/png", "https://scontent.example.invalid/like.png")]
        assert message.meta["sticker_id"] == "369239263222822"


def test_messenger_unsupported_share_is_an_event() -> None:
    # a fallback with no payload (an unsupported share) was an empty customer message
    (share,) = messenger.parse((FIXTURES / "messenger_synthetic_unsupported_share.json").read_bytes(), {})
    assert (share.kind, share.raw_type, share.text, share.attachments) == ("event", "unsupported", "", [])
    assert share.sender.value == "106540352242922:6247348211"


def test_instagram_comments_and_mentions_are_events_not_dropped() -> None:
    inbounds = messenger.parse((FIXTURES / "instagram_synthetic_comment_and_mention.json").read_bytes(), {})
    comment, mention = inbounds
    assert (comment.channel, comment.kind, comment.raw_type) == ("instagram", "event", "comments")
    assert comment.text == "Where is my order 4711?" and comment.sender.value == "17841400000000001:232323232"
    assert comment.sender.name == "test_user" and comment.external_id == "17841400000000001:comments:17865799348089039"
    assert comment.sent_at.year == 2023  # changes give Unix seconds
    assert (mention.raw_type, mention.sender.kind, mention.meta["media_id"]) == ("mentions", "external", "17918195224117851")


def test_a_template_element_title_of_another_type_is_no_crash() -> None:
    body = json.loads((FIXTURES / "messenger_synthetic_shared_attachments.json").read_text())
    body["entry"][0]["messaging"][2]["message"]["attachments"][0]["payload"]["elements"][0]["title"] = 12345
    *_, template = messenger.parse(json.dumps(body).encode(), {})
    assert template.text == "12345"


def test_messenger_attachments_that_are_no_file_give_a_readable_text() -> None:
    fallback, location, template = messenger.parse(
        (FIXTURES / "messenger_synthetic_shared_attachments.json").read_bytes(), {})
    assert fallback.text == "Order tracking https://example.com/track/4711"
    assert location.text == "📍 31.2304, 121.4737" and location.meta["latitude"] == "31.2304"
    assert template.text == "Blue shirt, size M"
    assert all(i.kind == "message" and not i.attachments for i in (fallback, location, template))


def test_whatsapp_keeps_the_ad_and_the_product_a_message_came_from() -> None:
    # the ad's id, type, headline and click id, and the catalog product asked about, were dropped
    from_ad, about_product = whatsapp.parse(
        (FIXTURES / "whatsapp_synthetic_ad_and_product_referral.json").read_bytes(), {})
    assert (from_ad.meta["referral_url"], from_ad.meta["referral_source_id"]) == (
        "https://fb.me/synthetic-ad", "120200000000000001")
    assert (from_ad.meta["referral_source_type"], from_ad.meta["referral_headline"]) == ("ad", "Spring sale: 20% off")
    assert from_ad.meta["referral_ctwa_clid"] == "ARAkSYNTHETICclid"
    assert (about_product.meta["referred_catalog_id"], about_product.meta["referred_product_retailer_id"]) == (
        "354160437058781", "BOOT-BRN-42")
    assert about_product.thread.in_reply_to == "wamid.SYNTHCATALOG01"


def test_whatsapp_order_is_a_message_listing_the_cart() -> None:
    (order,) = whatsapp.parse((FIXTURES / "whatsapp_synthetic_order.json").read_bytes(), {})
    assert (order.kind, order.raw_type, order.sender.value) == ("message", "order", "+16315551234")
    assert order.text == "Please deliver after 6pm\n2 × SHIRT-BLUE-M @ 19.5 USD\n1 × SOCKS @ 4 USD"
    assert order.meta["catalog_id"] == "354160437058781"


def test_messenger_synthetic_events() -> None:
    inbounds = messenger.parse((FIXTURES / "messenger_synthetic_events.json").read_bytes(), {})
    kinds = [(i.kind, i.raw_type) for i in inbounds]
    assert kinds == [("message", "message"), ("message", "message"), ("message", "message"), ("event", "status"),
                     ("message", "postback"), ("event", "status"), ("event", "status"), ("event", "status"),
                     ("event", "reaction"), ("event", "message_deleted"), ("message", "message_edit")]
    text, image, echo, own, postback = inbounds[:5]
    assert (text.meta["reply_id"], text.thread.in_reply_to) == ("SIZE_M", "m_Q")
    assert image.attachments[0].url == "https://scontent.example/p.jpg"
    assert echo.meta["direction"] == "outbound" and echo.sender.value == "106540352242922:6247348211"
    assert (own.meta["status_of"], own.meta["status"]) == ("m_OURS", "sent")
    assert postback.text == "Get Started"
    assert [i.meta["status_of"] for i in inbounds[5:7]] == ["m_OURS", "m_OURS2"]
    assert inbounds[-1].edits == "m_TXT" and inbounds[-2].edits == "m_TXT"
    # the same JSON again gives the same external ids (Meta redelivers whole bodies)
    again = messenger.parse((FIXTURES / "messenger_synthetic_events.json").read_bytes(), {})
    assert [i.external_id for i in again] == [i.external_id for i in inbounds]


def test_instagram_object_gives_the_instagram_channel_and_an_own_app_echo_is_a_status() -> None:
    raw = (FIXTURES / "instagram_synthetic_message_read.json").read_bytes()
    message, read = messenger.parse(raw, {})
    assert (message.channel, message.sender.kind, message.sender.value) == (
        "instagram", "instagram", "17841400000000001:99887766")
    assert (read.raw_type, read.meta["status_of"]) == ("status", "aWdfOUR")
    echo = {"object": "instagram", "entry": [{"id": "1784", "messaging": [
        {"sender": {"id": "1784"}, "recipient": {"id": "9988"}, "timestamp": 1,
         "message": {"mid": "aWdfOURS", "text": "hi", "is_echo": True, "app_id": 4242}}]}]}
    (own,) = messenger.parse(json.dumps(echo).encode(), {"app_id": "4242"})
    assert own.raw_type == "status"
    (theirs,) = messenger.parse(json.dumps(echo).encode(), {"app_id": "1111"})
    assert theirs.meta["direction"] == "outbound"


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("name,parse", [("whatsapp", whatsapp.parse), ("messenger", messenger.parse),
                                        ("line", line.parse)])
@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'{"object": "user", "entry": []}', b"\xff\xfe"])
def test_not_this_channel_is_refused(name: str, parse, raw: bytes) -> None:
    with pytest.raises(PayloadRejected):
        parse(raw, {})


def test_keys_are_stable_and_distinguish_bodies() -> None:
    one = json.loads((FIXTURES / "whatsapp_synthetic_all_types.json").read_text())
    raw = json.dumps(one).encode()
    assert whatsapp.body_key(one, raw) == whatsapp.body_key(json.loads(raw), b"other bytes, same ids")
    single = {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
        "messages": [{"id": "wamid.X", "from": "1", "type": "text"}]}}]}]}
    assert whatsapp.body_key(single, b"") == "wamid.X"
    ev = {"type": "follow", "webhookEventId": "01HZ", "source": {"type": "user", "userId": "U1"}}
    assert line.body_key({"events": [ev]}, b"") == "01HZ"
    assert line.body_key({"events": [ev, dict(ev, webhookEventId="01HY")]}, b"").startswith("sha256:")


# ---------------------------------------------------------------- hostile shapes

_ODD = [None, 0, 7, -1, True, "", "x", [], [1, "a"], {}, {"id": 5}, 1.5]


def _retyped(obj, rng, depth=0):
    """``obj`` with values swapped for values of other JSON types, at random."""
    if isinstance(obj, dict):
        return {k: (rng.choice(_ODD) if rng.random() < 0.15 else _retyped(v, rng, depth + 1)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rng.choice(_ODD) if rng.random() < 0.15 else _retyped(v, rng, depth + 1) for v in obj]
    return obj


@pytest.mark.parametrize("name,parse", [
    ("whatsapp_synthetic_all_types.json", whatsapp.parse), ("messenger_synthetic_events.json", messenger.parse),
    ("instagram_synthetic_message_read.json", messenger.parse),
    ("whatsapp_synthetic_account_fields.json", whatsapp.parse), ("whatsapp_synthetic_order.json", whatsapp.parse),
    ("messenger_synthetic_shared_attachments.json", messenger.parse),
    ("instagram_synthetic_comment_and_mention.json", messenger.parse)])
def test_valid_json_of_unexpected_shapes_never_crashes(name: str, parse) -> None:
    import random

    base = json.loads((FIXTURES / name).read_text())
    rng = random.Random(name)
    for _ in range(300):
        try:
            parse(json.dumps(_retyped(base, rng)).encode(), {})
        except PayloadRejected:
            pass


def test_line_corpus_of_unexpected_shapes_never_crashes() -> None:
    import random

    base = json.loads(corpus_file("line_webhook_v3.json").read_text())
    rng = random.Random("line")
    for _ in range(100):
        try:
            line.parse(json.dumps(_retyped(base, rng)).encode(), {})
        except PayloadRejected:
            pass


def test_a_message_id_sent_as_a_number_keys_the_body_by_its_digits() -> None:
    """A signed Messenger/Instagram body whose ``mid`` is a JSON number (a
    string by the docs) was a TypeError in the intake — a 500 the platform
    retried; its key is now the number's digits, the parse's message id."""
    ev = {"sender": {"id": "62"}, "recipient": {"id": "1065"}, "timestamp": 1, "message": {"mid": 4242, "text": "y"}}
    reaction = {"sender": {"id": "62"}, "recipient": {"id": "1065"}, "timestamp": 1,
                "reaction": {"mid": 4243, "action": "react", "emoji": "x"}}
    for obj in ({"object": "page", "entry": [{"id": "1065", "messaging": [ev]}]},
                {"object": "instagram", "entry": [{"id": "1065", "messaging": [ev]}]}):
        raw = json.dumps(obj).encode()
        assert messenger.body_key(obj, raw) == "4242"
        (inbound,) = messenger.parse(raw, {})
        assert inbound.thread.message_id == "4242"
    body = {"object": "page", "entry": [{"id": "1065", "messaging": [reaction]}]}
    (inbound,) = messenger.parse(json.dumps(body).encode(), {})
    assert inbound.thread.in_reply_to == "4243"
