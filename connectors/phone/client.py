"""Call logs' I/O: a durable Asterisk CDR tailer and the HTTP endpoints.

One :class:`PhoneConnector` serves every account of the ``phone`` section::

    phone:
      internal_patterns: ['\\d{3,4}']      # extensions (none by default)
      accounts:
        pbx1: {source: asterisk, cdr_path: /var/log/asterisk/cdr-csv/Master.csv}
        fs1:  {source: freeswitch, username: cdr, csv_template: '"${uuid}",…'}
        main: {source: twilio, public_url: https://support.example.com}

Secrets (``upload_token``, ``password``, ``auth_token``) come from the
environment (``OMNIGATE_PHONE__ACCOUNTS__PBX1__UPLOAD_TOKEN``) or ``*_file``.
The Inbound account is ``<source>:<name>``.

Routes (each body read whole, however TCP cut it, up to ``max_body_bytes``):

- ``POST /channels/phone/{name}/upload`` (asterisk, freeswitch; ``Authorization:
  Bearer <upload_token>``): a CSV file. Each row is journaled on its own (CEL:
  the rows of one linkedid together) with an idempotency key derived from
  the row, so uploading the same file twice changes nothing. The answer lists
  the rows that do not parse with their line numbers; they are journaled too
  and fail there with the reason (nothing is dropped). 422 when no row parses.
- ``POST /channels/phone/{name}/cdr`` (freeswitch ``mod_json_cdr``): HTTP
  basic auth with the module's ``cred`` (``username:password``).
- ``POST /channels/phone/{name}/status`` (twilio voice status callbacks):
  ``X-Twilio-Signature`` checked over ``public_url`` + path (and query) and
  the sorted form parameters with the account's ``auth_token``
  (``twilio.request_validator.RequestValidator``) before anything is stored:
  a forged or missing one → 401. A signed ``Timestamp`` older than
  ``replay_window`` → 403; a redelivered body is the same journal entry.
  The same route takes a ``<Dial action>`` request (``DialCallStatus``), the
  same way; its answer is an empty TwiML ``<Response/>`` (the call ends, as it
  does when the document has nothing after the ``<Dial>``).

The tailer (an account with ``cdr_path``: Asterisk's ``Master.csv``, or
FreeSWITCH ``mod_cdr_csv``'s in its ``csv_template``) reads complete lines only
(a partial last line waits until the PBX finishes it), journals them, then
stores the byte offset with ``ctx.state_set``: a crash after the journal but
before the offset re-reads rows whose keys the journal already has (no
duplicate); a crash before the journal loses nothing. A file that shrank or
has a new inode (log rotation) is read from its start.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, Callable, Literal, Mapping

import msgspec
import structlog
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from connectors.base import ConnectorContext, Fatal, PayloadRejected, SendError, SendResult, owned
from connectors.http import BODY_TIMEOUT_S, BodyTimeout, BodyTooLarge, read_body
from connectors.phone.parse import (
    CEL_EVENTS,
    MAX_RECORD_LINES,
    cdr_header,
    parse,
    split_records,
    template_columns,
    twilio_params,
    twilio_signature_ok,
)
from routing.model import Outbound

log = structlog.get_logger(__name__)

#: The answer to a ``<Dial action>`` request: nothing more to do, the call ends.
_EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
MAX_BATCH = 256  # rows journaled together before the tail offset is stored


# ---------------------------------------------------------------- configuration


class AccountConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    source: Literal["asterisk", "freeswitch", "twilio"]
    cdr_path: str | None = None
    upload_token: str | None = None
    username: str | None = None
    password: str | None = None
    csv_template: str | None = None
    auth_token: str | None = None
    account_sid: str | None = None
    public_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/]")] | None = None
    timezone: str | None = None
    #: Where a tail with no stored offset starts: the file's ``beginning``
    #: (import its history) or its ``end`` (only calls from now on).
    start_at: Literal["beginning", "end"] = "beginning"


Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class PhoneConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    accounts: dict[Name, AccountConfig] = {}
    internal_patterns: list[str] = []
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 8 * 1024 * 1024
    poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    replay_window: Annotated[int, msgspec.Meta(gt=0)] = 86400
    public_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/]")] | None = None


def load_config(raw: Mapping[str, Any]) -> PhoneConfig:
    try:
        cfg = msgspec.convert(dict(raw), PhoneConfig, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise Fatal(f"phone config: {message.replace('`$', '`phone')}") from None
    for pattern in cfg.internal_patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise Fatal(f"phone config: internal_patterns: {pattern!r}: {exc}") from None
    for name, a in cfg.accounts.items():
        if a.source == "twilio" and not a.auth_token:
            raise Fatal(f"phone config: accounts.{name}: a twilio account needs auth_token (X-Twilio-Signature)")
        if a.source == "twilio" and not (a.public_url or cfg.public_url):
            raise Fatal(f"phone config: accounts.{name}: a twilio account needs public_url (the signed URL; "
                        "or phone.public_url, or the gateway's public_url)")
        if a.source == "freeswitch" and not (a.username and a.password) and not a.upload_token:
            raise Fatal(f"phone config: accounts.{name}: a freeswitch account needs username and password "
                        "(mod_json_cdr's cred) or upload_token")
        if a.cdr_path and a.source == "twilio":
            raise Fatal(f"phone config: accounts.{name}: cdr_path is for asterisk and freeswitch accounts")
        if a.csv_template:
            try:
                template_columns(a.csv_template)
            except PayloadRejected as exc:
                raise Fatal(f"phone config: accounts.{name}: csv_template: {exc}") from None
    return cfg


# ---------------------------------------------------------------- HTTP helpers


async def read_file_part(request: web.Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The first file of a multipart/form-data upload, whole, up to ``max_bytes`` (413 past it).

    A malformed multipart body (no boundary, broken part headers) is 400 and
    one that does not arrive whole within ``BODY_TIMEOUT_S`` is 408, as for
    any other body — never a 500."""
    if request.content_length is not None and request.content_length > max_bytes + 64 * 1024:
        raise BodyTooLarge(max_bytes, request.content_length)
    try:
        reader = await request.multipart()
        async with asyncio.timeout(BODY_TIMEOUT_S):
            async for part in reader:
                if not isinstance(part, BodyPartReader) or part.filename is None and part.name != "file":
                    continue
                chunks, size = [], 0
                while chunk := await part.read_chunk(65536):
                    size += len(chunk)
                    if size > max_bytes:
                        raise BodyTooLarge(max_bytes, request.content_length)
                    chunks.append(chunk)
                return b"".join(chunks), part.filename
    except TimeoutError:
        raise BodyTimeout(text=f"the body was not received within {BODY_TIMEOUT_S:g} s") from None
    except (HttpProcessingError, ValueError, AssertionError) as exc:  # aiohttp's multipart parser on bad input
        raise web.HTTPBadRequest(text=f"not a valid multipart/form-data body: {exc}".splitlines()[0]) from None
    raise web.HTTPBadRequest(text="a multipart upload needs a file part")


def _problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return web.Response(status=status, text=json.dumps(body, ensure_ascii=False),
                        content_type="application/problem+json")


def _same(a: str | None, b: str | None) -> bool:
    # header bytes that are not UTF-8 arrive as surrogate escapes: compare them as the bytes they were
    return a is not None and b is not None and hmac.compare_digest(a.encode("utf-8", "surrogateescape"),
                                                                   b.encode("utf-8", "surrogateescape"))


def row_key(account: str, record: bytes) -> str:
    """The idempotency key of one call-log row: the same row again (a re-read
    after a crash, an uploaded file sent twice) is the same journal entry."""
    return "row:" + hashlib.sha256(account.encode() + b"\0" + record.strip()).hexdigest()


# ---------------------------------------------------------------- the connector


@dataclass
class _Tail:
    offset: int = 0
    inode: int | None = None
    line: int = 0  # lines consumed, for the row numbers of reports


class PhoneConnector:
    channel = "phone"

    def __init__(self, ctx: ConnectorContext):
        self.ctx = ctx
        section = dict(ctx.config)
        if not section.get("public_url") and getattr(ctx, "public_url", None):  # the gateway-wide public_url
            section["public_url"] = ctx.public_url
        self.cfg = load_config(section)
        self._stopping = asyncio.Event()
        #: The gateway's clock (aware UTC): the replay window of Twilio's signed Timestamp.
        self.clock: Callable[[], datetime] = getattr(ctx, "clock", None) or (lambda: datetime.now(timezone.utc))

    def _refuse(self, status: int, title: str, detail: str, field: str, reason: str, **bound: Any) -> web.Response:
        """A request refused before anything was stored: logged, counted
        (``omnigate_rejected{channel="phone", reason}``), answered problem+json."""
        log.warning("phone.request_refused", status=status, reason=reason, **bound)
        count = getattr(self.ctx, "rejected", None)
        if count is not None:
            count(reason)
        headers = {"WWW-Authenticate": 'Basic realm="omnigate"'} if reason == "unauthorized_basic" else None
        resp = _problem(status, title, detail, field=field)
        if headers:
            resp.headers.update(headers)
        return resp

    # routes ----------------------------------------------------------------

    def routes(self) -> list[Any]:
        return [
            web.post("/channels/phone/{name}/upload", self.upload),
            web.post("/channels/phone/{name}/cdr", self.freeswitch_cdr),
            web.post("/channels/phone/{name}/status", self.twilio_status),
        ]

    def _account(self, request: web.Request, *sources: str) -> tuple[str, AccountConfig]:
        name = request.match_info["name"]
        acct = self.cfg.accounts.get(name)
        if acct is None or acct.source not in sources:
            raise web.HTTPNotFound(text=f"no {' or '.join(sources)} account {name!r}")
        return name, acct

    def _meta(self, acct: AccountConfig, fmt: str, **extra: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {"format": fmt}
        if self.cfg.internal_patterns:
            meta["internal_patterns"] = list(self.cfg.internal_patterns)
        if acct.timezone:
            meta["timezone"] = acct.timezone
        if fmt == "freeswitch" and acct.csv_template:
            meta["csv_template"] = acct.csv_template
        meta.update({k: v for k, v in extra.items() if v is not None})
        return meta

    async def upload(self, request: web.Request) -> web.Response:
        name, acct = self._account(request, "asterisk", "freeswitch")
        auth = request.headers.get("Authorization", "")
        if not acct.upload_token or not auth.startswith("Bearer ") or not _same(auth[7:].strip(), acct.upload_token):
            return self._refuse(401, "Unauthorized", "Authorization: Bearer <upload_token of this account> is needed",
                                "Authorization", "unauthorized", account=name)
        file_name = request.query.get("name") or "upload"
        if request.content_type == "multipart/form-data":  # curl -F file=@Master.csv
            try:
                body, part_name = await read_file_part(request, self.cfg.max_body_bytes)
            except web.HTTPBadRequest as exc:  # the 400 names the body, as the other refusals name theirs
                return _problem(400, "Bad request", exc.text or "not a valid multipart/form-data body", field="body")
            file_name = part_name or file_name
        else:
            body = await read_body(request, self.cfg.max_body_bytes)
        account = f"{acct.source}:{name}"
        meta = self._meta(acct, acct.source, file=file_name)
        groups = self._groups(body, acct)
        if not groups:
            return _problem(422, "No call rows", "the file holds no CSV rows", field="body")
        errors: list[dict] = []
        journal_ids: list[str] = []
        good = 0
        for line, record in groups:
            problems: list[str] = []
            try:
                calls = parse(record, {**meta, "line": line, "account": account, "warn": problems.append})
            except PayloadRejected as exc:
                calls = []
                problems = problems or [str(exc)]
            if calls:
                good += 1
            for p in problems:
                m = re.match(r"line (\d+): (.*)", p)
                errors.append({"line": int(m.group(1)), "error": m.group(2)} if m else {"line": line, "error": p})
        for i in range(0, len(groups), MAX_BATCH):  # one group commit per batch, not one fsync per row
            results = await asyncio.gather(*(self.ctx.ingest(account, row_key(account, record), record,
                                                             dict(meta, line=line))
                                             for line, record in groups[i:i + MAX_BATCH]))
            journal_ids.extend(r.journal_id for r in results)
        log.info("phone.upload", account=account, rows=len(groups), bad=len(errors))
        body_out = {"account": account, "rows": len(groups), "accepted": good, "errors": errors,
                    "journal_ids": journal_ids}
        if not good:
            return _problem(422, "No row parses", "no row of this file is a call record (see errors)",
                            field="body", errors=errors, journal_ids=journal_ids)
        return web.json_response(body_out)

    def _groups(self, body: bytes, acct: AccountConfig) -> list[tuple[int, bytes]]:
        """(first line, bytes) per journal entry: one per row, CEL rows per
        linkedid; under a header row (a CDR table export) each row carries the
        header with it, numbered from the line before its own, so every
        journal entry still parses alone."""
        records = split_records(body)
        if acct.source == "asterisk" and records and _header_row(records[0][1]):
            head = records[0][1] if records[0][1].endswith(b"\n") else records[0][1] + b"\n"
            return [(line - 1, head + record) for line, record in records[1:]]
        if acct.source != "asterisk" or not any(_cel_event(r) for _, r in records[:5]):
            return records
        groups: dict[str, tuple[int, list[bytes]]] = {}
        for line, record in records:
            linkedid = _cel_linkedid(record) or f"line-{line}"
            groups.setdefault(linkedid, (line, []))[1].append(record)
        return [(line, b"".join(rs)) for line, rs in groups.values()]

    async def freeswitch_cdr(self, request: web.Request) -> web.Response:
        name, acct = self._account(request, "freeswitch")
        user, password = _basic_auth(request.headers.get("Authorization", ""))
        if not (acct.username and acct.password and _same(user, acct.username) and _same(password, acct.password)):
            return self._refuse(401, "Unauthorized", "mod_json_cdr's cred (HTTP basic auth) does not match",
                                "Authorization", "unauthorized_basic", account=name)
        body = await read_body(request, self.cfg.max_body_bytes)
        account = f"freeswitch:{name}"
        meta = self._meta(acct, "freeswitch")
        meta.pop("csv_template", None)
        try:
            (call,) = parse(body, {**meta, "account": account})
        except PayloadRejected as exc:  # kept, failed with the reason: FreeSWITCH would only retry it
            result = await self.ctx.ingest(account, "sha256:" + hashlib.sha256(body).hexdigest(), body, meta)
            return _problem(422, "Not a mod_json_cdr record", str(exc), field="body", journal_id=result.journal_id)
        key = f"fs:{call.external_id}:" + hashlib.sha256(body).hexdigest()[:32]
        result = await self.ctx.ingest(account, key, body, meta)
        return web.json_response({"journal_id": result.journal_id})

    async def twilio_status(self, request: web.Request) -> web.Response:
        name, acct = self._account(request, "twilio")
        body = await read_body(request, self.cfg.max_body_bytes)
        base = (acct.public_url or self.cfg.public_url or "").rstrip("/")
        url = base + request.path_qs
        signature = request.headers.get("X-Twilio-Signature", "")
        try:
            params = twilio_params(body)
        except PayloadRejected as exc:
            return self._refuse(400, "Bad callback", str(exc), "body", "malformed", account=name)
        assert acct.auth_token is not None
        if not twilio_signature_ok(acct.auth_token, url, params, signature):
            return self._refuse(401, "Unauthorized", "X-Twilio-Signature does not match", "X-Twilio-Signature",
                                "bad_signature", account=name)
        if acct.account_sid and params.get("AccountSid") != acct.account_sid:
            return self._refuse(403, "Forbidden", "AccountSid is not this account's", "AccountSid", "wrong_account",
                                account=name)
        stamp = params.get("Timestamp")
        if stamp:
            try:
                age = (self.clock() - parsedate_to_datetime(stamp)).total_seconds()
            except (TypeError, ValueError):
                return self._refuse(400, "Bad callback", "Timestamp is not an RFC 2822 date", "Timestamp", "malformed",
                                    account=name)
            if age > self.cfg.replay_window:
                return self._refuse(403, "Replayed callback", "Timestamp is older than the replay window",
                                    "Timestamp", "stale", account=name, age_s=int(age))
        if not params.get("CallSid"):
            return self._refuse(400, "Bad callback", "no CallSid", "CallSid", "malformed", account=name)
        account = f"twilio:{name}"
        meta = self._meta(acct, "twilio", url=url, headers={"X-Twilio-Signature": signature})
        key = f"twilio:{params['CallSid']}:" + hashlib.sha256(body).hexdigest()[:32]
        await self.ctx.ingest(account, key, body, meta)
        if params.get("DialCallStatus"):  # a <Dial action> request: Twilio runs the TwiML answered
            return web.Response(text=_EMPTY_TWIML, content_type="text/xml")
        return web.Response(status=204)

    # the tailer -------------------------------------------------------------

    async def run(self) -> None:
        # one tailer per file across instances (a lease when they share a Redis store)
        tails = {f"phone:tail:{name}": owned(self.ctx, f"phone:tail:{name}", lambda n=name, a=acct: self.tail(n, a))
                 for name, acct in self.cfg.accounts.items() if acct.cdr_path}
        if tails:
            await self.ctx.supervisor.run(tails)

    async def tail(self, name: str, acct: AccountConfig, *, once: bool = False) -> None:
        """Follow ``cdr_path``; every complete row is journaled, then the offset stored.
        (CEL files are uploaded, not tailed: a call's events span rows.)"""
        assert acct.cdr_path is not None
        state_key = f"tail:{name}"
        raw_state = await self.ctx.state_get(state_key)
        st = _Tail(**json.loads(raw_state)) if raw_state else _Tail()
        if raw_state is None and acct.start_at == "end":  # first run: the history before today is not imported
            st = await asyncio.to_thread(_end_of, acct.cdr_path)
            await self.ctx.state_set(state_key, json.dumps({"offset": st.offset, "inode": st.inode, "line": st.line}))
            log.info("phone.tail_start", account=f"{acct.source}:{name}", offset=st.offset, start_at="end")
        account = f"{acct.source}:{name}"
        meta = self._meta(acct, acct.source, file=acct.cdr_path)
        while not self._stopping.is_set():
            try:
                info = os.stat(acct.cdr_path)
            except FileNotFoundError:
                info = None
            if info is not None:
                if (st.inode is not None and info.st_ino != st.inode) or info.st_size < st.offset:
                    log.info("phone.tail_restart", account=account, reason="rotated or truncated")
                    st = _Tail(inode=info.st_ino)
                st.inode = info.st_ino
                if info.st_size > st.offset:
                    await self._consume(acct.cdr_path, account, meta, st, state_key)
            if once:
                return
            try:
                await asyncio.wait_for(self._stopping.wait(), self.cfg.poll_interval)
            except asyncio.TimeoutError:
                pass

    async def _consume(self, path: str, account: str, meta: dict, st: _Tail, state_key: str) -> None:
        while True:
            data = await asyncio.to_thread(_read_from, path, st.offset, 1 << 20)
            complete = complete_prefix(data)
            if not complete:
                return  # nothing, or a partial last line the PBX is still writing
            records = split_records(complete, first_line=st.line + 1)
            for i in range(0, len(records), MAX_BATCH):
                batch = records[i:i + MAX_BATCH]
                await asyncio.gather(*(self.ctx.ingest(account, row_key(account, rec), rec, dict(meta, line=line))
                                       for line, rec in batch))
            st.offset += len(complete)
            st.line += complete.count(b"\n")
            await self.ctx.state_set(state_key, json.dumps({"offset": st.offset, "inode": st.inode,
                                                            "line": st.line}))
            log.info("phone.tail_rows", account=account, rows=len(records), offset=st.offset)
            if len(data) < 1 << 20:
                return

    async def send(self, outbound: Outbound) -> SendResult:
        raise SendError("a call log cannot carry a reply; answer by phone or another channel", retryable=False)

    async def close(self) -> None:
        self._stopping.set()


def _end_of(path: str) -> _Tail:
    """Where a tail that starts at the end of ``path`` begins: after its last
    complete line (a partial last line is still to come)."""
    try:
        with open(path, "rb") as fh:
            inode = os.fstat(fh.fileno()).st_ino
            offset = lines = 0
            last_newline = 0
            while chunk := fh.read(1 << 20):
                lines += chunk.count(b"\n")
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    last_newline = offset + nl + 1
                offset += len(chunk)
    except FileNotFoundError:
        return _Tail()
    return _Tail(offset=last_newline, inode=inode, line=lines)


def _read_from(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def complete_prefix(data: bytes, max_lines: int = MAX_RECORD_LINES) -> bytes:
    """The longest prefix of ``data`` made of whole rows, as
    :func:`split_records` cuts them: each ends with a newline outside quotes
    (a quoted field may hold newlines). A quote still open after
    ``max_lines`` lines is a broken row: its first line is taken alone (and
    reported by the parser), so one bad row never stops the tail."""
    lines = data.split(b"\n")[:-1]  # the last piece has no newline yet
    ends, pos = [], 0
    for line in lines:
        pos += len(line) + 1
        ends.append(pos)
    end, i = 0, 0
    while i < len(lines):
        j, quotes = i, lines[i].count(b'"')
        while quotes % 2 and j + 1 < len(lines) and j - i + 1 < max_lines:
            j += 1
            quotes += lines[j].count(b'"')
        if quotes % 2 == 0:
            end, i = ends[j], j + 1
        elif j - i + 1 >= max_lines:
            end, i = ends[i], i + 1
        else:
            break  # a row the PBX is still writing
    return data[:end]


def _cel_event(record: bytes) -> bool:
    return record.lstrip()[:40].strip(b'"').split(b'"', 1)[0].decode("ascii", "replace").upper() in CEL_EVENTS


def _header_row(record: bytes) -> bool:
    import csv
    import io

    try:
        fields = next(csv.reader(io.StringIO(record.decode("utf-8", "replace"))))
    except (csv.Error, StopIteration):
        return False
    return cdr_header(fields) is not None


def _cel_linkedid(record: bytes) -> str | None:
    import csv
    import io

    try:
        fields = next(csv.reader(io.StringIO(record.decode("utf-8", "replace"))))
    except (csv.Error, StopIteration):
        return None
    return fields[15].strip() if len(fields) > 15 else None


def _basic_auth(header: str) -> tuple[str | None, str | None]:
    if not header.lower().startswith("basic "):
        return None, None
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None, None
    return (user, password) if sep else (None, None)


