"""The help-desk sync: omnigate → desk through the webhook machinery, and the
way back (push nudges, polling) through the store.

**Outbound.** Each desk is an endpoint ``desk:<name>`` of the webhook
service (gateway/webhooks/) whose delivery is :meth:`DeskSync.deliver`
instead of a signed POST: it has its own cursor over the outbox, the
committed-snapshot events, per-ticket order, leases, back-off,
``Retry-After`` (a desk's 429), the breaker and dead letters
(``omnigate webhooks dead desk:<name>``, replayable). Per event:

- ``message.created``, inbound: the first one creates the desk ticket
  (lookup before create: a retried create finds the ticket the timed-out
  attempt made), later ones become public comments from the requester;
  outbound and internal ones written in omnigate become internal notes;
  messages this desk sent (author ``desk:<name>``) are skipped;
- ``ticket.status_changed``: mirrored (not when the desk itself made it);
- ``message.status`` ``failed`` on a reply from this desk: an internal note
  in the desk saying it did not reach the customer, and why;
- ``ticket.assigned`` (``ownership: omnigate``): an internal note naming the
  agent and team.

**The way back.** :meth:`DeskSync.sync` follows the desk's incremental
change API from the cursor stored in ``state`` (``desk:<name>:cursor``); for
each changed desk ticket linked to an omnigate ticket it reads the comments
and sends each new public agent comment to the customer with
``reply_create`` (author ``desk:<name>``), and mirrors the desk's status.
Comments omnigate wrote (``desk_seen`` origin ``omnigate``) and ones already
relayed (origin ``desk``) are skipped, so a repeated or lost nudge changes
nothing. ``mode: push`` runs it on each verified nudge at
``POST /channels/desks/<name>`` (and a safety sweep every ten
``poll_interval``s); ``mode: poll`` every ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime, timedelta
from typing import Any, AsyncIterator

import structlog
from aiohttp import web

from connectors import http as connector_http
from gateway import keys
from gateway.clock import Clock, system_clock
from gateway.config import DeskConfig, parse_duration
from gateway.desks.base import DeskClient, DeskError, NewTicket
from gateway.desks.freshdesk import FreshdeskClient
from gateway.desks.generic import render
from gateway.desks.zammad import ZammadClient
from gateway.desks.zendesk import ZendeskClient
from gateway.http_util import json_response, problem
from gateway.store.base import InvalidTransition, ReplyDraft, StoreError
from gateway.webhooks.service import Attempt
from gateway.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

CLIENTS: dict[str, type[DeskClient]] = {"zammad": ZammadClient, "zendesk": ZendeskClient,
                                         "freshdesk": FreshdeskClient}
#: The events a (non-generic) desk consumes.
EVENTS = ["message.created", "message.status", "ticket.status_changed", "ticket.assigned"]
PUSH_SWEEP = 10  # push mode: a safety sweep every this many poll intervals
SYNC_LEASE_S = 300.0  # several instances: how long a dead instance's hold on a desk's way back lasts


def endpoint_name(desk: str) -> str:
    return f"desk:{desk}"


def cursor_key(desk: str) -> str:
    """The ``state`` row holding the desk's change cursor."""
    return f"desk:{desk}:cursor"


def actor(desk: str) -> str:
    """The author/actor omnigate records for what came from this desk."""
    return f"desk:{desk}"


class DeskSync:
    def __init__(self, store: Any, hooks: Any, desks: dict[str, DeskConfig], *, clock: Clock = system_clock,
                 tick_s: float = 0.2) -> None:
        self.store = store
        self.hooks = hooks
        self.desks = desks
        self.clock = clock
        self.tick_s = tick_s
        self.clients: dict[str, DeskClient] = {
            name: CLIENTS[cfg.kind](name, cfg, clock=clock) for name, cfg in desks.items() if cfg.kind in CLIENTS}
        self.locks = {name: asyncio.Lock() for name in desks}
        #: this instance's name for the way back's lease (several instances on Redis)
        self.holder = f"desk-sync-{uuid.uuid4().hex}"
        self._next_poll: dict[str, datetime] = {}
        self._generic_session: Any = None

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        now = self.clock()
        for name, cfg in self.desks.items():
            events = sorted(cfg.templates) if cfg.kind == "generic" else EVENTS
            await self.store.webhook_upsert(endpoint_name(name), {
                "url": cfg.url, "events": events, "allow_private": cfg.allow_private,
                "description": f"help-desk sync: desks.{name} ({cfg.kind})"}, source="desk", now=now)
            self.hooks.targets[endpoint_name(name)] = self._target(name)
            self._next_poll[name] = now
            client = self.clients.get(name)
            if client is not None and await self.store.state_get(cursor_key(name)) is None:
                # the way back starts from now (the desk's older changes are not omnigate's)
                _, cursor = await client.changed(None)
                await self.store.state_set(cursor_key(name), cursor)
        self.hooks.wake()

    def _target(self, name: str) -> Any:
        async def deliver(endpoint: dict, item: Any) -> Attempt:
            return await self.deliver(name, item.topic, item.payload)
        return deliver

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()
        if self._generic_session is not None:
            await self._generic_session.close()

    async def run(self) -> None:
        """Poll each desk when its interval has passed on the clock (push desks: a slow sweep)."""
        while True:
            now = self.clock()
            for name, client in self.clients.items():
                if now < self._next_poll.get(name, now):
                    continue
                cfg = self.desks[name]
                every = parse_duration(cfg.poll_interval) * (1 if cfg.mode == "poll" else PUSH_SWEEP)
                self._next_poll[name] = now + timedelta(seconds=every)
                try:
                    await self.sync(name)
                except DeskError as exc:
                    log.warning("desk.poll_failed", desk=name, error=str(exc), retry_after=exc.retry_after)
                    if exc.retry_after:
                        self._next_poll[name] = now + timedelta(seconds=max(every, exc.retry_after))
                except Exception:  # noqa: BLE001 - the store is busy: the next round
                    log.exception("desk.poll_failed", desk=name)
            await asyncio.sleep(self.tick_s)

    # ------------------------------------------------------------ outbound

    async def deliver(self, name: str, topic: str, data: dict) -> Attempt:
        """One event to the desk: delivered, or failed (retried by the webhook service)."""
        try:
            await self._apply(name, topic, data)
        except DeskError as exc:
            log.warning("desk.delivery_failed", desk=name, type=topic, status=exc.status, error=str(exc))
            return Attempt("failed", code=exc.status, error=str(exc)[:500], retry_after=exc.retry_after)
        return Attempt("delivered", code=200)

    async def _apply(self, name: str, topic: str, data: dict) -> None:
        cfg = self.desks[name]
        if cfg.kind == "generic":
            await self._generic(name, cfg, topic, data)
            return
        client = self.clients[name]
        ticket = data.get("ticket") or {}
        tid = ticket.get("id") or data.get("ticket_id")
        if not tid:
            return
        me = actor(name)
        if topic == "message.created":
            msg = data.get("message") or {}
            if msg.get("author") == me:
                return  # the desk's own reply coming back: never echoed
            desk_id = await self.store.desk_link(name, tid)
            text = msg.get("text") or "(no text)"
            if msg.get("direction") == "inbound":
                if desk_id is None:
                    await self._create(name, client, ticket, msg)
                    return
                cid = await client.add_comment(desk_id, text, internal=False)
            else:
                if desk_id is None:
                    return
                label = "reply sent from omnigate" if msg.get("kind") == "message_out" else "internal note in omnigate"
                cid = await client.add_comment(desk_id, f"[{label} by {msg.get('author') or 'system'}]\n{text}",
                                               internal=True)
            await self.store.desk_seen_add(name, cid, tid, "omnigate")
        elif topic == "message.status":
            msg = data.get("message") or {}
            if data.get("status") != "failed" or msg.get("author") != me:
                return
            desk_id = await self.store.desk_link(name, tid)
            if desk_id is None:
                return
            note = (f"omnigate could not deliver this reply to the customer on {msg.get('channel')}: "
                    f"{data.get('reason') or 'unknown reason'}\n\n{msg.get('text') or ''}")
            cid = await client.add_comment(desk_id, note, internal=True)
            await self.store.desk_seen_add(name, cid, tid, "omnigate")
        elif topic == "ticket.status_changed":
            if data.get("actor") == me:
                return  # the desk made this change
            desk_id = await self.store.desk_link(name, tid)
            status = client.to_desk(data.get("to") or "")
            if desk_id is not None and status:
                await client.set_status(desk_id, status)
        elif topic == "ticket.assigned" and cfg.ownership == "omnigate":
            desk_id = await self.store.desk_link(name, tid)
            if desk_id is not None and data.get("agent_id"):
                note = f"omnigate assigned this ticket to {data['agent_id']} (team {ticket.get('team') or '—'})"
                cid = await client.add_comment(desk_id, note, internal=True)
                await self.store.desk_seen_add(name, cid, tid, "omnigate")

    async def _create(self, name: str, client: DeskClient, ticket: dict, msg: dict) -> None:
        tid = ticket["id"]
        desk_id = await client.find_ticket(tid)  # a retried create finds what the timed-out attempt made
        made: list[str] = []
        if desk_id is None:
            desk_id, made = await client.create_ticket(await self._new_ticket(name, ticket, msg))
            log.info("desk.ticket_created", desk=name, ticket_id=tid, desk_ticket=desk_id)
        else:
            log.info("desk.ticket_found", desk=name, ticket_id=tid, desk_ticket=desk_id)
        owned = self.desks[name].ownership == "desk"
        await self.store.desk_link_set(name, tid, desk_id, owned=owned)
        for cid in made:
            await self.store.desk_seen_add(name, cid, tid, "omnigate")
        if owned:  # the desk routes it from now on: omnigate's agent is released, its SLA timers cleared
            await self.store.ticket_sync([tid], self.clock())

    async def _new_ticket(self, name: str, ticket: dict, msg: dict) -> NewTicket:
        cfg = self.desks[name]
        contact = await self.store.get_contact(ticket.get("contact_id")) if ticket.get("contact_id") else None
        idents = [(i.kind, i.value) for i in (contact.identities if contact else [])]
        email = next((v for k, v in idents if k == "email"), None)
        phone = next((v for k, v in idents if k == "phone"), None)
        channel = msg.get("channel") or (ticket.get("channels") or ["unknown"])[0]
        own = next(((k, v) for k, v in idents if k not in ("email", "phone")), None)
        identity = own[1] if own else (phone or email)
        if email is None:  # the desks need an e-mail to key a requester on: a stable placeholder
            kind, value = own or ("phone", phone or ticket["id"])
            safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", value)[:60]
            email = f"{kind}-{safe}@{cfg.placeholder_domain}".lower()
        first_line = ((msg.get("text") or "").strip().splitlines() or [""])[0][:80]
        subject = ticket.get("subject") or first_line or f"{channel} conversation"
        return NewTicket(ticket_id=ticket["id"], number=ticket.get("number") or 0, subject=subject,
                         text=msg.get("text") or "(no text)", name=(contact.name if contact else None) or identity
                         or "customer", email=email, phone=phone, channel=channel, identity=identity,
                         team=ticket.get("team"), assignee=ticket.get("assignee"),
                         group=(ticket.get("team") if cfg.ownership == "desk" else None) or cfg.group)

    async def _generic(self, name: str, cfg: DeskConfig, topic: str, data: dict) -> None:
        template = cfg.templates.get(topic)
        if template is None:
            return
        import aiohttp

        from gateway.webhooks.ssrf import GuardedResolver, check_url
        check_url(cfg.url, cfg.allow_private)
        if self._generic_session is None:
            self._generic_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=None if cfg.allow_private else GuardedResolver()),
                timeout=aiohttp.ClientTimeout(total=parse_duration(cfg.timeout)))
        body = render(template, {**data, "type": topic, "desk": name})
        headers = {"Authorization": f"Bearer {cfg.token}"} if cfg.token else {}
        from gateway.webhooks.service import parse_retry_after
        try:
            async with self._generic_session.post(cfg.url, json=body, headers=headers, allow_redirects=False) as r:
                await r.read()
                if not 200 <= r.status < 300:
                    raise DeskError(f"generic desk {name}: HTTP {r.status}", status=r.status,
                                    retry_after=parse_retry_after(r.headers.get("Retry-After"), self.clock()))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise DeskError(f"generic desk {name}: {type(exc).__name__}: {exc}") from None

    # ------------------------------------------------------------ the way back

    async def sync(self, name: str) -> int:
        """Follow the desk's changes since the stored cursor; how many agent comments were relayed.

        Several instances on one store (Redis, which has leases): one of them at a time follows a
        desk, under the lease ``desk:<name>:sync`` (an instance that finds it held skips this round),
        so a desk comment is relayed to the customer once; a holder that dies leaves the lease to
        run out after ``SYNC_LEASE_S``."""
        client = self.clients[name]
        key = cursor_key(name)
        async with self.locks[name]:
            leased = hasattr(self.store, "lease_acquire")
            if leased and not await self.store.lease_acquire(f"desk:{name}:sync", self.holder, SYNC_LEASE_S):
                log.debug("desk.sync_elsewhere", desk=name)
                return 0
            try:
                cursor = await self.store.state_get(key)
                changed, nxt = await client.changed(cursor)
                relayed = 0
                for ch in changed:
                    relayed += await self._pull(name, client, ch.id, ch.status)
                await self.store.state_set(key, nxt)
            finally:
                if leased:
                    await self.store.lease_release(f"desk:{name}:sync", self.holder)
        return relayed

    async def _pull(self, name: str, client: DeskClient, desk_id: str, desk_status: str) -> int:
        tid = await self.store.desk_ticket_of(name, desk_id)
        if tid is None:
            return 0  # a desk ticket omnigate did not make
        if client.me is None:
            client.me = await client.whoami()
        comments = await client.comments(desk_id)
        seen = await self.store.desk_seen(name, [c.id for c in comments])
        relayed = 0
        for c in comments:
            if c.id in seen or not c.public or not c.by_agent or (client.me and c.author_id == client.me):
                continue
            try:
                await self.store.reply_create(tid, ReplyDraft(text=c.body, author=actor(name)))
                relayed += 1
                log.info("desk.reply_relayed", desk=name, ticket_id=tid, desk_ticket=desk_id, comment=c.id)
            except StoreError as exc:  # no reply target, a closed ticket: the desk is told
                note = f"omnigate could not send this comment to the customer: {exc}"
                cid = await client.add_comment(desk_id, note, internal=True)
                await self.store.desk_seen_add(name, cid, tid, "omnigate")
            await self.store.desk_seen_add(name, c.id, tid, "desk")
        wanted = client.STATUS_IN.get(desk_status)
        if wanted:
            t = await self.store.get_ticket(tid)
            if t is not None and t.status != wanted and client.to_desk(t.status) != desk_status:
                try:
                    await self.store.set_status(tid, wanted, self.clock(), actor=actor(name))
                    log.info("desk.status_mirrored", desk=name, ticket_id=tid, status=wanted)
                except InvalidTransition as exc:
                    log.warning("desk.status_refused", desk=name, ticket_id=tid, error=str(exc))
        return relayed

    async def nudge(self, request: web.Request) -> web.Response:
        """``POST /channels/desks/{name}``: the desk's webhook, verified by its own scheme;
        a nudge to read the desk's changes (its body is not trusted for content)."""
        name = request.match_info["name"]
        cfg = self.desks.get(name)
        client = self.clients.get(name)
        if cfg is None or client is None:
            return problem(404, "Not Found", f"no desk {name!r} with a way back is configured")
        # whole within connectors.http.BODY_TIMEOUT_S (408: a stalled body holds no handler), up to max_body_bytes
        body = await connector_http.read_body(request, request.app[keys.CONFIG].max_body_bytes,
                                              timeout=connector_http.BODY_TIMEOUT_S)
        why = client.verify(request.headers, body, cfg.webhook_secret or "", self.clock()) \
            if cfg.webhook_secret else "no webhook_secret is configured for this desk"
        if why:
            log.warning("desk.nudge_refused", desk=name, reason=why)
            return problem(401, "Unauthorized", why, field="headers")
        try:
            relayed = await self.sync(name)
        except DeskError as exc:  # the desk's API is failing: the next nudge or sweep catches up
            log.warning("desk.sync_failed", desk=name, error=str(exc))
            return json_response({"accepted": True, "synced": False}, status=202)
        return json_response({"accepted": True, "synced": True, "relayed": relayed})


#: The app's desk sync (set by ``setup`` when desks are configured).
SYNC: web.AppKey[DeskSync] = web.AppKey("desk_sync")


def setup(app: web.Application, store: Any, config: Any, hooks: Any, clock: Clock | None = None) -> DeskSync | None:
    if not config.desks:
        return None
    from gateway.http_util import guarded_routes

    sync = DeskSync(store, hooks, config.desks, clock=clock or system_clock)
    app[SYNC] = sync
    app.router.add_routes(guarded_routes([web.post("/channels/desks/{name}", sync.nudge)]))
    return sync


async def sync_ctx(app: web.Application) -> AsyncIterator[None]:
    """Register the desks' endpoints before the webhook service claims (run it before ``service_ctx``)."""
    sync = app.get(SYNC)
    if sync is None:
        yield
        return
    await sync.start()
    task = asyncio.create_task(sync.run(), name="omnigate-desks")
    yield
    await cancel_and_wait(task)
    await sync.close()
