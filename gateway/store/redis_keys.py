"""Every Redis key name of the Redis backend, in one place, under one prefix.

Keys of one contact carry the hash tag ``{c:<id>}`` and keys of one ticket
``{t:<id>}``, so a step that touches only one of them touches one hash slot
(Redis Cluster would keep it on one shard). Names that embed outside strings
(an idempotency key, an identity, a thread ref) embed them JSON-encoded, so no
separator inside them can make two names collide.

``Keys(prefix)`` is the only way the backend names a key: change the layout
here, nowhere else.
"""

from __future__ import annotations

import msgspec

_enc = msgspec.json.Encoder()


def _q(*parts: str) -> str:
    """Outside strings quoted unambiguously (JSON of the tuple)."""
    return _enc.encode(list(parts)).decode()


class Keys:
    def __init__(self, prefix: str = "og:"):
        self.p = prefix

    # journal ---------------------------------------------------------
    @property
    def stream(self) -> str:
        """The journal stream: one entry ``{j: <journal id>}`` per claimable append (and per requeue)."""
        return f"{self.p}journal"

    @property
    def group(self) -> str:
        """The one consumer group every instance's workers read through."""
        return "workers"

    @property
    def journal_seq(self) -> str:
        return f"{self.p}seq:journal"

    def journal_entry(self, jid: str) -> str:
        return f"{self.p}j:{jid}"

    def journal_key(self, channel: str, account: str, key: str) -> str:
        """Idempotency: (channel, account, key) → journal id, SET NX."""
        return f"{self.p}jk:{_q(channel, account, key)}"

    @property
    def journal_all(self) -> str:
        """Sorted set: journal id scored by seq (listing in arrival order)."""
        return f"{self.p}jall"

    def journal_status(self, status: str) -> str:
        """Sorted set per status: journal id scored by seq."""
        return f"{self.p}jst:{status}"

    def nonce(self, scope: str, value: str) -> str:
        """A request nonce: {digest, journal id}, expiring with the request's window."""
        return f"{self.p}nonce:{_q(scope, value)}"

    # contacts and identities ----------------------------------------
    def contact(self, cid: str) -> str:
        return f"{self.p}{{c:{cid}}}:contact"

    def contact_identities(self, cid: str) -> str:
        """Set of JSON ``[kind, value]`` the contact holds now."""
        return f"{self.p}{{c:{cid}}}:idents"

    def contact_tickets(self, cid: str) -> str:
        """Sorted set: ticket id scored by last_message_at (ms)."""
        return f"{self.p}{{c:{cid}}}:tickets"

    def contact_timeline(self, cid: str) -> str:
        """Sorted set: ``<seq:016d>:<entry id>`` scored by ``at`` (ms)."""
        return f"{self.p}{{c:{cid}}}:tl"

    def contact_text(self, cid: str, text_hash: str) -> str:
        """Sorted set of a contact's inbound messages with one normalized text (near-duplicates), scored by at."""
        return f"{self.p}{{c:{cid}}}:th:{text_hash}"

    def contact_merged(self, cid: str) -> str:
        """Set of contacts merged into this one."""
        return f"{self.p}{{c:{cid}}}:merged"

    def identity(self, kind: str, value: str) -> str:
        """Hash {contact, origin, reason, created_at}: who holds the identity."""
        return f"{self.p}id:{_q(kind, value)}"

    # tickets ---------------------------------------------------------
    def ticket(self, tid: str) -> str:
        return f"{self.p}{{t:{tid}}}:ticket"

    def ticket_timeline(self, tid: str) -> str:
        return f"{self.p}{{t:{tid}}}:tl"

    def ticket_participants(self, tid: str) -> str:
        """Hash JSON ``[kind, value]`` → JSON {source, added_at}."""
        return f"{self.p}{{t:{tid}}}:parts"

    @property
    def ticket_numbers(self) -> str:
        """Hash: display number → ticket id."""
        return f"{self.p}tnums"

    @property
    def ticket_counter(self) -> str:
        return f"{self.p}seq:ticket"

    def thread_ref(self, ref: str) -> str:
        return f"{self.p}ref:{_q(ref)}"

    # timeline --------------------------------------------------------
    @property
    def timeline_seq(self) -> str:
        return f"{self.p}seq:timeline"

    def timeline_entry(self, eid: str) -> str:
        """JSON {e: TimelineEntry, o: origin contact, s: seq}."""
        return f"{self.p}te:{eid}"

    def message_key(self, channel: str, account: str, external_id: str) -> str:
        """A committed message: JSON Hit fields; the dedupe key (SET NX in the commit)."""
        return f"{self.p}mk:{_q(channel, account, external_id)}"

    # outbox ----------------------------------------------------------
    def outbox_item(self, oid: str) -> str:
        return f"{self.p}ob:{oid}"

    def outbox_due(self, topic: str) -> str:
        """Sorted set: outbox id scored by next_at (ms)."""
        return f"{self.p}obq:{topic}"

    # assignment ------------------------------------------------------
    def agent_load(self, agent_id: str) -> str:
        """Hash: capacity class → tickets held now."""
        return f"{self.p}{{a:{agent_id}}}:load"

    def ticket_held(self, tid: str) -> str:
        """The agent holding the ticket: ``<agent id> <class>``."""
        return f"{self.p}{{t:{tid}}}:held"

    # leases ----------------------------------------------------------
    def lease(self, name: str) -> str:
        """One owner at a time (a mailbox, a poller, the scheduler, a sender's turn)."""
        return f"{self.p}lease:{_q(name)}"

    # misc ------------------------------------------------------------
    @property
    def counts(self) -> str:
        """Hash of row counts (contacts, tickets, timeline, outbox)."""
        return f"{self.p}counts"

    @property
    def audit(self) -> str:
        """Stream of audit records."""
        return f"{self.p}audit"

    def state(self, key: str) -> str:
        return f"{self.p}state:{_q(key)}"

    # assignment, presence, SLA (gateway/store/redis_assign.py) ------
    # Every assignment step runs under the lease ``lease("assign")`` and writes
    # in one APPLY program fenced by it (see ARCHITECTURE.md).
    @property
    def agents(self) -> str:
        """Hash: agent id → JSON of its fixed fields (name, login, roles, teams, skills, capacity, source)."""
        return f"{self.p}agents"

    @property
    def agents_version(self) -> str:
        """A fresh id on every change of the fixed fields: instances rebuild their agent cache when it moves."""
        return f"{self.p}agents:ver"

    @property
    def agents_live_seq(self) -> str:
        """A counter every write of an agent's presence, last assignment or load bumps
        (with its entry in :attr:`agents_live_v`): an instance whose cache of that live
        state was taken at the current value may decide from it without reading it."""
        return f"{self.p}agents:live_seq"

    @property
    def agents_live_v(self) -> str:
        """Hash: agent id → how often its presence, last assignment or load was written."""
        return f"{self.p}agents:live_v"

    @property
    def agent_presence(self) -> str:
        """Hash: agent id → presence (shared by every instance)."""
        return f"{self.p}agents:presence"

    @property
    def agent_presence_at(self) -> str:
        """Hash: agent id → when its presence last changed (ms)."""
        return f"{self.p}agents:presence_at"

    @property
    def agent_last(self) -> str:
        """Hash: agent id → last assignment (ms), the chooser's idle time."""
        return f"{self.p}agents:last"

    def agent_tickets(self, agent_id: str) -> str:
        """Sorted set: the tickets the agent holds now, scored by assigned_at (ms)."""
        return f"{self.p}{{a:{agent_id}}}:tickets"

    def ticket_assignment(self, tid: str) -> str:
        """Hash: the ticket's last assignment {agent, class, team, skills, assigned_at, released_at}."""
        return f"{self.p}{{t:{tid}}}:asg"

    @property
    def assign_queue(self) -> str:
        """Sorted set: queued ticket ids scored rank × 10^13 + queued_at (ms): priority, then age."""
        return f"{self.p}aq"

    @property
    def assign_queue_items(self) -> str:
        """Hash: queued ticket id → JSON of its demand (team, skills, overflow done…)."""
        return f"{self.p}aq:items"

    @property
    def assign_overflow(self) -> str:
        """Sorted set: queued ticket id → its next overflow step's due time (ms)."""
        return f"{self.p}aq:overflow"

    def sla_clock(self, tid: str) -> str:
        """JSON of the ticket's SlaClock (policy, statuses, responses, events fired)."""
        return f"{self.p}{{t:{tid}}}:slaclock"

    def sla_timers(self, tid: str) -> str:
        """Hash: timer key → JSON [kind, target, policy, since ms, due ms]."""
        return f"{self.p}{{t:{tid}}}:slatimers"

    @property
    def sla_due(self) -> str:
        """Sorted set: ticket id → its earliest SLA timer (ms)."""
        return f"{self.p}sla:due"

    @property
    def sla_events(self) -> str:
        """Hash: JSON [kind, policy, target] → events fired."""
        return f"{self.p}sla:events"

    @property
    def assign_stats(self) -> str:
        """Hash: fr_count/fr_sum/fr_max, res_count/res_sum/res_max (ms) of first response and resolution."""
        return f"{self.p}asg:stats"

    @property
    def tickets_changed(self) -> str:
        """Sorted set: ticket id → updated_at (ms) — the scheduler's sweep."""
        return f"{self.p}tchanged"

    # outbound webhooks, help-desk sync, console (gateway/store/redis_webhooks.py) ----------
    @property
    def events(self) -> str:
        """Stream of committed events (every outbox topic but ``reply.send``), written by the
        script that commits the change: fields id, topic, ticket_id, payload, at and the
        snapshots taken in that script (``t`` ticket hash, ``m`` timeline entry, ``c``/``ci``
        contact hash and identities). The stream id is the event's place (the cursors)."""
        return f"{self.p}wh:events"

    def event_id(self, eid: str) -> str:
        """Event id → its stream id (replay by id while the event is kept)."""
        return f"{self.p}wh:evid:{eid}"

    @property
    def webhook_endpoints(self) -> str:
        """Set of endpoint names."""
        return f"{self.p}wh:eps"

    def webhook_endpoint(self, name: str) -> str:
        """Hash: url, secret, events, allow_private, enabled, source, description, cursor
        (stream id fanned out up to), disabled_reason, failures, paused_until, created_at, updated_at."""
        return f"{self.p}wh:ep:{_q(name)}"

    @property
    def webhook_seq(self) -> str:
        """Counter: queue rows' order (and dead letters', log lines')."""
        return f"{self.p}seq:wh"

    def webhook_row(self, rid: str) -> str:
        """Hash: one event waiting for one endpoint (with its payload as committed)."""
        return f"{self.p}wh:q:{rid}"

    def webhook_rows(self, name: str) -> str:
        """Sorted set: the endpoint's queue rows by seq."""
        return f"{self.p}wh:rows:{_q(name)}"

    def webhook_line(self, name: str, order_key: str) -> str:
        """Sorted set: one (endpoint, ticket) line of rows by seq; only its head may be claimed."""
        return f"{self.p}wh:line:{_q(name, order_key)}"

    def webhook_due(self, name: str) -> str:
        """Sorted set: the heads of the endpoint's lines by next_at (a leased head: its lease's end)."""
        return f"{self.p}wh:due:{_q(name)}"

    def webhook_dead(self, name: str) -> str:
        """Sorted set: the endpoint's dead letters (JSON) by seq."""
        return f"{self.p}wh:dead:{_q(name)}"

    def webhook_log(self, name: str) -> str:
        """Sorted set: the endpoint's delivery attempts (JSON) by seq."""
        return f"{self.p}wh:log:{_q(name)}"

    def desk_links(self, desk: str) -> str:
        """Hash: omnigate ticket id → desk ticket id."""
        return f"{self.p}desk:links:{_q(desk)}"

    def desk_remote(self, desk: str) -> str:
        """Hash: desk ticket id → omnigate ticket id."""
        return f"{self.p}desk:remote:{_q(desk)}"

    def desk_order(self, desk: str) -> str:
        """Sorted set: linked omnigate ticket ids by link time."""
        return f"{self.p}desk:order:{_q(desk)}"

    def desk_seen(self, desk: str) -> str:
        """Hash: desk comment id → JSON {ticket_id, origin, at}."""
        return f"{self.p}desk:seen:{_q(desk)}"

    def desk_owned(self, tid: str) -> str:
        """Set by a desk with ``ownership: desk``: the desk's name (assignment and SLA leave the ticket)."""
        return f"{self.p}{{t:{tid}}}:deskowned"

    def console_session(self, digest: str) -> str:
        """Hash of a console session (expires with it)."""
        return f"{self.p}csess:{digest}"

    def canned(self, cid: str) -> str:
        return f"{self.p}canned:{cid}"

    @property
    def canned_names(self) -> str:
        """Hash: canned reply name → id (names are unique)."""
        return f"{self.p}canned:names"

    @property
    def timeline_all(self) -> str:
        """Sorted set: every timeline entry id by its seq (the console's live tail)."""
        return f"{self.p}tlall"
    # live updates, shared attachments (gateway/fanout.py, gateway/attachments.py) ----
    @property
    def live_channel(self) -> str:
        """Pub/sub channel: every instance's live events (webchat hub, console nudges)."""
        return f"{self.p}live"

    def attachment(self, sha256: str) -> str:
        """String: an attachment's bytes by content (below ``attachments.redis_max_bytes``)."""
        return f"{self.p}att:{sha256}"

    @property
    def migrated(self) -> str:
        """Hash: ``omnigate migrate``'s marker (source folder, times, last audit seq moved)."""
        return f"{self.p}migrated"
    # the REST API: ticket lists, tokens, mentions, contact audit, auto-replies (redis_api.py) ------
    @property
    def ticket_index_base(self) -> str:
        """Ticket list indexes (sorted sets), all named ``<base><order>:<dim>``:
        order ``p`` (score rank·2^42 + created_at ms, member ticket id) or
        ``u`` (score updated_at ms, member ``<number:016d>:<ticket id>``);
        dim ``all``, ``s:<status>``, ``t:<team>``, ``a:<assignee>``, ``na``
        (unassigned). The value is the name's last part, so no separator in
        it can make two names collide. The APPLY script builds the same names
        (``redis_api.REINDEX_LUA``): change both together."""
        return f"{self.p}tix:"

    def ticket_index(self, order: str, dim: str) -> str:
        return f"{self.ticket_index_base}{order}:{dim}"

    def token(self, token_id: str) -> str:
        """Hash: one API token's info (never the token)."""
        return f"{self.p}tok:{token_id}"

    def token_hash(self, digest: str) -> str:
        """The token's SHA-256 → its id."""
        return f"{self.p}tokh:{digest}"

    def token_prefix(self, prefix: str) -> str:
        """Set of token ids listed under a prefix (revoke by prefix)."""
        return f"{self.p}tokp:{_q(prefix)}"

    @property
    def tokens(self) -> str:
        """Sorted set: token id scored by created_at (the list's order)."""
        return f"{self.p}toks"

    @property
    def token_epoch(self) -> str:
        """Incremented by every revocation: each instance's token cache is dropped when it moves."""
        return f"{self.p}seq:tokrev"

    def mentions(self, agent_id: str) -> str:
        """Sorted set: JSON {timeline_id, ticket_id, by} scored by at, per mentioned agent."""
        return f"{self.p}{{a:{agent_id}}}:mentions"

    def contact_audit(self, cid: str) -> str:
        """List of JSON audit records naming the contact (subject, merge winner, unmerge source)."""
        return f"{self.p}{{c:{cid}}}:audit"

    @property
    def audit_seq(self) -> str:
        return f"{self.p}seq:audit"

    @property
    def auto_reply_last(self) -> str:
        """Hash: identity key → the last auto-reply's time (ms): the per-address window."""
        return f"{self.p}ar:last"

    @property
    def auto_reply_log(self) -> str:
        """Sorted set: auto-replies of the last hour, scored by time (the global budget)."""
        return f"{self.p}ar:log"

    @property
    def contacts_by_id(self) -> str:
        """Sorted set of every contact id (score 0: by id), written with the contact: name search walks it."""
        return f"{self.p}contacts"

    # one sender in arrival order (gateway/store/redis_order.py) ------
    @property
    def order_registered(self) -> str:
        """Sorted set: pending journal ids whose sender is known (registered by
        the claimer that parsed them), scored by seq; a settle removes them."""
        return f"{self.p}ord:reg"

    def order_sender(self, sender: str) -> str:
        """Sorted set: one sender's registered pending journal ids, scored by seq;
        its head is the only one of that sender that may be decided."""
        return f"{self.p}ord:s:{_q(sender)}"

    # shared across instances (gateway/store/redis_shared.py) ---------
    def rate_bucket(self, name: str, key: str) -> str:
        """Hash {tokens, at}: one token bucket of limit ``name`` (API token, webchat conversation…)."""
        return f"{self.p}rate:{_q(name, key)}"

    def shared_token(self, key: str) -> str:
        """Hash {value, expires_at}: a platform access token (WeChat/WeCom), shared by instances."""
        return f"{self.p}atok:{_q(key)}"

    @property
    def rules_generation(self) -> str:
        """Counter: bumped by an instance asked to reload its rules; every instance reloads when it moves."""
        return f"{self.p}rules:gen"

    # platform delivery reports (gateway/store/redis_delivery.py) -----
    def delivery_sent(self, external_id: str) -> str:
        """Hash {timeline_id, ticket_id, contact_id}: the reply sent with this platform message id."""
        return f"{self.p}dlv:{_q(external_id)}"

    def delivery_early(self, external_id: str) -> str:
        """Hash: status → a report on a message not known yet (expires after a day)."""
        return f"{self.p}dlv-early:{_q(external_id)}"
    # webchat transcripts (connectors/webchat/redis_transcript.py) ----
    def webchat_conv(self, conv: str, part: str) -> str:
        """One conversation's keys, hash-tagged together: ``c`` (hash: site, visitor, name, email,
        last_seq, last_activity_ms, read marks, ended_seq, ticket_id), ``f`` (hash: seq → frame
        JSON), ``r`` (hash: ref → seq), ``files`` (set: sha256 of its files)."""
        return f"{self.p}{{wc:{conv}}}:{part}"

    @property
    def webchat_active(self) -> str:
        """Sorted set: conversation → last activity (ms), while it has frames since it last ended."""
        return f"{self.p}wc:active"

    @property
    def webchat_unmailed(self) -> str:
        """Sorted set: ``<conv>\\n<seq>`` of an agent frame not yet mailed → its time (ms)."""
        return f"{self.p}wc:unmailed"

    @property
    def webchat_key(self) -> str:
        """String: the key every instance signs visitor tokens with (SET NX once)."""
        return f"{self.p}wc:key"
