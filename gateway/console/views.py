"""The console's pages and actions (see ``gateway/console/__init__.py``).

Every handler starts with :func:`principal` (the session → a
:class:`gateway.auth.Principal`, or a redirect to the sign-in page) and, for a
POST, :func:`checked_form` (the CSRF token). Rights are asked of
``gateway/auth.py``, the same helpers the REST API uses.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import msgspec
import nh3
import structlog
from aiohttp import web

from gateway import keys
from gateway.auth import AUTH, Principal, can_manage_ticket, can_read_ticket
from gateway.console import CONSOLE, i18n
from gateway.console.canned import render as render_canned
from gateway.console.live import Bus, bus_ctx, stream
from gateway.outbox import DISPATCHER
from gateway.replies import mentions_in
from gateway.store.base import InvalidTransition, NoReplyTarget, NotFound, ReplyDraft, StoreError
from gateway.store.sqlite_console import digest
from gateway.store.sqlite_tickets import TicketQuery, VersionMismatch
from gateway.store.sqlite_tokens import TOKEN_PREFIX
from gateway.tasks import cancel_and_wait
from routing.text import int64

log = structlog.get_logger(__name__)
HERE = Path(__file__).parent
COOKIE = "og_session"
LANG_COOKIE = "og_lang"
TZ_COOKIE = "og_tz"
PRE_CSRF = "og_csrf"
STATIC = {"htmx.min.js": ("htmx-2.0.4.min.js", "text/javascript"), "console.js": ("console.js", "text/javascript"),
          "chats.js": ("chats.js", "text/javascript"),
          "console.css": ("console.css", "text/css"), "htmx-LICENSE.txt": ("htmx-LICENSE.txt", "text/plain")}
STATUSES = ("new", "open", "pending", "on_hold", "solved", "closed")
PRIORITIES = ("urgent", "high", "normal", "low")
OPEN = ("new", "open", "pending", "on_hold")
#: Channel icons: symbols the common fonts carry (no colour-emoji font needed), with the name beside or as the label.
CHANNEL_ICONS = {"wechat": "◎", "wecom": "◈", "email": "✉", "telegram": "✈", "api": "⚙", "webchat": "☷",
                 "whatsapp": "✆", "voice": "☎", "line": "◆", "messenger": "◇", "instagram": "▣", "sms": "✎"}
PAGE = 50
#: every console page and fragment says the app's clock's time (ms since the epoch) in this header
SERVER_NOW_HEADER = "X-Omnigate-Now"


class Console:
    def __init__(self, app: web.Application) -> None:
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                      undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.bus = Bus(app[keys.STORE])
        #: agent id → the clock's time of the last heartbeat from an open console page
        self.heartbeats: dict[str, datetime] = {}


def setup(app: web.Application, pipeline: Any) -> None:
    console = app[CONSOLE] = Console(app)
    pipeline.after_commit.append(console.bus.after_commit)
    r = app.router
    r.add_get("/console", index)
    r.add_get("/console/", index)
    r.add_get("/console/login", login_page)
    r.add_post("/console/login", login_post)
    r.add_post("/console/logout", logout)
    r.add_post("/console/lang", set_lang)
    r.add_get("/console/static/{name}", static)
    r.add_get("/console/queue", queue)
    r.add_get("/console/tickets/{number}", ticket_page)
    r.add_get("/console/tickets/{number}/older", ticket_older)
    r.add_get("/console/tickets/{number}/newer", ticket_newer)
    r.add_get("/console/tickets/{number}/entries/{entry}", ticket_entry)
    r.add_get("/console/tickets/{number}/entries/{entry}/attachments/{index}", ticket_attachment)
    r.add_post("/console/tickets/{number}/reply", ticket_reply)
    r.add_post("/console/tickets/{number}/update", ticket_update)
    r.add_get("/console/canned", canned_search)
    r.add_get("/console/admin/canned", canned_admin)
    r.add_post("/console/admin/canned", canned_admin_post)
    r.add_post("/console/presence", presence_set)
    r.add_post("/console/heartbeat", heartbeat)
    r.add_post("/console/contacts/{id}/merge", contact_merge)
    r.add_post("/console/contacts/{id}/unmerge", contact_unmerge)
    r.add_get("/console/journal", journal_page)
    r.add_post("/console/journal/{id}/replay", journal_replay)
    r.add_get("/console/events", events)
    app.cleanup_ctx.append(lambda a: bus_ctx(a, CONSOLE_BUS))
    app[CONSOLE_BUS] = console.bus
    app.cleanup_ctx.append(_presence_ctx)
    app.on_shutdown.append(_close_streams)


CONSOLE_BUS: web.AppKey[Bus] = web.AppKey("console_bus")


async def _close_streams(app: web.Application) -> None:
    app[CONSOLE_BUS].close_streams()


# ---------------------------------------------------------------- presence: away after the grace time


async def sweep_presence(app: web.Application) -> list[str]:
    """Agents online whose console sent no heartbeat for ``console.presence_grace_s``
    (by the app's clock) go away, so tickets are not assigned to them; returns who."""
    console: Console = app[CONSOLE]
    now = app[keys.CLOCK]()
    grace = timedelta(seconds=app[keys.CONFIG].console.presence_grace_s)
    gone = []
    for agent_id, last in list(console.heartbeats.items()):
        if now - last < grace:
            continue
        del console.heartbeats[agent_id]
        agent = await app[keys.STORE].get_agent(agent_id)
        if agent is not None and agent.presence == "online":
            await app[keys.STORE].set_presence(agent_id, "away", now, actor="console")
            log.info("console.presence_away", agent_id=agent_id, grace_s=grace.total_seconds())
            gone.append(agent_id)
    return gone


async def _presence_ctx(app: web.Application):
    async def loop() -> None:
        while True:
            await asyncio.sleep(min(5.0, max(0.2, app[keys.CONFIG].console.presence_grace_s / 4)))
            try:
                await sweep_presence(app)
            except Exception:  # noqa: BLE001 - next round
                log.warning("console.presence_sweep_failed", exc_info=True)

    task = asyncio.create_task(loop(), name="omnigate-console-presence")
    yield
    await cancel_and_wait(task)


# ---------------------------------------------------------------- sessions, CSRF, rendering


class Ctx(msgspec.Struct):
    p: Principal
    csrf: str
    name: str


def _lang(request: web.Request) -> str:
    return i18n.choose(request.cookies.get(LANG_COOKIE), request.headers.get("Accept-Language"))


def _tz(request: web.Request) -> ZoneInfo:
    for name in (request.cookies.get(TZ_COOKIE), request.app[keys.CONFIG].console.timezone,
                 request.app[keys.CONFIG].timezone):
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def _now(request: web.Request) -> datetime:
    return request.app[keys.CLOCK]()


async def principal(request: web.Request) -> Ctx:
    """The signed-in agent, or a redirect to the sign-in page (raised)."""
    value = request.cookies.get(COOKIE)
    store = request.app[keys.STORE]
    session = await store.session_get(value, _now(request)) if value else None
    if session is not None and session.token_id is None:
        boot = request.app[keys.CONFIG].api_token
        if not boot or not hmac.compare_digest(digest(boot), session.bootstrap or ""):
            session = None  # the bootstrap token changed: its sessions end
    if session is None:
        if request.headers.get("HX-Request"):
            raise web.HTTPUnauthorized(headers={"HX-Redirect": "/console/login"})
        raise web.HTTPSeeOther("/console/login")
    agent = await store.get_agent(session.agent_id)
    teams = frozenset(agent.teams) if agent is not None else frozenset()
    p = Principal(agent_id=session.agent_id, role=session.role, teams=teams, token_id=session.token_id)
    return Ctx(p=p, csrf=session.csrf, name=agent.name if agent is not None else session.agent_id)


async def read_form(request: web.Request) -> Any:
    """The POSTed form, read whole within ``BODY_TIMEOUT_S`` (408 page
    otherwise); a body aiohttp cannot parse as a form (a multipart body with
    no boundary or broken part headers) is a 400 page, never a 500."""
    from aiohttp.http_exceptions import HttpProcessingError

    from connectors.http import BODY_TIMEOUT_S

    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            return await request.post()
    except TimeoutError:
        raise _page_error(request, 408, "error.badform", f"the body was not received within {BODY_TIMEOUT_S:g} s") \
            from None
    except (HttpProcessingError, ValueError, AssertionError, LookupError) as exc:  # LookupError: charset=<unknown>
        raise _page_error(request, 400, "error.badform", str(exc).splitlines()[0] if str(exc) else "") from None


async def checked_form(request: web.Request, ctx: Ctx | None) -> Any:
    """The POSTed form, once its ``csrf`` field matches the session's (403 page otherwise)."""
    form = await read_form(request)
    want = ctx.csrf if ctx is not None else request.cookies.get(PRE_CSRF, "")
    # bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500)
    if not want or not hmac.compare_digest(str(form.get("csrf", "")).encode("utf-8", "surrogateescape"), want.encode()):
        raise _page_error(request, 403, "error.csrf")
    return form


def _fmt_dt(tz: ZoneInfo):
    def fmt(d: datetime | None) -> str:
        if d is None:
            return ""
        return d.astimezone(tz).strftime("%Y-%m-%d %H:%M")
    return fmt


def _duration(seconds: float) -> str:
    seconds = int(abs(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 60}m {seconds % 60:02d}s"


def render(request: web.Request, template: str, ctx: Ctx | None, status: int = 200, **values: Any) -> web.Response:
    lang = _lang(request)
    tz = _tz(request)
    console: Console = request.app[CONSOLE]
    tr = i18n.translator(lang)

    def chan(name: str) -> str:
        return tr(f"channel.{name}") if f"channel.{name}" in i18n.CATALOGUES[lang] else name

    values.setdefault("agent_names", {})
    # the app's clock, for console.js: SLA badges tick on the server's time, not the browser's
    now_ms = str(int(_now(request).timestamp() * 1000))
    body = console.env.get_template(template).render(
        t=tr, chan=chan, lang=lang, languages=i18n.LANGUAGES, ctx=ctx, dt=_fmt_dt(tz), tz=str(tz),
        icons=CHANNEL_ICONS, statuses=STATUSES, priorities=PRIORITIES, duration=_duration, path=request.path_qs,
        server_now_ms=now_ms, **values)
    resp = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    resp.headers[SERVER_NOW_HEADER] = now_ms  # a fragment's (htmx) way of saying it
    resp.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data: https: http:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _page_error(request: web.Request, status: int, key: str, detail: str = "") -> web.HTTPException:
    resp = render(request, "error.html", None, status=status, message_key=key, detail=detail)
    exc = web.HTTPException(text=resp.text, content_type="text/html")
    exc.set_status(status)
    exc.headers.update({k: v for k, v in resp.headers.items() if k != "Content-Length"})
    return exc


# ---------------------------------------------------------------- sign-in


async def index(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/console/queue")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    file, ctype = STATIC[name]
    return web.Response(body=(HERE / "static" / file).read_bytes(), content_type=ctype,
                        headers={"Cache-Control": "max-age=3600"})


async def login_page(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    import secrets

    pre = request.cookies.get(PRE_CSRF) or secrets.token_urlsafe(24)
    resp = render(request, "login.html", None, status=status, pre_csrf=pre, error=error)
    resp.set_cookie(PRE_CSRF, pre, httponly=True, samesite="Strict", path="/console")
    return resp


async def login_post(request: web.Request) -> web.Response:
    form = await checked_form(request, None)
    token = str(form.get("token", "")).strip()
    app = request.app
    config = app[keys.CONFIG]
    store = app[keys.STORE]
    now = _now(request)
    session = None
    if config.api_token and hmac.compare_digest(token.encode("utf-8", "surrogatepass"), config.api_token.encode()):
        session = ("admin", "admin", None, digest(config.api_token))
    elif token.startswith(TOKEN_PREFIX) and len(token) <= 200:
        info = await store.token_lookup(token)
        if info is not None and info.revoked_at is None and (info.expires_at is None or info.expires_at > now):
            session = (info.agent_id, info.role, info.id, None)
    if session is None:
        log.info("console.sign_in_refused")
        return await login_page(request, error="login.bad", status=401)
    agent_id, role, token_id, boot = session
    expires = now + timedelta(hours=config.console.session_hours)
    value, _ = await store.session_create(agent_id, role, token_id, boot, now, expires)
    log.info("console.signed_in", agent_id=agent_id, role=role)
    resp = web.HTTPSeeOther("/console/queue")
    resp.set_cookie(COOKIE, value, httponly=True, samesite="Strict", path="/console",
                    max_age=int(config.console.session_hours * 3600), secure=request.secure)
    tz = str(form.get("tz", ""))
    if tz and re.fullmatch(r"[A-Za-z0-9_+/-]{1,64}", tz):
        resp.set_cookie(TZ_COOKIE, tz, samesite="Strict", path="/console")
    raise resp


async def logout(request: web.Request) -> web.Response:
    ctx = await principal(request)
    await checked_form(request, ctx)
    await request.app[keys.STORE].session_end(request.cookies[COOKIE], _now(request))
    request.app[CONSOLE].heartbeats.pop(ctx.p.agent_id, None)
    resp = web.HTTPSeeOther("/console/login")
    resp.del_cookie(COOKIE, path="/console")
    raise resp


async def set_lang(request: web.Request) -> web.Response:
    form = await read_form(request)  # a preference, not an action on data: no CSRF needed (SameSite cookie anyway)
    lang = str(form.get("lang", ""))
    back = str(form.get("back", "/console/queue"))
    if not back.startswith("/console") or "//" in back:
        back = "/console/queue"
    resp = web.HTTPSeeOther(back)
    if lang in i18n.CATALOGUES:
        resp.set_cookie(LANG_COOKIE, lang, samesite="Strict", path="/console", max_age=365 * 86400)
    raise resp


# ---------------------------------------------------------------- queues


def sla_view(ticket: Any, now: datetime, warn_minutes: int, warned: set[str] = frozenset()) -> dict:
    """The SLA countdown of a ticket: the nearest due time, and ``state`` ok | warning | breached.
    Amber (warning) once the policy's warning for that target has fired (``warned``: targets),
    or within ``console.sla_warning_minutes`` of it; red once breached. ``warn``: the instant
    the console's own rule turns it amber (``due`` less the warning minutes), for console.js
    to flip the badge on the server's clock while the page stays open."""
    sla = ticket.sla
    if sla is None or ticket.status not in OPEN:
        return {"state": "none", "due": None, "seconds": None}
    dues = [(d, name) for d, name in ((sla.first_response_due, "first_response"),
                                      (sla.next_response_due, "next_response"),
                                      (sla.resolution_due, "resolution")) if d is not None]
    if sla.breached and not dues:
        return {"state": "breached", "due": None, "seconds": None}
    if not dues:
        return {"state": "none", "due": None, "seconds": None}
    due, target = min(dues)
    left = (due - now).total_seconds()
    state = "breached" if left <= 0 or sla.breached else \
        "warning" if left <= warn_minutes * 60 or target in warned else "ok"
    return {"state": state, "due": due, "seconds": left, "warn": due - timedelta(minutes=warn_minutes)}


_URGENCY = {"breached": 0, "warning": 1, "ok": 2, "none": 3}
_PRIO = {p: i for i, p in enumerate(PRIORITIES)}


async def queue(request: web.Request) -> web.Response:
    ctx = await principal(request)
    p = ctx.p
    q = request.query
    view = q.get("view", "mine" if not p.is_admin else "all")
    if view not in ("mine", "teams", "unassigned", "all"):
        view = "mine"
    status = [s for s in q.get("status", "").split(",") if s in STATUSES] or list(OPEN)
    priority = [s for s in q.get("priority", "").split(",") if s in PRIORITIES]
    channel = q.get("channel") or None
    store = request.app[keys.STORE]

    def query_for(v: str) -> TicketQuery:
        sq = TicketQuery(status=status, priority=priority, channel=channel)
        if v == "mine":
            sq.assignee = [p.agent_id]
        elif v == "teams":
            sq.team = sorted(p.teams) or ["\x00none"]
        elif v == "unassigned":
            sq.unassigned = True
        if not p.is_admin:
            sq.visible_teams, sq.visible_agent = sorted(p.teams), p.agent_id
        return sq

    items, _ = await store.tickets_list(query_for(view), limit=200)
    counts = {}
    for v in ("mine", "teams", "unassigned") + (("all",) if p.is_admin else ()):
        got, more = await store.tickets_list(query_for(v), limit=200)
        counts[v] = f"{len(got)}+" if more else str(len(got))
    now = _now(request)
    warn = request.app[keys.CONFIG].console.sla_warning_minutes
    warned = await store.sla_warned([t.id for t in items])
    rows = [{"t": t, "sla": sla_view(t, now, warn, warned.get(t.id, set()))} for t in items]
    rows.sort(key=lambda r: (_PRIO.get(r["t"].priority, 9), _URGENCY[r["sla"]["state"]],
                             r["sla"]["seconds"] if r["sla"]["seconds"] is not None else float("inf")))
    template = "queue_rows.html" if request.headers.get("HX-Request") else "queue.html"
    return render(request, template, ctx, view=view, rows=rows, counts=counts, f_status=status,
                  f_priority=priority, f_channel=channel or "", channels=sorted(CHANNEL_ICONS),
                  presence=await _presence(request, p), query=urlencode({k: v for k, v in q.items()}),
                  agent_names=await _names(request))


async def _presence(request: web.Request, p: Principal) -> str:
    agent = await request.app[keys.STORE].get_agent(p.agent_id)
    return agent.presence if agent is not None else "offline"


# ---------------------------------------------------------------- the ticket view


def _number(text: Any, default: Any = None) -> Any:
    """A number from the path, the query or a form (:func:`routing.text.int64`), else ``default``."""
    number = int64(str(text))
    return default if number is None else number


async def _ticket(request: web.Request, p: Principal) -> Any:
    ref = request.match_info["number"]
    store = request.app[keys.STORE]
    number = _number(ref)
    t = await store.get_ticket_by_number(number) if number is not None else \
        None if ref.isdigit() else await store.get_ticket(ref)
    if t is None:
        raise _page_error(request, 404, "error.notfound")
    record = await store.ticket_record(t.id)
    if not can_read_ticket(p, record):
        log.info("console.forbidden", ticket=record.number, agent_id=p.agent_id)
        raise _page_error(request, 403, "error.forbidden",
                          f"#{record.number}: {record.team or '-'}")
    return record


class _Facts:
    def __init__(self, team: str | None, assignee: str | None) -> None:
        self.team, self.assignee = team, assignee


_ALLOWED_TAGS = {"a", "b", "strong", "i", "em", "u", "p", "br", "div", "span", "ul", "ol", "li", "blockquote", "pre",
                 "code", "table", "thead", "tbody", "tr", "td", "th", "h1", "h2", "h3", "h4", "hr", "img", "font"}


def safe_html(html: str) -> tuple[str, bool]:
    """Sanitised mail HTML (nh3: no script, style, handlers; links get rel=noopener), with every remote
    image's ``src`` moved to ``data-src`` (shown only when the agent clicks); returns (html, had remote images)."""
    cleaned = nh3.clean(html, tags=_ALLOWED_TAGS, attributes={"a": {"href", "title"}, "img": {"src", "alt"}},
                        url_schemes={"http", "https", "mailto", "cid"}, link_rel="noopener noreferrer nofollow")
    blocked = False

    def block(m: re.Match) -> str:
        nonlocal blocked
        blocked = True
        return f'data-src="{m.group(1)}" src="data:,"'

    cleaned = re.sub(r'src="(https?://[^"]*)"', block, cleaned)
    return cleaned, blocked


def entry_view(p: Principal, row: Any) -> dict:
    """What the timeline template needs for one row (a summary for a ticket the agent may not open)."""
    e = row.entry
    restricted = bool(e.ticket_id and row.ticket_number is not None and not can_read_ticket(
        p, _Facts(row.ticket_team, row.ticket_assignee)))
    v: dict[str, Any] = {"e": e, "seq": row.seq, "ms": _ms(e.at), "number": row.ticket_number, "team": row.ticket_team,
                         "restricted": restricted, "html": None, "blocked": False}
    if restricted:
        v["e"] = msgspec.structs.replace(e, text=None, subject=None, data={}, attachments=[])
        return v
    html = e.data.get("html") if isinstance(e.data, dict) else None
    if isinstance(html, str) and html:
        v["html"], v["blocked"] = safe_html(html)
    return v


async def _rows(request: web.Request, contact_id: str, position: tuple[int, int] | None, backward: bool,
                limit: int = PAGE) -> tuple[list, bool]:
    rows = await request.app[keys.STORE].timeline_rows(contact_id=contact_id, position=position, backward=backward,
                                                       limit=limit + 1)
    more = len(rows) > limit
    if more:
        rows = rows[1:] if backward else rows[:-1]
    return rows, more


def _ms(d: datetime) -> int:
    return int(d.timestamp() * 1000)


async def ticket_page(request: web.Request, *, notice: str | None = None, stale: list | None = None,
                      status: int = 200, draft: str = "") -> web.Response:
    ctx = await principal(request)
    t = await _ticket(request, ctx.p)
    return await _ticket_render(request, ctx, t, notice=notice, stale=stale, status=status, draft=draft)


async def _ticket_render(request: web.Request, ctx: Ctx, t: Any, *, notice: str | None = None,
                         stale: list | None = None, status: int = 200, draft: str = "",
                         notice_detail: str = "") -> web.Response:
    store = request.app[keys.STORE]
    contact = await store.get_contact(t.contact_id)
    rows, more = await _rows(request, t.contact_id, None, True)
    entries = [entry_view(ctx.p, r) for r in rows]
    last_seq = await store.timeline_last_seq()
    directory = request.app[keys.DIRECTORY]
    teams = sorted(directory.teams) if directory is not None else sorted({t.team} - {None})
    agents = await store.list_agents()
    now = _now(request)
    return render(request, "ticket.html", ctx, status=status, tk=t, contact=contact, entries=entries, more=more,
                  last_seq=last_seq, teams=teams, agents=agents, can_manage=can_manage_ticket(ctx.p, t),
                  sla=sla_view(t, now, request.app[keys.CONFIG].console.sla_warning_minutes,
                               (await store.sla_warned([t.id])).get(t.id, set())), notice=notice,
                  notice_detail=notice_detail, stale=stale or [], draft=draft, target=t.reply_to,
                  presence=await _presence(request, ctx.p), agent_names={a.id: a.name for a in agents})


async def ticket_older(request: web.Request) -> web.Response:
    ctx = await principal(request)
    t = await _ticket(request, ctx.p)
    try:
        at, seq = (int(x) for x in request.query.get("before", "").split(":"))
    except ValueError:
        raise web.HTTPBadRequest(text="before must be at:seq") from None
    rows, more = await _rows(request, t.contact_id, (at, seq), True)
    return render(request, "older.html", ctx, tk=t, entries=[entry_view(ctx.p, r) for r in rows], more=more,
                  agent_names=await _names(request))


async def ticket_newer(request: web.Request) -> web.Response:
    """Entries of the ticket's contact after ``seq`` (the live view appends them)."""
    ctx = await principal(request)
    t = await _ticket(request, ctx.p)
    after = _number(request.query.get("after", "0"), 0)
    rows = [r for r in await request.app[keys.STORE].timeline_tail(after) if r.entry.contact_id == t.contact_id]
    full = await request.app[keys.STORE].timeline_rows(contact_id=t.contact_id, position=None, backward=True,
                                                       limit=len(rows) + 1) if rows else []
    wanted = {r.entry.id for r in rows}
    return render(request, "entries.html", ctx, tk=t, entries=[entry_view(ctx.p, r) for r in full
                                                                if r.entry.id in wanted],
                  agent_names=await _names(request))


async def ticket_entry(request: web.Request) -> web.Response:
    """One entry again (a reply's delivery status, polled while it is on its way)."""
    ctx = await principal(request)
    t = await _ticket(request, ctx.p)
    rows = await request.app[keys.STORE].timeline_rows(ticket_id=t.id, position=None, backward=True, limit=200)
    found = [r for r in rows if r.entry.id == request.match_info["entry"]]
    if not found:
        raise web.HTTPNotFound()
    return render(request, "entries.html", ctx, tk=t, entries=[entry_view(ctx.p, found[0])],
                  agent_names=await _names(request))


async def _names(request: web.Request) -> dict[str, str]:
    return {a.id: a.name for a in await request.app[keys.STORE].list_agents()}


SAFE_IMAGES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


async def ticket_attachment(request: web.Request) -> web.Response:
    """A file of an entry the agent may read: images of safe types inline, everything else as a download;
    sandboxed by CSP and never sniffed."""
    ctx = await principal(request)
    t = await _ticket(request, ctx.p)
    store = request.app[keys.STORE]
    rows = await store.timeline_rows(contact_id=t.contact_id, position=None, backward=True, limit=1000)
    found = [r for r in rows if r.entry.id == request.match_info["entry"]]
    index = request.match_info["index"]
    if not found or _number(index) is None or int(index) >= len(found[0].entry.attachments):
        raise _page_error(request, 404, "error.notfound")
    row = found[0]
    if row.entry.ticket_id and not can_read_ticket(ctx.p, _Facts(row.ticket_team, row.ticket_assignee)):
        raise _page_error(request, 403, "error.forbidden")
    a = row.entry.attachments[int(index)]
    data = await request.app[DISPATCHER].attachments.aget(a.storage_ref) if a.storage_ref else None
    if data is None:
        raise _page_error(request, 404, "error.notfound")
    image = a.content_type in SAFE_IMAGES
    name = re.sub(r'[^\w.\- ]', "_", a.name or "attachment")[:100]
    return web.Response(body=data, content_type=a.content_type if image else "application/octet-stream", headers={
        "Content-Disposition": f'{"inline" if image else "attachment"}; filename="{name}"',
        "Content-Security-Policy": "default-src 'none'; sandbox", "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=3600"})


async def ticket_reply(request: web.Request) -> web.Response:
    ctx = await principal(request)
    form = await checked_form(request, ctx)
    t = await _ticket(request, ctx.p)
    app = request.app
    text = str(form.get("text", ""))
    internal = form.get("internal") in ("on", "1", "true")
    if not text.strip():
        return await _ticket_render(request, ctx, t, notice="composer.empty", status=400)
    if not internal:
        from gateway.api_types import ReplyBody
        from gateway.http_util import Problem
        from gateway.replies import _check_sendable

        try:
            await _check_sendable(app, t, ReplyBody(text=text))
        except Problem as exc:
            return await _ticket_render(request, ctx, t, notice="composer.refused", notice_detail=exc.detail,
                                        status=409, draft=text)
    draft = ReplyDraft(text=text, author=ctx.p.agent_id, internal=internal)
    try:
        entry, mentioned = await app[keys.STORE].note_create(t.id, draft, _now(request),
                                                            mentions_in(text) if internal else [])
    except (NoReplyTarget, NotFound) as exc:
        return await _ticket_render(request, ctx, t, notice="composer.refused", notice_detail=str(exc), status=409,
                                    draft=text)
    if draft.public:
        app[DISPATCHER].wake()
    app[CONSOLE].bus.nudge()
    log.info("console.reply", ticket_id=t.id, timeline_id=entry.id, kind=entry.kind, author=ctx.p.agent_id,
             mentions=len(mentioned))
    raise web.HTTPSeeOther(f"/console/tickets/{t.number}#composer")


async def ticket_update(request: web.Request) -> web.Response:
    """Status, priority, team, assignee with the page's version (If-Match): a stale edit saves
    nothing and shows who changed what since."""
    ctx = await principal(request)
    form = await checked_form(request, ctx)
    t = await _ticket(request, ctx.p)
    p = ctx.p
    changes: dict[str, Any] = {}
    for name, allowed in (("status", STATUSES), ("priority", PRIORITIES)):
        value = str(form.get(name, ""))
        if value and value in allowed and value != getattr(t, name):
            changes[name] = value
    for name in ("team", "assignee"):
        if name in form:
            value = str(form.get(name, "")) or None
            if value != getattr(t, name):
                changes[name] = value
    if not changes:
        raise web.HTTPSeeOther(f"/console/tickets/{t.number}")
    if set(changes) - {"status"} and not can_manage_ticket(p, t):
        return await _ticket_render(request, ctx, t, notice="ticket.denied", status=403,
                                    notice_detail=", ".join(sorted(set(changes) - {"status"})))
    if changes.get("team") and not p.is_admin and changes["team"] not in p.teams:
        return await _ticket_render(request, ctx, t, notice="ticket.denied", status=403, notice_detail=changes["team"])
    version = str(form.get("version", ""))
    expected = int(version) if version.isascii() and version.isdigit() else None  # compared, never stored
    seen_seq = _number(form.get("seq", "0"), 0)
    store = request.app[keys.STORE]
    try:
        await store.ticket_patch(t.id, changes, now=_now(request), actor=p.agent_id, reason="console",
                                 expected_version=expected)
    except VersionMismatch:
        rows = await store.timeline_tail(seen_seq)
        stale = [entry_view(p, r) for r in rows if r.entry.ticket_id == t.id and r.entry.kind in ("update", "status",
                                                                                                  "assignment")]
        fresh = await store.ticket_record(t.id)
        return await _ticket_render(request, ctx, fresh, notice="ticket.stale", stale=stale, status=409)
    except InvalidTransition as exc:
        return await _ticket_render(request, ctx, t, notice="ticket.bad_transition", notice_detail=str(exc),
                                    status=409)
    except (NotFound, StoreError) as exc:
        return await _ticket_render(request, ctx, t, notice="ticket.denied", notice_detail=str(exc), status=409)
    request.app[CONSOLE].bus.nudge()
    log.info("console.ticket_updated", ticket_id=t.id, fields=sorted(changes), actor=p.agent_id)
    raise web.HTTPSeeOther(f"/console/tickets/{t.number}")


# ---------------------------------------------------------------- canned replies


async def canned_search(request: web.Request) -> web.Response:
    """The composer's search: canned replies rendered for this ticket's customer."""
    ctx = await principal(request)
    store = request.app[keys.STORE]
    items = await store.canned_list(request.query.get("q") or None, limit=20)
    name, number = None, None
    ref = request.query.get("ticket", "")
    if _number(ref) is not None:
        t = await store.get_ticket_by_number(int(ref))
        if t is not None and can_read_ticket(ctx.p, await store.ticket_record(t.id)):
            contact = await store.get_contact(t.contact_id)
            name, number = (contact.name if contact else None), t.number
    rendered = [{"c": c, "text": render_canned(c.text, contact_name=name, ticket_number=number)} for c in items]
    return render(request, "canned_results.html", ctx, items=rendered)


async def canned_admin(request: web.Request, notice: str | None = None, status: int = 200) -> web.Response:
    ctx = await principal(request)
    if not ctx.p.is_admin:
        raise _page_error(request, 403, "error.forbidden")
    items = await request.app[keys.STORE].canned_list(None, limit=200)
    return render(request, "canned_admin.html", ctx, status=status, items=items, notice=notice)


async def canned_admin_post(request: web.Request) -> web.Response:
    from gateway.console.canned import TemplateError, check_template

    ctx = await principal(request)
    if not ctx.p.is_admin:
        raise _page_error(request, 403, "error.forbidden")
    form = await checked_form(request, ctx)
    store = request.app[keys.STORE]
    if form.get("delete"):
        try:
            await store.canned_delete(str(form["delete"]), ctx.p.agent_id, _now(request))
        except NotFound:
            pass
        raise web.HTTPSeeOther("/console/admin/canned")
    name, text = str(form.get("name", "")).strip(), str(form.get("text", ""))
    try:
        if not name or not text.strip():
            raise TemplateError("name and text")
        check_template(text)
        await store.canned_put(name, text, str(form.get("language", "")) or None, ctx.p.agent_id, _now(request),
                               str(form.get("id", "")) or None)
    except (TemplateError, StoreError) as exc:
        return await canned_admin(request, notice=str(exc), status=400)
    raise web.HTTPSeeOther("/console/admin/canned")


# ---------------------------------------------------------------- presence


async def presence_set(request: web.Request) -> web.Response:
    ctx = await principal(request)
    form = await checked_form(request, ctx)
    value = str(form.get("presence", ""))
    if value in ("online", "away", "offline") and await request.app[keys.STORE].get_agent(ctx.p.agent_id):
        await request.app[keys.STORE].set_presence(ctx.p.agent_id, value, _now(request), actor=ctx.p.agent_id)
        if value == "online":
            request.app[CONSOLE].heartbeats[ctx.p.agent_id] = _now(request)
        log.info("console.presence", agent_id=ctx.p.agent_id, presence=value)
    back = str(form.get("back", "/console/queue"))
    raise web.HTTPSeeOther(back if back.startswith("/console") and "//" not in back else "/console/queue")


async def heartbeat(request: web.Request) -> web.Response:
    """An open console page says so (every 20 s, console.js); the sweeper sets away the silent ones."""
    ctx = await principal(request)
    await checked_form(request, ctx)
    request.app[CONSOLE].heartbeats[ctx.p.agent_id] = _now(request)
    return web.Response(status=204)


# ---------------------------------------------------------------- contacts: merge, unmerge


async def contact_merge(request: web.Request) -> web.Response:
    return await _merge(request, unmerge=False)


async def contact_unmerge(request: web.Request) -> web.Response:
    return await _merge(request, unmerge=True)


async def _merge(request: web.Request, unmerge: bool) -> web.Response:
    ctx = await principal(request)
    form = await checked_form(request, ctx)
    if not ctx.p.at_least("lead"):
        raise _page_error(request, 403, "error.forbidden")
    store = request.app[keys.STORE]
    contact_id = request.match_info["id"]
    other = str(form.get("other", "")).strip()
    back = str(form.get("back", "/console/queue"))
    back = back if back.startswith("/console") and "//" not in back else "/console/queue"
    try:
        if unmerge:
            await store.unmerge_contact(other, ctx.p.agent_id, "console")
        else:
            await store.merge_contacts(contact_id, other, ctx.p.agent_id, "console")
    except (NotFound, StoreError) as exc:
        log.info("console.merge_refused", contact_id=contact_id, other=other, reason=str(exc))
        raise web.HTTPSeeOther(back + ("&" if "?" in back else "?") + urlencode({"err": str(exc)[:200]})) from None
    request.app[CONSOLE].bus.nudge()
    log.info("console.unmerged" if unmerge else "console.merged", contact_id=contact_id, other=other,
             actor=ctx.p.agent_id)
    raise web.HTTPSeeOther(back)


# ---------------------------------------------------------------- the failed journal


async def journal_page(request: web.Request, notice: str | None = None) -> web.Response:
    ctx = await principal(request)
    if not ctx.p.at_least("lead"):
        raise _page_error(request, 403, "error.forbidden")
    entries = await request.app[keys.STORE].journal_list(status="failed", since=None, after_seq=0, limit=200)
    return render(request, "journal.html", ctx, entries=entries, notice=notice or request.query.get("done"))


async def journal_replay(request: web.Request) -> web.Response:
    ctx = await principal(request)
    await checked_form(request, ctx)
    if not ctx.p.is_admin:
        raise _page_error(request, 403, "error.forbidden")
    store = request.app[keys.STORE]
    jid = request.match_info["id"]
    if await store.journal_get(jid) is None:
        raise _page_error(request, 404, "error.notfound")
    await store.journal_requeue([jid])
    request.app[keys.WORKER].rescan()
    log.info("console.journal_replay", journal_id=jid, actor=ctx.p.agent_id)
    raise web.HTTPSeeOther("/console/journal?done=journal.replayed")


# ---------------------------------------------------------------- live


async def events(request: web.Request) -> web.StreamResponse:
    ctx = await principal(request)
    raw = request.headers.get("Last-Event-ID") or request.query.get("after") or ""
    after = _number(raw)
    if after is None:
        after = await request.app[keys.STORE].timeline_last_seq()
    return await stream(request, ctx.p, request.app[CONSOLE].bus, after)


def _unused(*_: Any) -> None:  # keep imports used by type checkers quiet
    return None


_ = (AUTH, timezone, _unused)
