"""connectors/text.py: the message splitting Telegram, WhatsApp, Messenger/Instagram and LINE share."""

from __future__ import annotations

from connectors.text import split_text


def test_short_text_is_one_part_and_blank_text_none() -> None:
    assert split_text("hello", 10) == ["hello"]
    assert split_text("", 10) == []
    assert split_text(" \n ", 10) == []


def test_cut_at_a_line_break_in_the_second_half_else_at_the_limit() -> None:
    assert split_text("aaaaaaa\nbbbbbb", 10) == ["aaaaaaa", "bbbbbb"]  # the break is dropped
    assert split_text("aa\nbbbbbbbbbbbb", 10) == ["aa\nbbbbbbb", "bbbbb"]  # a break in the first half: hard cut
    parts = split_text("x" * 25, 10)
    assert parts == ["x" * 10, "x" * 10, "x" * 5]
    assert all(len(p) <= 100 for p in split_text(("word " * 40 + "\n") * 30, 100))
