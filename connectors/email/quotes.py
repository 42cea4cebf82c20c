"""Reply and quote stripping: the new text of a reply, without the history.

Pure and line-based, in the spirit of talon's ``quotations`` module but
smaller. It recognises the history markers of the mailers support agents
meet most, Chinese ones included:

- "On … wrote:" (Gmail, Apple Mail, Thunderbird, Android, Yahoo's
  "--- On … wrote:"), German "Am … schrieb …:", French, Spanish, Russian,
  Chinese "在 2024年1月2日 … 写道：", wrapped over up to three lines;
- Outlook header blocks ("From:/发件人:/Von:" followed by "Sent:/发送时间:/
  To:/Subject:" lines), with the underscore rule above them;
- "-----Original Message-----", Foxmail/QQ/163/126
  "------------------ 原始邮件 ------------------" and their translations;
- "> " quoted lines, wherever they are;
- a signature after a "-- " line, and "Sent from my iPhone"-style footers.

A forward ("---------- Forwarded message ---------") is never stripped.
A marker followed by a ``>`` block (bottom posting) removes the marker and
the block and keeps what follows; any other marker cuts everything after it.
When stripping would leave nothing, the text is returned unchanged.
"""

from __future__ import annotations

import re

_VERBS = (
    r"(?:wrote|writes|a écrit|escribió|ha escrito|escreveu|scrisse|ha scritto|schrieb|skrev|schreef|"
    r"napisał(?:\(a\))?|kirjoitti|написал[аи]?|写道|寫道|書きました|님이 작성)"
)
_MARKER_START_RE = r"^\s*(?:-{2,}\s*)?(?:on|am|le|el|em|il|op|den|w dniu|在|于|於|\d)"
_MARKER_START = re.compile(_MARKER_START_RE, re.I)
#: "On <date>, <name> wrote:" (verb last), or "Am <date>, schrieb <name>:" (verb first).
_WROTE = re.compile(
    rf"^[\s-]*\S.{{0,300}}?{_VERBS}\s*[:：]\s*$|{_MARKER_START_RE}.{{0,200}}?{_VERBS}\s[^:：]{{1,120}}[:：]\s*$",
    re.I,
)
_ORIGINAL = re.compile(
    r"^\s*-{2,}\s*(?:original message|original|original-nachricht|ursprüngliche nachricht|"
    r"message d'origine|mensaje original|messaggio originale|oorspronkelijk bericht|"
    r"原始邮件|原始郵件|原邮件|回复的原邮件)\s*-{2,}\s*$",
    re.I,
)
#: A forward: what follows is the content the sender means to show, never stripped.
_FORWARDED = re.compile(
    r"^\s*-{2,}\s*(?:forwarded message|weitergeleitete nachricht|message transféré|转发邮件|轉寄郵件)\s*-{2,}\s*$", re.I
)
_HEADER_FROM = re.compile(r"^\s*\*?(?:from|发件人|寄件人|寄件者|von|de|da|van|från|fra|от)\s*\*?\s*[:：]", re.I)
_HEADER_NEXT = re.compile(
    r"^\s*\*?(?:sent|date|to|cc|subject|发送时间|发件时间|日期|时间|收件人|抄送|主题|"
    r"gesendet|datum|an|betreff|envoyé|objet|enviado|asunto|para)\s*\*?\s*[:：]",
    re.I,
)
_RULE = re.compile(r"^\s*[_\-=]{8,}\s*$")
_SIGNATURE = re.compile(r"^--\s?$")
_MOBILE_FOOTER = re.compile(
    r"^\s*(?:sent from my |sent from (?:mail|outlook) for |get outlook for |von meinem .* gesendet|"
    r"发自我的|来自我的|從我的 .*傳送|寄自我的)",
    re.I,
)
_HAS_DATE_OR_ADDRESS = re.compile(r"\d{4}|\d{1,2}[:./-]\d{1,2}|@")


def _wrote_marker(lines: list[str], i: int) -> int | None:
    """First line of an "On … wrote:" marker that ends on line ``i``, or None.

    Mailers wrap long markers, so up to two lines above ``i`` belong to it
    when they look like a marker's start ("On …", "Am …", "在 …", a date).
    """
    if not lines[i].rstrip().endswith((":", "：")):
        return None
    start = i
    for j in (i - 1, i - 2):
        if j < 0 or not lines[j].strip() or _is_quoted(lines[j]):
            break
        if _MARKER_START.match(lines[j]):
            start = j
    window = " ".join(line.strip() for line in lines[start : i + 1])
    if _WROTE.match(window) and _HAS_DATE_OR_ADDRESS.search(window):
        return start
    return None


def _outlook_block(lines: list[str], i: int) -> bool:
    if not _HEADER_FROM.match(lines[i]):
        return False
    following = [line for line in lines[i + 1 : i + 7] if line.strip()][:4]
    return sum(bool(_HEADER_NEXT.match(line)) for line in following) >= 2


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _cut_history(lines: list[str]) -> list[str]:
    for i, line in enumerate(lines):
        if not line.strip() or _is_quoted(line):
            continue
        if _FORWARDED.match(line):
            return lines
        start = _wrote_marker(lines, i)
        if start is not None:
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or _is_quoted(lines[j])):
                j += 1
            if any(_is_quoted(x) for x in lines[i + 1 : j]):
                # bottom or interleaved posting: drop the marker and its block, keep the rest
                return lines[:start] + _cut_history(lines[j:])
            return lines[:start]
        if _ORIGINAL.match(line) or _outlook_block(lines, i):
            start = i
            while start > 0 and (not lines[start - 1].strip() or _RULE.match(lines[start - 1])):
                start -= 1
            return lines[:start]
    return lines


def _cut_signature(lines: list[str]) -> list[str]:
    for i in range(len(lines) - 1, 0, -1):
        if _SIGNATURE.match(lines[i]) and any(x.strip() for x in lines[:i]):
            return lines[:i]
    while lines and (not lines[-1].strip() or _MOBILE_FOOTER.match(lines[-1])):
        lines = lines[:-1]
    return lines


def strip_reply(text: str) -> tuple[str, bool]:
    """``(new text, whether anything was removed)``."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept = _cut_history(lines)
    kept = [line for line in kept if not _is_quoted(line)]
    kept = _cut_signature(kept)
    stripped = "\n".join(kept).strip()
    original = "\n".join(lines).strip()
    if not stripped:
        return original, False
    return stripped, stripped != original
