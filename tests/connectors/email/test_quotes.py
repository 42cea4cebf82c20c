"""Pure tests: reply and quote stripping, on the corpus's real replies and on
synthetic Chinese-mailer replies (tests/fixtures/email/*synthetic*)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.email.parse import parse
from connectors.email.quotes import strip_reply
from tests.corpus import CORPUS, require_corpus

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "email"

# corpus file → (new text that must stay, quoted history that must go)
REAL_REPLIES = {
    "talon_android.eml": ("Hello", "написал"),
    "talon_apple_mail.eml": ("Hello", "wrote:"),
    "talon_gmail.eml": ("Hello", "wrote:"),
    "talon_outlook.eml": ("Hello", "The manager has commented"),
    "talon_thunderbird.eml": ("Hello", "Megan One wrote"),
    "talon_yahoo.eml": ("Hello", "Original Message"),
    "talon_reply-quotations-share-block.eml": ("Joe XXX", "New Booking Inquiry"),
    "zammad_mail005.eml": ("Grüße aus Bonn", "Martin Edenhofer via Znuny Team"),
}


@pytest.mark.parametrize("name", sorted(REAL_REPLIES))
def test_real_reply_loses_its_history(name):
    require_corpus()
    assert CORPUS is not None
    keep, gone = REAL_REPLIES[name]
    msg = parse((CORPUS / "email" / name).read_bytes(), {})[0]
    assert keep in msg.text
    assert gone not in msg.text
    assert msg.full_text is not None and gone in msg.full_text
    assert ">" not in msg.text.splitlines()[0]


@pytest.mark.parametrize(
    ("name", "keep", "gone"),
    [
        ("foxmail_qq_reply_synthetic.eml", "麻烦尽快开具发票", "原始邮件"),
        ("netease_163_reply_synthetic.eml", "SF1234567890", "写道"),
        ("outlook_cn_reply_synthetic.eml", "请帮忙查一下这个订单的物流", "发件人"),
    ],
)
def test_chinese_mailer_replies(name, keep, gone):
    msg = parse((FIXTURES / name).read_bytes(), {})[0]
    assert keep in msg.text
    assert gone not in msg.text
    assert gone in (msg.full_text or "")


def test_german_am_schrieb_with_quoted_block_keeps_the_answer_below():
    text = "Am 07.05.2012 08:10, schrieb Martin:\n> Hallo Marc,\n> bis bald\nHallo Martin,\nFreitag passt."
    assert strip_reply(text) == ("Hallo Martin,\nFreitag passt.", True)


def test_wrapped_gmail_marker_is_removed_whole():
    text = "Thanks!\n\nOn Mon, Apr 2, 2012 at 6:26 PM, Megan One <\nxxx@gmail.com> wrote:\n\n> Hi"
    assert strip_reply(text) == ("Thanks!", True)


def test_signature_after_dash_dash_space_is_cut():
    assert strip_reply("Please call me.\n\n-- \nJane Doe\nACME Ltd") == ("Please call me.", True)


def test_text_without_history_is_unchanged():
    text = "I wrote: the printer is broken.\nIt says error 42."
    assert strip_reply(text) == (text, False)


def test_a_mail_that_is_only_a_quote_is_kept():
    text = "> only quoted\n> lines"
    assert strip_reply(text) == (text, False)


def test_forwarded_message_is_not_stripped():
    text = "See below.\n\n---------- Forwarded message ---------\nFrom: a@example.com\nDate: today\nSubject: x\nTo: b@example.com\n\nbody"
    assert strip_reply(text) == (text, False)
