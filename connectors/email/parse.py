"""The email channel's pure parser: RFC 5322/MIME bytes → one :class:`Inbound`.

Parsing uses the stdlib ``email`` package with the **compat32** policy and
does the header decoding itself (:mod:`connectors.email.headers`). Why: on an
11.7 KB multipart message the modern ``email.policy.default`` parses about
380 msg/s here, compat32 about 2,200; the modern policy's extra work is
header decoding that is both slow and wrong for much Chinese mail (GB2312
declared but GBK written, raw 8-bit GBK headers, split multi-byte encoded
words), which this package has to redo anyway. ``connectors/email/bench.py``
measures the result against the bare compat32 parse.

What is recovered rather than refused (each listed in ``defects``):
broken header folding (an unindented continuation line in the middle of the
header block, which makes the stdlib end the headers early; a quoted
boundary folded over lines, ``FoldedBoundary``), missing or
lying charsets, broken encoded words, duplicate or unusable From headers
(a bare address among words, ``Big Bug bb@bug.com``, is taken),
bad dates, MIME structure defects (the stdlib's defect class names; parts
nested over a hundred deep are left out, ``MimeNestingTooDeep``; a nested
multipart that reuses its parent's boundary is read innermost-first,
``NestedBoundaryReused``; a first delimiter inside the header block,
``DelimiterInHeaders``; text after a quoted boundary,
``TextAfterQuotedBoundary``), a file labelled text (``BinaryTextPart``), and
Outlook ``.msg`` blobs handed over instead of MIME, a banner line or two
above the headers (``LeadingNonHeaderLine``). Only bytes that are not mail
at all — empty, or no header line at the start (after at most such a
banner) — and a structure nested too deeply for the stdlib parser's
recursion raise :class:`PayloadRejected`.
"""

from __future__ import annotations

import email.errors

import hashlib
import re
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from typing import Any, Mapping

from connectors.base import PayloadRejected
from connectors.email import attachments, charsets, dsn, headers, keys, outlook
from connectors.email.htmltext import html_to_text
from connectors.email.quotes import strip_reply
from routing.model import Attachment, Inbound, Sender, ThreadHints

#: A header line ("Name:"), an mbox "From " line, as the first line of a mail.
_FIRST_LINE = re.compile(rb"(?:From |[\x21-\x39\x3b-\x7e]+[ \t]*:)")
_HEADER_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_BOUNDARY_PARAM = re.compile(rb'boundary\s*=\s*"?([^"\s;]+)', re.I)
#: "Name:" with 8-bit bytes in the name: not a valid header, not a continuation either.
_BAD_HEADER_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]*[\x80-\xff][\x21-\x39\x3b-\xff]*[ \t]*:")
_BODY_TYPES = frozenset({"text/plain", "text/html", "text/enriched"})
#: Other renderings of the same body inside multipart/alternative (Gmail's
#: AMP, Apple Watch's): neither the body nor an attachment.
_ALTERNATIVE_RENDERINGS = frozenset({"text/x-amp-html", "text/watch-html"})
_REPORT_ORIGINALS = frozenset({"message/rfc822", "message/rfc822-headers", "text/rfc822-headers"})
_SENDER_FALLBACKS = ("sender", "reply-to", "return-path")
#: An addr-spec standing alone among words (whitespace, comma or quote around it).
_BARE_ADDRESS = re.compile(r"(?:^|(?<=[\s,;\"']))([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(?=$|[\s,;\"'])")
_CHARSET_PARAM = re.compile(r'charset\*?\s*=\s*["\']?([A-Za-z0-9_.:+-]+)', re.I)
_CHARSET_PARAM_BYTES = re.compile(_CHARSET_PARAM.pattern.encode(), re.I)


@dataclass
class _Body:
    """What a walk over the MIME tree collects."""

    hints: tuple[str, ...] = ()
    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    charsets: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    dsn: dict[str, str] = field(default_factory=dict)
    delivery_status: bool = False  # a message/delivery-status part (RFC 3464)
    tnef: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)


def parse(raw: bytes, context: Mapping[str, Any]) -> list[Inbound]:
    """Exactly one Inbound for a mail; :class:`PayloadRejected` for bytes that are not mail."""
    if outlook.is_msg(raw):
        return [_parse_outlook_msg(raw, context)]
    data = raw.lstrip(b"\r\n")
    if not data.strip():
        raise PayloadRejected("empty payload: no mail headers")
    defects = [] if len(data) == len(raw) else ["LeadingBlankLines"]
    if not _FIRST_LINE.match(data):
        data = _skip_banner(data)
        if data is None:
            raise PayloadRejected("not an email message: the first line is neither a header nor an mbox 'From ' line")
        defects.append("LeadingNonHeaderLine")
    msg = _read(data, defects)
    return [_inbound(msg, raw, context, defects)]


# ---------------------------------------------------------------- reading

#: Most lines a banner may have before the headers ("---- Original email message ----").
_MAX_BANNER_LINES = 2


def _skip_banner(data: bytes) -> bytes | None:
    """The mail after a short banner a relay or archive wrote above its
    headers, when the banner is followed by at least two header lines in a
    row; None when the bytes do not look like a mail at all."""
    lines = data.split(b"\n", _MAX_BANNER_LINES + 2)
    for skip in range(1, min(_MAX_BANNER_LINES, len(lines) - 2) + 1):
        if all(_HEADER_NAME.match(line) for line in lines[skip : skip + 2]):
            return b"\n".join(lines[skip:])
    return None



def _repair_folding(data: bytes) -> bytes | None:
    """Indent stray lines inside the header block (continuations that lost their indent).

    A line that is neither a header nor a continuation, followed later in the
    block by real headers, is taken as a continuation: the stdlib would
    otherwise end the headers there and read the rest as body. Lines from
    the message's own MIME boundary on are its body already (a preamble
    with no blank line before it; the headers after it are a part's).
    """
    end = _END_OF_HEADERS.search(data)
    head, rest = (data[: end.start()], data[end.start() :]) if end else (data, b"")
    lines = head.split(b"\n")
    # the message's own MIME boundary: the body has begun (a preamble line with no
    # blank line before it); the part headers after it are not the message's
    boundary = _BOUNDARY_PARAM.search(head)
    body_start = len(lines)
    if boundary is not None:
        delimiter = b"--" + boundary.group(1)
        body_start = next((i for i, line in enumerate(lines) if line.startswith(delimiter)), body_start)
    lines, body = lines[:body_start], lines[body_start:]
    is_header = [bool(_HEADER_NAME.match(line)) for line in lines]
    if True not in is_header:
        return None
    last = len(lines) - 1 - is_header[::-1].index(True)
    changed = False
    for i in range(1, last):
        line = lines[i]
        if not is_header[i] and line[:1] not in (b" ", b"\t"):
            # a header whose name has 8-bit bytes ("Subj\xe9ct:") is a broken header of its
            # own, not the previous one's continuation (it would end up in the From)
            lines[i] = b"X-Invalid-Header-Name: " + line if _BAD_HEADER_NAME.match(line) else b" " + line
            changed = True
    return b"\n".join(lines + body) + rest if changed else None


#: A quoted boundary folded over two lines (``boundary="simple\n boundary"``).
_FOLDED_BOUNDARY = re.compile(rb'(boundary[ \t]*=[ \t]*")([^"\r\n]*(?:\r?\n[ \t][^"\r\n]*)+)"', re.I)
_FOLD_BYTES = re.compile(rb"\r?\n(?=[ \t])")


def _unfold_boundaries(data: bytes) -> bytes | None:
    """The mail with every quoted boundary that is folded over lines unfolded
    (RFC 5322 section 2.2.3: the line break goes, the space stays), or None
    when there is none: the stdlib keeps the line break in the boundary,
    finds no delimiter line and loses every part."""
    if _FOLDED_BOUNDARY.search(data) is None:
        return None
    return _FOLDED_BOUNDARY.sub(lambda m: m.group(1) + _FOLD_BYTES.sub(b"", m.group(2)) + b'"', data)


def _reused_boundary(msg: Message) -> str | None:
    """The boundary a nested multipart reuses from a multipart around it,
    when the stdlib then found that nested part empty (its start delimiter
    was taken as the outer's: ``StartBoundaryNotFoundDefect``); else None."""
    stack: list[tuple[Message, tuple[str, ...], int]] = [(msg, (), 0)]
    while stack:
        part, outer, depth = stack.pop()
        if depth > _MAX_DEPTH or not part.get_content_type().startswith("multipart/"):
            continue
        boundary = part.get_boundary()
        if boundary and boundary in outer and any(
                type(d).__name__ == "StartBoundaryNotFoundDefect" for d in part.defects):
            return boundary
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend((sub, (*outer, boundary or ""), depth + 1) for sub in payload)
    return None


def _rename_inner_boundary(data: bytes, boundary: str) -> bytes | None:
    """The mail with the nested multipart that reuses its parent's boundary
    given a boundary of its own, or None when that cannot be told. As
    MIME readers that match the innermost boundary first (MimeKit, mime4j)
    read it: the second declaration of the boundary is the nested part's,
    and every delimiter line after it, up to and including the first close
    delimiter, is the nested part's."""
    b = boundary.encode("ascii", "surrogateescape")
    declared = list(re.finditer(rb'(boundary[ \t]*=[ \t]*"?)' + re.escape(b) + rb'(?=["\s;]|$)', data, re.I))
    if len(declared) < 2:
        return None
    new = b + b"=_nested"
    while new in data:
        new += b"_"
    at = declared[1]
    head, rest = data[: at.start()] + at.group(1) + new, data[at.end():]
    out, pos = [], 0
    for m in re.finditer(rb"^--" + re.escape(b) + rb"(--)?(?=[ \t]*\r?$)", rest, re.M):
        out += [rest[pos : m.start()], b"--" + new + (m.group(1) or b"")]
        pos = m.end()
        if m.group(1):
            return head + b"".join(out) + rest[pos:]
    return None  # the nested part is never closed: no telling where it ends


def _delimiter_in_headers(data: bytes, boundary: str) -> bytes | None:
    """The mail with a blank line put before its first delimiter when that
    delimiter stands in the header block (no blank line after the headers, or
    one holding a space): the stdlib read the delimiter line (a name and a
    colon: ``----9-2741=:18061``) and the first part's headers as the mail's
    own and lost the first part (every part when no delimiter followed).
    None when the delimiter is not there."""
    end = _END_OF_HEADERS.search(data)
    head = data[: end.start()] if end else data
    b = boundary.encode("ascii", "surrogateescape")
    m = re.search(rb"^--" + re.escape(b) + rb"[ \t]*\r?$", head, re.M)
    if m is None or m.start() == 0:
        return None
    eol = b"\r\n" if data[: m.start()].endswith(b"\r\n") else b"\n"
    return data[: m.start()] + eol + data[m.start() :]


#: A quoted boundary with more on its line and no ";" before it (a header glued on:
#: ``boundary="40F1.1312/mx.example" Message-Id: <…>``).
_GLUED_BOUNDARY = re.compile(rb'(boundary[ \t]*=[ \t]*"[^"\r\n]*")(?=[ \t]+[^;\s])', re.I)


def _glued_boundary(msg: Message) -> bool:
    """Whether a multipart found no start delimiter because its boundary
    parameter was read with what follows the closing quote (the stdlib keeps
    the quotes and the text after them as the boundary)."""
    for part in msg.walk():
        boundary = part.get_boundary() if part.get_content_maintype() == "multipart" else None
        if boundary and re.match(r'"[^"]*"\s+\S', boundary) and any(
                type(d).__name__ == "StartBoundaryNotFoundDefect" for d in part.defects):
            return True
    return False


def _leaves(msg: Message) -> int:
    return sum(1 for part in msg.walk() if not part.is_multipart())


def _read(data: bytes, defects: list[str]) -> Message:
    unfolded = _unfold_boundaries(data)
    if unfolded is not None:
        defects.append("FoldedBoundary")
        data = unfolded
    try:
        msg = message_from_bytes(data, policy=compat32)
    except RecursionError:  # the stdlib parser recurses once per nested multipart
        raise PayloadRejected("MIME structure nested too deeply to read") from None
    if any(type(d).__name__ == "MissingHeaderBodySeparatorDefect" for d in msg.defects):
        repaired = _repair_folding(data)
        if repaired is not None:
            defects.append("BrokenHeaderFolding")
            data = repaired
            msg = message_from_bytes(repaired, policy=compat32)
    boundary = msg.get_boundary() if msg.get_content_maintype() == "multipart" else None
    if boundary and any(name.startswith("--") and f"--{boundary}".startswith(name) for name in msg.keys()):
        # the first delimiter was read as a header field: its part is lost (in the
        # preamble before the next delimiter), or all of them (no delimiter left)
        split = _delimiter_in_headers(data, boundary)
        if split is not None:
            try:
                again = message_from_bytes(split, policy=compat32)
            except RecursionError:
                again = msg
            if again.is_multipart() and _leaves(again) >= _leaves(msg):
                defects.append("DelimiterInHeaders")
                data, msg = split, again
    if _glued_boundary(msg):
        # RFC 2045 section 5.1: the quoted string is the value; what follows it is no part of it
        ended = _GLUED_BOUNDARY.sub(rb"\1;", data)
        try:
            again = message_from_bytes(ended, policy=compat32)
        except RecursionError:
            again = msg
        if _leaves(again) > _leaves(msg):
            defects.append("TextAfterQuotedBoundary")
            data, msg = ended, again
    reused = _reused_boundary(msg) if msg.is_multipart() else None
    if reused is not None:
        renamed = _rename_inner_boundary(data, reused)
        if renamed is not None:
            try:
                again = message_from_bytes(renamed, policy=compat32)
                better = _reused_boundary(again) != reused and _leaves(again) >= _leaves(msg)
            except RecursionError:
                better = False
            if better:
                defects.append("NestedBoundaryReused")
                msg = again
    return msg


def _header_map(msg: Message) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        out.setdefault(name.strip().lower(), []).append(str(value))
    return out


# ---------------------------------------------------------------- MIME tree


def _charset_param(part: Message) -> str | None:
    m = _CHARSET_PARAM.search(attachments.raw_header(part, "content-type") or "")
    return m.group(1).lower() if m else None


def _decode_text(part: Message, body: _Body, data: bytes) -> str:
    declared = _charset_param(part)
    if declared and declared not in body.charsets:
        body.charsets.append(declared)
    text, codec, honoured = charsets.decode(data, declared, body.hints)
    if not honoured:
        body.defects.append(f"CharsetMismatch:{declared or 'undeclared'}->{codec}")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _disposition(part: Message) -> str:
    return (attachments.raw_header(part, "content-disposition") or "").split(";", 1)[0].strip().lower()


def _is_attachment(part: Message, ctype: str, name: str | None) -> bool:
    return _disposition(part) == "attachment" or name is not None or ctype not in _BODY_TYPES


def _part_bytes(part: Message, ctype: str, defects: list[str]) -> bytes:
    if ctype.startswith("message/") and isinstance(part.get_payload(), list):
        inner = part.get_payload(0)
        try:
            return _message_bytes(inner)
        except RecursionError:  # hundreds of messages nested in each other: its own headers only
            defects.append("MimeNestingTooDeep")
            return "".join(f"{k}: {v}\n" for k, v in inner.items()).encode("utf-8", "surrogateescape")
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _message_bytes(msg: Message) -> bytes:
    """An attached message as bytes; when the generator refuses it (a header
    that folds into what looks like another header, a bad charset) its
    headers and payload are written out as they are."""
    try:
        return msg.as_bytes()
    except (LookupError, TypeError, ValueError, UnicodeError, email.errors.MessageError):
        pass
    head = "".join(f"{k}: {v}\n" for k, v in msg.items()).encode("utf-8", "surrogateescape")
    payload = msg.get_payload()
    if isinstance(payload, list):
        return head + b"\n" + b"\n".join(_message_bytes(p) for p in payload)
    body = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    return head + b"\n" + body


def _collect_attachment(part: Message, ctype: str, name: str | None, body: _Body) -> None:
    data = _part_bytes(part, ctype, body.defects)
    if attachments.is_tnef(ctype, name):
        inner = attachments.expand_tnef(data, body.defects)
        if inner is not None:
            body.tnef.extend(a.name or "?" for a in inner)
            body.attachments.extend(inner)
            return
    content_id = (attachments.raw_header(part, "content-id") or "").strip().strip("<>") or None
    inline = _disposition(part) == "inline" or content_id is not None
    body.attachments.append(attachments.make(data, name, ctype, inline=inline, content_id=content_id))


#: A MIME parameter (``boundary="…"``) at the start of a line.
_PARAM_LINE = re.compile(r"[A-Za-z0-9_.-]+\*?[ \t]*=")


def _refold_part(part: Message, payload: str) -> Message | None:
    """A multipart part read again when the stdlib ended its headers at a
    parameter line that lost its indent (``boundary="…"`` under
    ``Content-Type: multipart/alternative;``) and so found no boundary; None
    when that is not what happened."""
    if not any(type(d).__name__ == "MissingHeaderBodySeparatorDefect" for d in part.defects):
        return None
    first, sep, rest = payload.partition("\n")
    if not _PARAM_LINE.match(first):
        return None
    head = "".join(f"{k}: {v}\n" for k, v in part.raw_items())
    data = (head.rstrip("\n") + "\n " + first + sep + rest).encode("ascii", "surrogateescape")
    try:
        return message_from_bytes(data, policy=compat32)
    except RecursionError:
        return None


#: Multiparts deeper than this are not walked (real mail nests a handful; the
#: walk recurses once per level).
_MAX_DEPTH = 100


def _walk(part: Message, body: _Body, in_report: bool = False, in_alternative: bool = False, depth: int = 0) -> None:
    body.defects.extend(type(d).__name__ for d in part.defects)
    ctype = part.get_content_type()
    if ctype.startswith("multipart/"):
        if depth >= _MAX_DEPTH:
            body.defects.append("MimeNestingTooDeep")
            return
        payload = part.get_payload()
        if isinstance(payload, str) and depth:
            repaired = _refold_part(part, payload)
            if repaired is not None:
                body.defects.append("BrokenHeaderFolding")
                part, payload = repaired, repaired.get_payload()
        subs = payload if isinstance(payload, list) else []
        # a DSN in a multipart/mixed (McAfee, some Sendmails): the returned original beside its
        # message/delivery-status part is the report's, as in a multipart/report
        report = in_report or ctype == "multipart/report" or any(
            sub.get_content_type() == "message/delivery-status" for sub in subs)
        for sub in subs:
            _walk(sub, body, report, ctype == "multipart/alternative", depth + 1)
        return
    name = attachments.filename(part, body.hints, body.defects)
    if in_alternative and ctype in _ALTERNATIVE_RENDERINGS and name is None and _disposition(part) != "attachment":
        return
    if ctype == "message/delivery-status":
        body.delivery_status = True
        body.dsn.update({k: v for k, v in dsn.delivery_status(part).items() if k not in body.dsn})
    elif in_report and ctype in _REPORT_ORIGINALS:
        original = dsn.original_message_id(part)
        if original:
            body.dsn.setdefault("dsn_original_message_id", original)
        return
    if _is_attachment(part, ctype, name):
        if ctype != "message/delivery-status" or name is not None:
            _collect_attachment(part, ctype, name, body)
        return
    data = part.get_payload(decode=True) or b""
    sniffed = _binary_type(data)
    if sniffed is not None:  # a file labelled text (a PNG sent as text/plain): not the body
        body.defects.append(f"BinaryTextPart:{sniffed}")
        content_id = (attachments.raw_header(part, "content-id") or "").strip().strip("<>") or None
        body.attachments.append(attachments.make(data, None, sniffed, inline=_disposition(part) == "inline",
                                                 content_id=content_id))
    elif ctype == "text/html":
        body.html.append(_decode_text(part, body, data))
    else:
        body.plain.append(_decode_text(part, body, data))


#: File signatures (magic numbers) at the start of a file, and the file's type.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
               (b"GIF89a", "image/gif"), (b"%PDF-", "application/pdf"), (b"PK\x03\x04", "application/zip"))


def _binary_type(data: bytes) -> str | None:
    """The file type of a "text" part's bytes when they are a file: they
    start with a PNG, JPEG, GIF, PDF or ZIP signature and hold a NUL byte
    (each of those formats has NULs in its headers or blocks; text in any
    charset but UTF-16/32 has none, and none of these signatures starts
    UTF-16/32 text); else None."""
    for magic, ctype in _SIGNATURES:
        if data.startswith(magic):
            return ctype if b"\x00" in data else None
    return None


_WORD_CHARSET_BYTES = re.compile(rb"=\?([A-Za-z0-9_.:+-]+)(?:\*[^?]*)?\?[bBqQ]\?")


def _declared(data: bytes) -> tuple[str, ...]:
    """Codecs of every charset the message declares anywhere (MIME charset
    parameters and encoded words), in order of appearance: the candidates for
    raw 8-bit header bytes. The first one is also the body's fallback hint.

    A byte search rather than a second walk over the MIME tree: it is on the hot path.
    """
    found: dict[str, None] = {}
    for pattern in (_CHARSET_PARAM_BYTES, _WORD_CHARSET_BYTES):
        for m in pattern.finditer(data):
            for codec in charsets.codecs_for(m.group(1).decode("ascii")):
                found.setdefault(codec)
    return tuple(found)


def _header_bytes(data: bytes) -> bytes:
    end = _END_OF_HEADERS.search(data)
    return data[: end.start()] if end else data


def _body_hints(data: bytes) -> tuple[str, ...]:
    """Codecs of the first declared charset: the best guess for undeclared body bytes."""
    for m in _CHARSET_PARAM_BYTES.finditer(data):
        found = charsets.codecs_for(m.group(1).decode("ascii"))
        if found:
            return found
    return ()


# ---------------------------------------------------------------- headers → Inbound fields


def _sender(msg: Message, raw: bytes, context: Mapping[str, Any], hmap: dict[str, list[str]],
            hints: tuple[str, ...], defects: list[str]) -> Sender:
    froms = hmap.get("from", [])
    if len(froms) > 1:
        defects.append("DuplicateFromHeader")
    pairs = headers.addresses(froms, hints, defects)
    any_name = next((n for n, _ in pairs if n), None)
    for name, addr in pairs:
        if headers.usable(addr):
            return Sender("email", addr, name or any_name)
    # the whole `name <addr>` inside one encoded word (old mailers): decode, then parse again
    for value in froms:
        if "=?" in value:
            for name, addr in headers.decoded_addresses(headers.decode_header(value, hints, [])):
                if headers.usable(addr):
                    defects.append("EncodedWordAddress")
                    return Sender("email", addr, name)
    # `Big Bug bb@bug.com`, `tim@a.com concierge@a.com`: a bare address among words, no brackets
    for value in froms:
        text = headers.decode_header(value, hints, [])
        m = None if "<" in text else _BARE_ADDRESS.search(text)
        if m and headers.usable(m.group(1).lower()):
            defects.append("BareAddressInFrom")
            name = text[: m.start()].strip(" \t\"',") or None
            return Sender("email", m.group(1).lower(), name or any_name)
    defects.append("NoUsableFrom" if froms else "MissingFrom")
    for hdr in _SENDER_FALLBACKS:
        for name, addr in headers.addresses(hmap.get(hdr, []), hints, defects):
            if headers.usable(addr):
                defects.append(f"SenderFrom:{hdr}")
                return Sender("email", addr, any_name or name)
    mail_from = str(context.get("mail_from") or "").strip().strip("<>").lower()
    if headers.usable(mail_from):
        defects.append("SenderFrom:smtp-envelope")
        return Sender("email", mail_from, any_name)
    envelope = (msg.get_unixfrom() or "").split()
    if len(envelope) > 1 and headers.usable(envelope[1].lower()):
        defects.append("SenderFrom:mbox-envelope")
        return Sender("email", envelope[1].lower(), any_name)
    defects.append("NoSenderAddress")
    # no address anywhere: a sender of its own, unique to this message, that
    # never links to another contact (an empty identity would merge strangers)
    return Sender("external", f"email-unknown:{hashlib.sha256(raw).hexdigest()[:32]}", any_name)


def _from_mailbox(hmap: dict[str, list[str]], hints: tuple[str, ...], sender: Sender) -> str:
    """Who the From says sent the mail, for telling a mailer daemon: the
    sender, else the From's mailbox that no reply could go to —
    ``<MAILER-DAEMON>`` with no domain, ``MAILER-DAEMON <>`` (its name)."""
    if sender.kind == "email":
        return sender.value
    for name, addr in headers.addresses(hmap.get("from", []), hints, []):
        if addr or (name and " " not in name):
            return addr or name.lower()
    return sender.value


def _envelope(context: Mapping[str, Any], hmap: dict[str, list[str]]) -> dict[str, str]:
    """What the envelope says, as meta: ``return_path`` (the SMTP ``MAIL FROM``
    this gateway received, else the ``Return-Path`` the delivering MTA wrote;
    ``<>`` for a null sender — RFC 3834 auto-replies go there and only there)
    and ``envelope_to`` (our own mailboxes it was delivered to: the SMTP
    recipients, else ``Delivered-To``/``X-Original-To`` and the IMAP login) —
    never taken for a ticket's participants."""
    out: dict[str, str] = {}
    if "mail_from" in context:
        path = str(context.get("mail_from") or "").strip()
    else:
        path = next(iter(hmap.get("return-path", [])), None)
    if path is not None:
        addr = path.strip().strip("<>").strip().lower()
        out["return_path"] = addr if headers.usable(addr) else "<>"
    rcpts = context.get("rcpt_tos") or [
        a for _n, a in headers.addresses(hmap.get("delivered-to", []) + hmap.get("x-original-to", []), (), [])
        if headers.usable(a)]
    user = str(context.get("user") or "").lower()  # an IMAP account's login is often its address
    if headers.usable(user) and user not in rcpts:
        rcpts = [*rcpts, user]
    if rcpts:
        out["envelope_to"] = ",".join(str(r).strip().strip("<>").lower() for r in rcpts)
    return out


def _usable_addresses(values: list[str], hints: tuple[str, ...], defects: list[str]) -> list[str]:
    out: list[str] = []
    for _name, addr in headers.addresses(values, hints, defects):
        if headers.usable(addr) and addr not in out:
            out.append(addr)
    return out


def _text(body: _Body) -> tuple[str, str | None]:
    """``(text, full_text)``: the reply-stripped text, and the original when stripping removed something."""
    full = "\n\n".join(t.strip("\n") for t in body.plain if t.strip())
    if not full and body.html:
        full = html_to_text(body.html[0])
    stripped, removed = strip_reply(full)
    return stripped, (full.strip() if removed else None)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _inbound(msg: Message, raw: bytes, context: Mapping[str, Any], defects: list[str]) -> Inbound:
    body = _Body(hints=_body_hints(raw))
    # raw 8-bit header bytes: only worth the search when there are any
    hints = _declared(raw) if not _header_bytes(raw).isascii() else body.hints
    _walk(msg, body)
    hmap = _header_map(msg)

    def first(name: str) -> str | None:
        return (hmap.get(name) or [None])[0]

    sender = _sender(msg, raw, context, hmap, hints, defects)
    subject_raw = first("subject")
    subject = headers.decode_header(subject_raw, hints, defects) if subject_raw is not None else None
    message_ids = headers.message_ids(first("message-id"), bare=True)
    thread = ThreadHints(
        message_id=message_ids[0] if message_ids else None,
        in_reply_to=(headers.message_ids(first("in-reply-to")) or [None])[0],
        references=headers.message_ids(" ".join(hmap.get("references", []))),
    )
    to = _usable_addresses(hmap.get("to", []), hints, defects)
    account = context.get("account") or next(
        iter(_usable_addresses(hmap.get("delivered-to", []), hints, defects) + to), ""
    )
    text, full_text = _text(body)
    content_type = msg.get_content_type()
    report_type = msg.get_param("report-type") if content_type == "multipart/report" else None
    envelope = _envelope(context, hmap)
    auto, reason = dsn.classify(hmap, content_type, report_type, _from_mailbox(hmap, hints, sender), subject or "",
                                body.delivery_status, null_sender=envelope.get("return_path") == "<>")

    meta: dict[str, str] = {"content_type": content_type, **envelope}
    if thread.message_id:  # as in the journal key: the pipeline tells a reused Message-ID by it
        meta["content_sha"] = keys.content_digest(raw)
    if sender.kind == "external":
        meta["sender_unknown"] = "true"
    if body.charsets:
        meta["charset"] = ",".join(body.charsets)
    if reason:
        meta["auto_reason"] = reason
    if auto == "bounce":
        meta.update(body.dsn)
        for key, value in dsn.facts_from_text(full_text or text).items():
            meta.setdefault(key, value)
        if "dsn_original_message_id" not in meta and thread.in_reply_to:
            meta["dsn_original_message_id"] = thread.in_reply_to
    if body.tnef:
        meta["tnef"] = ", ".join(body.tnef)

    return Inbound(
        channel="email",
        account=str(account),
        external_id=thread.message_id or "sha256:" + hashlib.sha256(raw).hexdigest(),
        kind="message",
        sender=sender,
        subject=subject,
        text=text,
        html=body.html[0] if body.html else None,
        full_text=full_text,
        attachments=body.attachments,
        thread=thread,
        sent_at=headers.date(first("date"), defects),
        defects=_unique([*defects, *body.defects]),
        auto=auto,
        recipients=_unique(to + _usable_addresses(hmap.get("cc", []), hints, defects)),
        meta=meta,
    )


def _parse_outlook_msg(raw: bytes, context: Mapping[str, Any]) -> Inbound:
    """An Outlook .msg blob: its transport headers as the mail, the blob as an attachment."""
    head = outlook.transport_headers(raw)
    defects = ["OutlookMsgNotMime"]
    msg = message_from_bytes(head or b"\r\n", policy=compat32)
    if head is None:
        defects.append("NoTransportHeaders")
    inbound = _inbound(msg, raw, context, defects)
    inbound.attachments.append(attachments.make(raw, "message.msg", "application/vnd.ms-outlook"))
    inbound.meta["content_type"] = "application/vnd.ms-outlook"
    return inbound
