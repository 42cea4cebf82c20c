"""Call logs → one :class:`Inbound` of kind ``call`` per row (pure).

One parser serves the ``omnigate parse`` names ``asterisk``, ``freeswitch``
and ``twilio`` (and the daemon's channel ``phone``, where the journal entry's
``format`` says which). Every Inbound has ``channel = "phone"``; its
``account`` names the source (``asterisk``, ``freeswitch:<name>``…, from the
context) and ``meta["trunk"]`` the trunk or channel the row names.

Formats:

- ``asterisk`` — ``cdr_csv`` ``Master.csv`` in the standard column order
  (accountcode, src, dst, dcontext, clid, channel, dstchannel, lastapp,
  lastdata, start, answer, end, duration, billsec, disposition, amaflags
  [, uniqueid, userfield [, peeraccount, linkedid, sequence]]), or in the
  order of ``cdr_custom``'s sample mapping (clid first, told apart by where
  the disposition is), or under a header row naming the columns (an export
  of the CDR database table, FreePBX's CDR report: ``calldate`` for the
  start, no answer or end time): one call per
  row, ``external_id`` = the uniqueid (the linkedid where the row has it);
  CEL CSV (``cel_custom``: eventtype, eventtime, cid_name, cid_num, ani,
  rdnis, dnid, exten, context, channame, appname, appdata, amaflags,
  accountcode, uniqueid, linkedid, peer, userdeftype, …, extra): the event
  rows of one ``linkedid`` make one call.
- ``freeswitch`` — a ``mod_json_cdr`` record (raw JSON, or the module's
  ``cdr=`` form encoding), a ``mod_xml_cdr`` record (``<cdr>`` XML, the
  same channel variables and caller profile), or ``mod_cdr_csv`` rows in the operator's column
  template (context ``template``/``csv_template``; the module's ``example``
  template when none is given). ``external_id`` = the channel uuid.
- ``twilio`` — a voice status callback body (form-encoded), or a
  ``<Dial action>`` request (``DialCallStatus``: the dialed leg's outcome,
  which is the call's — ``no-answer`` under an in-progress parent is
  missed); with
  ``auth_token`` and the request's ``url`` and ``headers`` in the context the
  ``X-Twilio-Signature`` is checked (``RequestValidator``) and a bad one is
  refused. ``external_id`` = the CallSid.

Rows that report the same call share the ``external_id``; the pipeline makes
one call of them (a later row updates the first). A CSV row that does not
parse is reported through ``context["warn"]`` (``omnigate parse`` prints it
with its line number) and the other rows are still taken; a file where no
row parses is refused.

Naive times are in ``context["timezone"]`` (default ``Asia/Shanghai``).
CSV that is not UTF-8 is read in its most plausible encoding (GB18030 for a
Chinese trunk's caller names, Windows-1252 for a European one).
A caller number that is withheld or not a phone number (empty,
``anonymous``, ``test``) is kept as the source gave it, with a defect: the
pipeline gives such a call its own anonymous contact. Numbers matching one of
``context["internal_patterns"]`` (regexes; none by default) are extensions:
extension → extension is ``internal``, extension → outside ``outbound``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import zoneinfo
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qsl

from connectors.base import PayloadRejected
from routing.model import CallInfo, Inbound, Sender

CHANNEL = "phone"
SOURCES = ("asterisk", "freeswitch", "twilio")
DISPOSITIONS = ("answered", "missed", "busy", "failed", "voicemail")

#: ``cdr_csv`` column order (Asterisk ``cdr_csv.c``); the last five are optional.
CDR_COLUMNS = ("accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp", "lastdata",
               "start", "answer", "end", "duration", "billsec", "disposition", "amaflags", "uniqueid", "userfield",
               "peeraccount", "linkedid", "sequence")
#: ``cdr_custom``'s sample ``Master.csv`` mapping (``cdr_custom.conf.sample``): the same
#: fields, clid first and accountcode after amaflags, sequence last.
CDR_CUSTOM_COLUMNS = ("clid", "src", "dst", "dcontext", "channel", "dstchannel", "lastapp", "lastdata", "start",
                      "answer", "end", "duration", "billsec", "disposition", "amaflags", "accountcode", "uniqueid",
                      "userfield", "sequence")
CEL_COLUMNS = ("eventtype", "eventtime", "cid_name", "cid_num", "cid_ani", "cid_rdnis", "cid_dnid", "exten", "context",
               "channame", "appname", "appdata", "amaflags", "accountcode", "uniqueid", "linkedid", "peer",
               "userdeftype")
CEL_EVENTS = frozenset({
    "CHAN_START", "CHAN_END", "ANSWER", "HANGUP", "CONF_ENTER", "CONF_EXIT", "CONF_START", "CONF_END", "APP_START",
    "APP_END", "PARK_START", "PARK_END", "BRIDGE_START", "BRIDGE_END", "BRIDGE_UPDATE", "BRIDGE_ENTER",
    "BRIDGE_EXIT", "3WAY_START", "3WAY_END", "TRANSFER", "BLINDTRANSFER", "ATTENDEDTRANSFER", "HOOKFLASH",
    "LINKEDID_END", "USER_DEFINED", "PICKUP", "FORWARD", "LOCAL_OPTIMIZE", "STREAM_BEGIN", "STREAM_END", "DTMF",
})
#: mod_cdr_csv's ``example`` template, the module's default (conf/autoload_configs/cdr_csv.conf.xml).
FREESWITCH_DEFAULT_TEMPLATE = (
    '"${caller_id_name}","${caller_id_number}","${destination_number}","${context}","${start_stamp}",'
    '"${answer_stamp}","${end_stamp}","${duration}","${billsec}","${hangup_cause}","${uuid}","${bleg_uuid}",'
    '"${accountcode}","${read_codec}","${write_codec}"'
)
_ASTERISK_DISPOSITION = {"ANSWERED": "answered", "NO ANSWER": "missed", "NOANSWER": "missed", "BUSY": "busy",
                         "FAILED": "failed", "CONGESTION": "failed", "CANCEL": "missed"}
_FS_MISSED = frozenset({"NO_ANSWER", "NO_USER_RESPONSE", "ORIGINATOR_CANCEL", "ALLOTTED_TIMEOUT", "LOSE_RACE",
                        "PICKED_OFF", "SUBSCRIBER_ABSENT", "USER_NOT_REGISTERED"})
_FS_BUSY = frozenset({"USER_BUSY", "CALL_REJECTED", "NORMAL_CIRCUIT_CONGESTION"})
_TWILIO_DISPOSITION = {"completed": "answered", "in-progress": "answered", "answered": "answered", "busy": "busy",
                       "no-answer": "missed", "canceled": "missed", "failed": "failed"}
#: Lines one CSV record may span (a quoted field holding newlines); a quote
#: still open after them is a broken row.
MAX_RECORD_LINES = 20
_PHONE_LIKE = re.compile(r"\+?[0-9][0-9 ()./-]*")
_VAR = re.compile(r"\$\{([^}]+)\}")
_PCT = re.compile(r"%[0-9A-Fa-f]{2}")


class RowError(ValueError):
    """One row of a call log that cannot be read; the message says why."""


# ---------------------------------------------------------------- entry point


def parse(raw: bytes, context: Mapping[str, Any]) -> list[Inbound]:
    fmt = str(context.get("format") or context.get("channel") or "").lower()
    source = fmt.split("_", 1)[0] if fmt.split("_", 1)[0] in SOURCES else _sniff(raw)
    p = _Ctx(context, source)
    if source == "twilio":
        return [parse_twilio(raw, p)]
    if source == "freeswitch":
        if _json_cdr(raw):
            return [parse_freeswitch_json(raw, p)]
        return _rows_or_refuse(raw, p, parse_freeswitch_csv)
    return _rows_or_refuse(raw, p, parse_asterisk_csv)


def _json_cdr(raw: bytes) -> bool:
    """A mod_json_cdr (or mod_xml_cdr) POST body (JSON or XML, ``cdr=`` form,
    base64) rather than CSV rows."""
    head = raw.lstrip()[:64]
    if head[:1] in (b"{", b"", b"<") or head.startswith(b"cdr="):
        return True
    if re.fullmatch(rb"[A-Za-z0-9+/=\s]+", raw[:4096]):
        try:
            return base64.b64decode(raw.strip()[:64])[:1] == b"{"
        except ValueError:
            return False
    return False


def _sniff(raw: bytes) -> str:
    if raw.lstrip()[:1] in (b"{", b"<") or raw.lstrip().startswith(b"cdr="):
        return "freeswitch"
    if b"CallSid=" in raw[:4096]:
        return "twilio"
    return "asterisk"


def _rows_or_refuse(raw: bytes, p: "_Ctx", fn: Callable[[bytes, "_Ctx"], list[Inbound]]) -> list[Inbound]:
    inbounds = fn(raw, p)
    if not inbounds:
        first = p.errors[0] if p.errors else "no call rows"
        raise PayloadRejected(f"no row of this {p.source} call log parses ({first})")
    if p.errors and not callable(p._warn):  # no one to tell (the pipeline): the calls carry it
        for inbound in inbounds:
            inbound.defects.extend(f"skipped {e}" for e in p.errors)
    return inbounds


class _Ctx:
    """What the parse context says, read once."""

    def __init__(self, context: Mapping[str, Any], source: str):
        self.source = source
        self.account = str(context.get("account") or source)
        try:
            self.tz = zoneinfo.ZoneInfo(str(context.get("timezone") or "Asia/Shanghai"))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise PayloadRejected(f"unknown timezone {context.get('timezone')!r}") from None
        patterns = context.get("internal_patterns") or ()
        if isinstance(patterns, str):
            patterns = [patterns]
        try:
            self.internal = [re.compile(x) for x in patterns]
        except re.error as exc:
            raise PayloadRejected(f"internal_patterns: {exc}") from None
        self.template = context.get("csv_template") or context.get("template") or FREESWITCH_DEFAULT_TEMPLATE
        self.region = str(context.get("default_region") or "CN")
        self.context = context
        try:
            self.first_line = int(context.get("line") or 1)
        except (TypeError, ValueError):
            self.first_line = 1
        self._warn = context.get("warn")
        self.errors: list[str] = []

    def warn(self, line: int, reason: str) -> None:
        msg = f"line {line}: {reason}"
        self.errors.append(msg)
        if callable(self._warn):
            self._warn(msg)

    def is_internal(self, number: str | None) -> bool:
        return bool(number) and any(rx.fullmatch(number) for rx in self.internal)

    def local(self, naive: datetime) -> datetime:
        return naive.replace(tzinfo=self.tz) if naive.tzinfo is None else naive


# ---------------------------------------------------------------- shared helpers


def e164(value: str, region: str = "CN") -> str:
    """``13812345678`` → ``+8613812345678`` (``phonenumbers``, ``region`` for
    numbers without a country code); extensions, short codes and anything
    that is not a number are returned as given."""
    raw = re.sub(r"[\s()./-]", "", value)
    if raw.startswith("00"):
        raw = "+" + raw[2:]
    if not re.fullmatch(r"\+?\d{7,17}", raw):
        return value
    import phonenumbers

    for text, reg in ((raw, region), *((("+" + raw, None),) if not raw.startswith("+") and len(raw) > 11 else ())):
        try:
            num = phonenumbers.parse(text, reg)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(num):
            return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    return value


def is_phone_number(value: str | None) -> bool:
    """Whether a caller field is a dialable number (not empty, ``anonymous``,
    ``test``, ``unknown`` or a SIP user name)."""
    v = (value or "").strip()
    return bool(_PHONE_LIKE.fullmatch(v)) and any(c != "0" for c in re.sub(r"\D", "", v))


def _time(value: str | None, p: _Ctx, what: str) -> datetime | None:
    v = (value or "").strip()
    if not v:
        return None
    try:
        if re.fullmatch(r"\d{9,11}(\.\d+)?", v):  # Unix seconds (CEL eventtime, *_epoch)
            return datetime.fromtimestamp(float(v), tz=timezone.utc)
        m = re.fullmatch(r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?", v)
        if m:
            y, mo, d, h, mi, s, frac = m.groups()
            t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0),
                         int((frac or "0")[:6].ljust(6, "0")))
            return p.local(t)
        t = datetime.fromisoformat(v)
        return p.local(t)
    except (ValueError, OverflowError, OSError):
        raise RowError(f"{what} {v!r} is not a time") from None


def _int(value: str | None, what: str) -> int | None:
    v = (value or "").strip()
    if not v:
        return None
    try:
        n = int(float(v))
    except (ValueError, OverflowError):
        raise RowError(f"{what} {v!r} is not a number") from None
    if n < 0:
        raise RowError(f"{what} {v!r} is negative")
    return n


def _clid(clid: str) -> tuple[str | None, str | None]:
    """``"Test User" <100>`` → (name, number)."""
    m = re.fullmatch(r'\s*"?([^"<]*?)"?\s*<([^>]*)>\s*', clid or "")
    if m:
        return (m.group(1).strip() or None), (m.group(2).strip() or None)
    return (clid.strip() or None), None


def _call_inbound(p: _Ctx, *, call_id: str, number_from: str | None, number_to: str | None, name: str | None,
                  call: CallInfo, defects: list[str], meta: dict[str, str], raw_type: str) -> Inbound:
    """The Inbound of one call report: direction, the customer (sender) and defects."""
    src, dst = _user_part(number_from), _user_part(number_to)
    if call.direction is None:  # extension patterns see the numbers as the PBX wrote them
        if p.is_internal(src) and p.is_internal(dst):
            call.direction = "internal"
        elif p.is_internal(src):
            call.direction = "outbound"
        else:
            call.direction = "inbound"
    if src and is_phone_number(src) and not p.is_internal(src):
        src = e164(src, p.region)
    if dst and is_phone_number(dst) and not p.is_internal(dst):
        dst = e164(dst, p.region)
    call.from_, call.to = src or None, dst or None
    customer = dst if call.direction == "outbound" else src
    if call.direction != "internal" and not is_phone_number(customer):
        defects.append(f"{'callee' if call.direction == 'outbound' else 'caller'} {customer!r} is withheld or "
                       "not a phone number: the call gets its own anonymous contact")
    if call.direction == "outbound":
        name = None
    text = call_summary(call)
    return Inbound(channel=CHANNEL, account=p.account, external_id=call_id, kind="call",
                   sender=Sender("phone", customer, name), text=text, call=call, sent_at=call.started_at,
                   defects=defects, raw_type=raw_type, meta={k: v for k, v in meta.items() if v})


def _user_part(value: str | None) -> str:
    """``sip:+8613800138000@trunk.example;user=phone`` or ``tel:+86…`` → the number; anything else as given."""
    v = (value or "").strip()
    m = re.fullmatch(r"(?:sips?|tel):([^@;]+)(?:[@;].*)?", v, re.I)
    return m.group(1) if m else v


def call_summary(call: CallInfo) -> str:
    """One line for the timeline: ``Inbound call from +86…, missed``."""
    who = call.from_ if call.direction != "outbound" else call.to
    parts = [f"{(call.direction or 'inbound').capitalize()} call {'to' if call.direction == 'outbound' else 'from'} "
             f"{who or 'an unknown number'}"]
    if call.disposition:
        parts.append(call.disposition)
    if call.duration_s is not None:
        parts.append(f"{call.duration_s} s")
    return ", ".join(parts)


def _records(raw: bytes, p: _Ctx) -> Iterable[tuple[int, list[str] | None, str | None]]:
    """(line number, fields or None, error) of each CSV record; a record that
    breaks the CSV syntax is reported and reading goes on at the next line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # CDRs carry caller names in whatever the PBX was given: GBK from a
        # Chinese trunk, Windows-1252 from a European one — the plausible reading
        from connectors.email.charsets import detect_header

        text = detect_header(raw)[0]
    if "\x00" in text:
        raise PayloadRejected("a call log is text; this holds NUL bytes")
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        start = i
        chunk = lines[i]
        i += 1
        while chunk.count('"') % 2 and i < len(lines) and i - start < MAX_RECORD_LINES:  # a field spanning lines
            chunk += lines[i]
            i += 1
        if not chunk.strip():
            continue
        line_no = p.first_line + start
        if chunk.count('"') % 2:
            yield line_no, None, "a quoted field is never closed (truncated row)"
            i = start + 1
            continue
        try:
            rows = list(csv.reader(io.StringIO(chunk), strict=True))
        except csv.Error as exc:
            yield line_no, None, f"not CSV: {exc}"
            continue
        if len(rows) != 1:
            yield line_no, None, "not one CSV record"
            continue
        yield line_no, rows[0], None


def split_records(raw: bytes, first_line: int = 1) -> list[tuple[int, bytes]]:
    """(line number, bytes) of each CSV record of a call log, blank lines
    skipped; a quoted field may span lines (the record keeps them)."""
    out: list[tuple[int, bytes]] = []
    lines = raw.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        start, chunk = i, lines[i]
        i += 1
        while chunk.count(b'"') % 2 and i < len(lines) and i - start < MAX_RECORD_LINES:
            chunk += lines[i]
            i += 1
        if chunk.count(b'"') % 2:  # never closed: report the line alone, go on with the next
            chunk, i = lines[start], start + 1
        if chunk.strip():
            out.append((first_line + start, chunk))
    return out


# ---------------------------------------------------------------- Asterisk


def cdr_header(fields: list[str] | None) -> tuple[str, ...] | None:
    """The column names of a header row (an export of the CDR database
    table — FreePBX's CDR report, ``cdr_adaptive_odbc``/``cdr_mysql``'s
    ``calldate, clid, src, dst, … disposition …`` — or a ``cdr_custom``
    file with a header), or None for a data row."""
    if not fields:
        return None
    names = tuple(f.strip().lower() for f in fields)
    if {"src", "dst", "disposition"} <= set(names) and all(re.fullmatch(r"[a-z_][a-z0-9_]*", n) for n in names):
        return names
    return None


def parse_asterisk_csv(raw: bytes, p: _Ctx) -> list[Inbound]:
    records = list(_records(raw, p))
    cel = any(f and f[0].strip().upper() in CEL_EVENTS for _, f, _ in records[:5])
    if cel:
        return _parse_cel(records, p)
    out: list[Inbound] = []
    header: tuple[str, ...] | None = None
    for n, (line, fields, error) in enumerate(records):
        if fields is None:
            p.warn(line, error or "unreadable")
            continue
        if n == 0 and (header := cdr_header(fields)) is not None:
            continue
        try:
            out.append(asterisk_cdr_row(fields, p, line, header))
        except RowError as exc:
            p.warn(line, str(exc))
    return out


def _named_cdr_fields(fields: list[str], header: tuple[str, ...]) -> dict[str, str]:
    """A row of a CDR table export by its header's names. The table has
    ``calldate`` (the start) and no answer or end time: the end is the start
    plus ``duration``, the answer the end minus ``billsec``; ``cnam`` names
    the caller when ``clid`` does not."""
    if len(fields) != len(header):
        raise RowError(f"{len(fields)} fields; the header names {len(header)}")
    r = dict(zip(header, (f.strip() for f in fields)))
    r.setdefault("start", r.get("calldate", ""))
    if not r.get("clid") and r.get("cnam"):
        r["clid"] = f'"{r["cnam"]}" <{r.get("cnum") or r.get("src", "")}>'
    for name in CDR_COLUMNS[:16]:
        r.setdefault(name, "")
    return r


def asterisk_cdr_row(fields: list[str], p: _Ctx, line: int = 1, header: tuple[str, ...] | None = None) -> Inbound:
    defects: list[str] = []
    columns: tuple[str, ...] = CDR_COLUMNS
    if header is not None:
        columns = header
        r = _named_cdr_fields(fields, header)
    else:
        if not 16 <= len(fields) <= len(CDR_COLUMNS):
            raise RowError(f"{len(fields)} fields; a cdr_csv row has 16 to {len(CDR_COLUMNS)}")
        if (len(fields) >= 16 and fields[13].strip().upper() in _ASTERISK_DISPOSITION
                and fields[14].strip().upper() not in _ASTERISK_DISPOSITION):
            columns = CDR_CUSTOM_COLUMNS  # disposition in the 14th column: cdr_custom's sample layout
        r = dict(zip(columns, (f.strip() for f in fields)))
        for name in CDR_COLUMNS[:16]:
            r.setdefault(name, "")
    start = _time(r["start"], p, "start")
    if start is None:
        raise RowError("start is empty")
    answer = _time(r["answer"], p, "answer")
    end = _time(r["end"], p, "end")
    duration = _int(r["duration"], "duration")
    billsec = _int(r["billsec"], "billsec")
    if header is not None and end is None and duration is not None:
        end = start + timedelta(seconds=duration)
        if answer is None and billsec:
            answer = end - timedelta(seconds=billsec)
    raw_disp = r["disposition"].upper()
    disposition = _ASTERISK_DISPOSITION.get(raw_disp)
    if disposition is None:
        raise RowError(f"disposition {r['disposition']!r} is not an Asterisk disposition")
    if disposition == "answered" and r["lastapp"].lower() == "voicemail":
        disposition = "voicemail"
    if disposition not in ("answered", "voicemail"):
        answer = None
    name, clid_number = _clid(r["clid"])
    src = r["src"] or clid_number or ""
    call_id = r.get("linkedid") or r.get("uniqueid") or ""
    if not call_id:
        call_id = "cdr-" + hashlib.sha256(",".join(fields).encode()).hexdigest()[:24]
        defects.append("no uniqueid column: the call id is derived from the row")
    recording = r.get("userfield") if re.match(r"https?://", r.get("userfield") or "") else None
    call = CallInfo(started_at=start, answered_at=answer, ended_at=end, duration_s=duration,
                    disposition=disposition, recording_url=recording)
    meta = {"trunk": r["channel"].split("-")[0] if r["channel"] else "", "uniqueid": r.get("uniqueid", ""),
            "context": r["dcontext"], "accountcode": r["accountcode"], "billsec": str(billsec or 0),
            "source_disposition": r["disposition"], "line": str(line)}
    if columns is CDR_CUSTOM_COLUMNS:
        meta["layout"] = "cdr_custom"
    elif header is not None:
        meta["layout"] = "header"
        if r.get("did"):
            meta["did"] = r["did"]
        if r.get("recordingfile"):
            meta["recording_file"] = r["recordingfile"]
    return _call_inbound(p, call_id=call_id, number_from=src, number_to=r["dst"], name=name, call=call,
                         defects=defects, meta=meta, raw_type="asterisk.cdr")


def _parse_cel(records: list[tuple[int, list[str] | None, str | None]], p: _Ctx) -> list[Inbound]:
    calls: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for line, fields, error in records:
        if fields is None:
            p.warn(line, error or "unreadable")
            continue
        if len(fields) < 16 or fields[0].strip().upper() not in CEL_EVENTS:
            p.warn(line, f"not a CEL event row ({len(fields)} fields, event {fields[0][:20]!r})")
            continue
        ev = dict(zip(CEL_COLUMNS, (f.strip() for f in fields)))
        ev["extra"] = fields[-1].strip() if len(fields) > len(CEL_COLUMNS) else ""
        try:
            _time(ev["eventtime"], p, "eventtime")
        except RowError as exc:
            p.warn(line, str(exc))
            continue
        linkedid = ev["linkedid"] or ev["uniqueid"]
        if not linkedid:
            p.warn(line, "no linkedid or uniqueid")
            continue
        calls.setdefault(linkedid, []).append((line, ev))
    return [_cel_call(linkedid, events, p) for linkedid, events in calls.items()]


def _cel_call(linkedid: str, events: list[tuple[int, dict[str, str]]], p: _Ctx) -> Inbound:
    evs = [e for _, e in events]
    times = [_time(e["eventtime"], p, "eventtime") for e in evs]
    origin = [e for e in evs if e["uniqueid"] == linkedid] or evs
    first = next((e for e in origin if e["eventtype"] == "CHAN_START"), origin[0])
    types = {e["eventtype"] for e in evs}
    answered_at = next((t for e, t in zip(evs, times) if e["eventtype"] == "ANSWER" and e["uniqueid"] == linkedid),
                       None)
    bridged = "BRIDGE_START" in types or "BRIDGE_ENTER" in types
    # LINKEDID_END closes the call; a cel.conf that does not log it still
    # logs the CHAN_END of the channel the call started on
    ended = "LINKEDID_END" in types or any(e["eventtype"] == "CHAN_END" and e["uniqueid"] == linkedid for e in evs)
    causes = [e["extra"].split(",")[0] for e in evs if e["eventtype"] == "HANGUP" and e["extra"]]
    if any(e["appname"].lower() == "voicemail" for e in evs):
        disposition = "voicemail"
    elif answered_at is not None or bridged:
        disposition = "answered"
    elif "17" in causes:
        disposition = "busy"
    elif ended:
        disposition = "missed"
    else:
        disposition = None  # still ringing when the log was written
    start = times[evs.index(first)] if first in evs else min(t for t in times if t)
    end = max(t for t in times if t) if ended or "CHAN_END" in types else None
    call = CallInfo(started_at=start, answered_at=answered_at, ended_at=end,
                    duration_s=round((end - start).total_seconds()) if end and start else None,
                    disposition=disposition)
    number_to = first["cid_dnid"] or first["exten"] or next((e["exten"] for e in origin if e["exten"]), "")
    defects = [] if ended else ["no LINKEDID_END or CHAN_END event yet: the call may still be in progress"]
    meta = {"trunk": first["channame"].split("-")[0], "linkedid": linkedid, "events": str(len(evs)),
            "context": first["context"], "line": str(events[0][0])}
    return _call_inbound(p, call_id=linkedid, number_from=first["cid_num"], number_to=number_to,
                         name=first["cid_name"] or None, call=call, defects=defects, meta=meta,
                         raw_type="asterisk.cel")


# ---------------------------------------------------------------- FreeSWITCH


def template_columns(template: str) -> list[str]:
    """``"${caller_id_name}","${uuid}"`` → ``["caller_id_name", "uuid"]``."""
    try:
        cells = next(csv.reader(io.StringIO(template.strip())))
    except (csv.Error, StopIteration):
        raise PayloadRejected("the mod_cdr_csv template is not one CSV line") from None
    cols = []
    for cell in cells:
        m = _VAR.search(cell)
        cols.append(m.group(1) if m else cell.strip())
    if "uuid" not in cols and "call_uuid" not in cols:
        raise PayloadRejected("the mod_cdr_csv template names no ${uuid}: rows of one call could not be joined")
    return cols


def parse_freeswitch_csv(raw: bytes, p: _Ctx) -> list[Inbound]:
    cols = template_columns(str(p.template))
    out = []
    for line, fields, error in _records(raw, p):
        if fields is None:
            p.warn(line, error or "unreadable")
            continue
        if len(fields) != len(cols):
            p.warn(line, f"{len(fields)} fields; the template has {len(cols)}")
            continue
        try:
            out.append(_freeswitch_call(dict(zip(cols, (f.strip() for f in fields))), p, line, "freeswitch.csv"))
        except RowError as exc:
            p.warn(line, str(exc))
    return out


def parse_freeswitch_json(raw: bytes, p: _Ctx) -> Inbound:
    """A mod_json_cdr record as the module POSTs it: raw JSON (``encode``
    false), the form field ``cdr=`` (``encode`` true) or base64 (``encode``
    base64); values URL-encoded one by one (``encode-values``, the module's
    default) are decoded."""
    from urllib.parse import unquote, unquote_plus

    body = raw.strip()
    if body.startswith(b"cdr="):
        body = unquote_plus(body[4:].decode("utf-8", "replace")).encode().strip()
    if body[:1] == b"<":
        return _freeswitch_xml(body, p)
    if body[:1] not in (b"{", b"["):
        try:
            body = base64.b64decode(body, validate=True).strip()
        except ValueError:
            raise PayloadRejected("not a mod_json_cdr record: neither JSON nor base64") from None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadRejected(f"not a mod_json_cdr record: invalid JSON ({exc})") from None
    except RecursionError:  # [[[[…]]]] thousands deep: the json module's recursion
        raise PayloadRejected("not a mod_json_cdr record: JSON nested too deeply") from None
    if isinstance(doc, dict) and isinstance(doc.get("variables"), dict):
        doc["variables"] = {k: unquote(v) if isinstance(v, str) and _PCT.search(v) else v
                            for k, v in doc["variables"].items()}
    if not isinstance(doc, dict) or not isinstance(doc.get("variables"), dict):
        raise PayloadRejected("not a mod_json_cdr record: no \"variables\" object")
    v = {k: str(x) for k, x in doc["variables"].items() if isinstance(x, (str, int, float))}
    flow = doc.get("callflow")
    flow0 = flow[0] if isinstance(flow, list) and flow and isinstance(flow[0], dict) else (
        flow if isinstance(flow, dict) else {})
    profile = flow0.get("caller_profile") if isinstance(flow0.get("caller_profile"), dict) else {}
    return _freeswitch_record(v, profile, p, "freeswitch.json", "mod_json_cdr")


def _freeswitch_record(variables: Mapping[str, str], profile: Mapping[str, Any], p: _Ctx, raw_type: str,
                       module: str) -> Inbound:
    """One call of a CDR's channel variables, completed by its first caller profile."""
    merged = {k: str(x) for k, x in profile.items() if isinstance(x, (str, int))}
    merged.update(variables)
    for k in ("caller_id_number", "caller_id_name", "destination_number"):
        if not merged.get(k) and profile.get(k):
            merged[k] = str(profile[k])
    try:
        return _freeswitch_call(merged, p, 1, raw_type)
    except RowError as exc:
        raise PayloadRejected(f"{module} record: {exc}") from None


def _plain_xml(body: bytes) -> Any:
    """The document's element tree, read without namespace processing: each
    channel variable is an element named after it, and a name such as
    ``nolocal:req_uuid`` (what ``export nolocal:…`` sets) is no namespace
    prefix — ``ET.fromstring`` refused the record as "unbound prefix"."""
    import xml.etree.ElementTree as ET
    from xml.parsers import expat

    parser = expat.ParserCreate()
    builder = ET.TreeBuilder()
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.Parse(body, True)
    return builder.close()


def _freeswitch_xml(body: bytes, p: _Ctx) -> Inbound:
    """A ``mod_xml_cdr`` record (``<cdr><variables>…</variables><callflow>
    <caller_profile>…``), the XML twin of mod_json_cdr, values URL-encoded
    the same way. A DOCTYPE (and so any entity declaration) is refused."""
    from urllib.parse import unquote
    from xml.parsers import expat

    if b"<!DOCTYPE" in body[:4096].upper() or b"<!ENTITY" in body.upper():
        raise PayloadRejected("not a mod_xml_cdr record: XML with a DOCTYPE is refused")
    try:
        root = _plain_xml(body)
    except expat.ExpatError as exc:
        raise PayloadRejected(f"not a mod_xml_cdr record: invalid XML ({exc})") from None
    variables = root.find("variables") if root.tag == "cdr" else None
    if variables is None:
        raise PayloadRejected(f"not a mod_xml_cdr record: root <{root.tag}> has no <variables>")
    v = {el.tag: unquote(el.text or "").strip() for el in variables}
    profile_el = root.find("callflow/caller_profile")
    profile = {el.tag: (el.text or "").strip() for el in profile_el} if profile_el is not None else {}
    return _freeswitch_record(v, profile, p, "freeswitch.xml", "mod_xml_cdr")


def _fs_time(r: Mapping[str, str], name: str, p: _Ctx) -> datetime | None:
    """``<name>_uepoch``/``_epoch`` (UTC, unambiguous) before ``<name>_stamp`` (the switch's local time)."""
    for key, scale in ((f"{name}_uepoch", 1e6), (f"{name}_epoch", 1.0)):
        value = (r.get(key) or "").strip()
        if value and value.isascii() and value.isdigit() and int(value) > 0:  # "²" is a digit to isdigit() only
            try:
                return datetime.fromtimestamp(int(value) / scale, tz=timezone.utc)
            except (OverflowError, OSError, ValueError):
                raise RowError(f"{key} {value[:24]!r} is out of range") from None
    return _time(r.get(f"{name}_stamp"), p, f"{name}_stamp")


def _freeswitch_call(r: Mapping[str, str], p: _Ctx, line: int, raw_type: str) -> Inbound:
    call_id = r.get("uuid") or r.get("call_uuid") or ""
    if not call_id:
        raise RowError("no uuid")
    defects: list[str] = []
    start, answer, end = _fs_time(r, "start", p), _fs_time(r, "answer", p), _fs_time(r, "end", p)
    duration, billsec = _int(r.get("duration"), "duration"), _int(r.get("billsec"), "billsec")
    cause = (r.get("hangup_cause") or "").upper()
    if billsec and billsec > 0 or (answer is not None and cause == "NORMAL_CLEARING"):
        disposition: str | None = "answered"
    elif cause in _FS_BUSY:
        disposition = "busy"
    elif cause in _FS_MISSED or (cause == "NORMAL_CLEARING" and answer is None):
        disposition = "missed"
    elif cause:
        disposition = "failed"
    else:
        disposition = None
        defects.append("no hangup_cause: the record does not say how the call ended")
    if disposition == "answered" and (r.get("voicemail_message_len") or "voicemail" in (r.get("current_application") or "")):
        disposition = "voicemail"
    if disposition not in ("answered", "voicemail"):
        answer = None
    # FreeSWITCH's own "direction" is per leg (a B-leg it originated is
    # "outbound" even for a customer's call): the number patterns decide
    call = CallInfo(direction=None, started_at=start, answered_at=answer, ended_at=end, duration_s=duration,
                    disposition=disposition,
                    recording_url=next((r[k] for k in ("recording_url", "record_url") if r.get(k)), None))
    src = r.get("caller_id_number") or r.get("sip_from_user") or r.get("effective_caller_id_number") or ""
    dst = r.get("destination_number") or r.get("sip_to_user") or r.get("sip_req_user") or r.get("dialed_user") or ""
    meta = {"trunk": (r.get("sofia_profile_name") or r.get("context") or ""), "hangup_cause": cause,
            "billsec": str(billsec or 0), "bleg_uuid": r.get("bleg_uuid", ""), "line": str(line) if line > 1 else "",
            "accountcode": r.get("accountcode", ""), "leg_direction": r.get("direction", "")}
    return _call_inbound(p, call_id=call_id, number_from=src, number_to=dst,
                         name=(r.get("caller_id_name") or None), call=call, defects=defects, meta=meta,
                         raw_type=raw_type)


# ---------------------------------------------------------------- Twilio


def twilio_params(raw: bytes) -> dict[str, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadRejected("a Twilio callback body is UTF-8 form data") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError:
        raise PayloadRejected("not a form-encoded Twilio callback") from None
    return dict(pairs)


def twilio_signature_ok(auth_token: str, url: str, params: Mapping[str, str], signature: str) -> bool:
    from twilio.request_validator import RequestValidator

    return bool(signature) and RequestValidator(auth_token).validate(url, dict(params), signature)


#: longer than any call (a week): a bigger CallDuration is a defect, not a time to subtract
_MAX_CALL_S = 7 * 86400


def parse_twilio(raw: bytes, p: _Ctx) -> Inbound:
    params = twilio_params(raw)
    if not params.get("CallSid"):
        raise PayloadRejected("not a Twilio voice status callback: no CallSid")
    token = p.context.get("auth_token")
    headers = {str(k).lower(): str(v) for k, v in (p.context.get("headers") or {}).items()}
    if token and p.context.get("url"):
        if not twilio_signature_ok(str(token), str(p.context["url"]), params, headers.get("x-twilio-signature", "")):
            raise PayloadRejected("X-Twilio-Signature does not match the body, URL and auth token")
    defects: list[str] = []
    status = params.get("CallStatus", "").lower()
    dial_status = params.get("DialCallStatus", "").lower()
    if dial_status:  # a <Dial action> request: the parent is still up, the dialed leg has ended
        return _twilio_dial(params, p, status, dial_status, defects)
    disposition = _TWILIO_DISPOSITION.get(status)
    if (params.get("AnsweredBy") or "").startswith("machine") and disposition == "answered":
        disposition = "voicemail"
    given = params.get("CallDuration") or params.get("Duration")
    try:
        duration = _int(given, "CallDuration")
        if duration is not None and duration > _MAX_CALL_S:
            raise RowError(f"CallDuration {given[:24]!r} is out of range")
    except RowError as exc:  # still the call: kept without a duration (it was a parser crash)
        defects.append(str(exc))
        duration = None
    at = None
    if params.get("Timestamp"):
        try:
            at = parsedate_to_datetime(params["Timestamp"])
        except (TypeError, ValueError):
            defects.append(f"Timestamp {params['Timestamp']!r} is not an RFC 2822 date")
    started = answered = ended = None
    if at is not None:
        if status in ("completed", "busy", "no-answer", "canceled", "failed"):
            ended = at
            if duration is not None:
                started = at - timedelta(seconds=duration)
                answered = started if disposition in ("answered", "voicemail") and duration else None
        elif status == "in-progress":
            answered = at
        else:
            started = at
    direction = params.get("Direction", "inbound").lower()
    call = CallInfo(direction="outbound" if direction.startswith("outbound") else None, started_at=started,
                    answered_at=answered, ended_at=ended, duration_s=duration, disposition=disposition,
                    recording_url=params.get("RecordingUrl") or None)
    meta = {"trunk": params.get("To", "") if not direction.startswith("outbound") else params.get("From", ""),
            "call_status": status, "account_sid": params.get("AccountSid", ""),
            "sequence": params.get("SequenceNumber", ""), "parent_call_sid": params.get("ParentCallSid", "")}
    return _call_inbound(p, call_id=params["CallSid"], number_from=params.get("From") or params.get("Caller"),
                         number_to=params.get("To") or params.get("Called"), name=params.get("CallerName") or None,
                         call=call, defects=defects, meta=meta, raw_type=f"twilio.{status or 'callback'}")


def _twilio_dial(params: Mapping[str, str], p: _Ctx, status: str, dial_status: str, defects: list[str]) -> Inbound:
    """A ``<Dial action>`` request: the parent call's parameters (its
    ``CallStatus`` mostly ``in-progress``) plus the dialed leg's
    ``DialCallStatus``, ``DialCallSid``, ``DialCallDuration`` (only when it
    was answered), ``DialBridged`` and the dial's ``RecordingUrl``. The
    dialed leg's outcome is the call's: a dial nobody picked up under an
    answered parent is a missed call. No times: the request carries none of
    the dialed leg's."""
    disposition = _TWILIO_DISPOSITION.get(dial_status)
    if disposition is None:
        defects.append(f"DialCallStatus {dial_status!r} is not one Twilio documents")
    try:
        duration = _int(params.get("DialCallDuration"), "DialCallDuration")
    except RowError as exc:
        duration = None
        defects.append(str(exc))
    direction = params.get("Direction", "inbound").lower()
    call = CallInfo(direction="outbound" if direction.startswith("outbound") else None, duration_s=duration,
                    disposition=disposition, recording_url=params.get("RecordingUrl") or None,
                    dialed=disposition is not None)
    meta = {"trunk": params.get("To", "") if not direction.startswith("outbound") else params.get("From", ""),
            "call_status": status, "account_sid": params.get("AccountSid", ""),
            "dial_call_status": dial_status, "dial_call_sid": params.get("DialCallSid", ""),
            "dial_bridged": params.get("DialBridged", "")}
    return _call_inbound(p, call_id=params["CallSid"], number_from=params.get("From") or params.get("Caller"),
                         number_to=params.get("To") or params.get("Called"), name=params.get("CallerName") or None,
                         call=call, defects=defects, meta=meta, raw_type=f"twilio.dial.{dial_status}")
