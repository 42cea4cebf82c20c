"""One sender's messages decided in arrival order across instances (Redis).

Within one process a FIFO lock per sender does it (``gateway.order.LocalOrder``);
with several instances on one Redis the entries of one sender are claimed by
different instances, so the order is kept in Redis:

- the *claimer* of an instance parses what it claims (a sender is only known
  after parsing) and registers each entry in one script (``REGISTER``): the
  entry goes into ``ord:reg`` (every registered pending entry, by seq) and
  into its sender's sorted set ``ord:s:<sender>`` (by seq); an entry that
  is no longer pending is not registered;
- before deciding, a worker asks for the entry's turn (``TURN``, one script):
  it is its turn when it heads its sender's set (heads already settled are
  dropped on the way) **and** no pending entry with a lower seq is still
  unregistered — ``ZCOUNT(pending, < seq) − ZCOUNT(ord:reg, < seq)`` is 0
  (``ord:reg`` holds only pending entries: every settle removes the entry in
  the same script, see :meth:`RedisOrderMixin._order_settled`), because an
  unregistered lower entry may be the same sender's earlier message;
- the commit (any settle: processed, duplicate, failed) removes the entry
  from ``ord:reg`` and from its sender's set, so the next one heads it.

A dead instance's registered entries keep heading their senders' sets, and
its claimed-but-unregistered entries hold the gate for every entry above
them, until ``XAUTOCLAIM`` hands them to a live instance
(``store.redis_claim_idle_s``), whose claimer registers them again
(registration is idempotent).
"""

from __future__ import annotations

from typing import Any

REGISTER_LUA = """
-- KEYS[1]: ord:reg, KEYS[2]: the pending index, KEYS[2+i]: sender sets
-- ARGV: triples (journal id, seq, index of its sender set in KEYS or 0)
local n = 0
for i = 1, #ARGV, 3 do
  local jid, seq, ki = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if redis.call('ZSCORE', KEYS[2], jid) then
    redis.call('ZADD', KEYS[1], seq, jid)
    if ki > 0 then redis.call('ZADD', KEYS[ki], seq, jid) end
    n = n + 1
  end
end
return n
"""

TURN_LUA = """
-- KEYS[1]: ord:reg, KEYS[2]: the pending index, KEYS[3]: the entry's sender set
-- ARGV[1]: the journal id; ARGV[2]: '1' to skip the lower-entries check (a stuck gate)
-- -> 'go' | 'wait' (not the sender's head) | 'lower' (a lower entry is unregistered)
--    | 'unregistered' | 'settled'
local jid = ARGV[1]
local seq = redis.call('ZSCORE', KEYS[1], jid)
if not seq then
  if not redis.call('ZSCORE', KEYS[2], jid) then return 'settled' end
  return 'unregistered'
end
while true do
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if not head then return 'unregistered' end
  if head == jid then break end
  if redis.call('ZSCORE', KEYS[2], head) then return 'wait' end
  redis.call('ZREM', KEYS[3], head)  -- settled without being removed here: dropped now
end
local below = '(' .. seq
if ARGV[2] ~= '1' and redis.call('ZCOUNT', KEYS[2], '-inf', below) > redis.call('ZCOUNT', KEYS[1], '-inf', below) then
  return 'lower'  -- a lower pending entry is not registered yet: it may be this sender's
end
return 'go'
"""


class RedisOrderMixin:
    """The per-sender arrival order of :class:`~gateway.store.redis_store.RedisStore`."""

    k: Any
    r: Any

    def _order_scripts(self) -> tuple[Any, Any]:
        scripts = getattr(self, "_order_lua", None)
        if scripts is None:
            scripts = self._order_lua = (self.r.register_script(REGISTER_LUA), self.r.register_script(TURN_LUA))
        return scripts

    def _order_senders(self) -> dict[str, str]:
        """journal id → sender, for the entries this instance registered (the
        settle removes them from their sender's set in the same script)."""
        senders = getattr(self, "_order_of", None)
        if senders is None:
            senders = self._order_of = {}
        return senders

    async def order_register(self, items: list[tuple[str, int, str | None]]) -> int:
        """Register claimed entries: (journal id, seq, sender key or None for an
        entry with no sender — unparseable, or nothing to route). One script;
        idempotent; entries no longer pending are skipped. Returns how many."""
        if not items:
            return 0
        register, _ = self._order_scripts()
        k = self.k
        keys = [k.order_registered, k.journal_status("pending")]
        index: dict[str, int] = {}
        args: list[Any] = []
        senders = self._order_senders()
        for jid, seq, sender in items:
            ki = 0
            if sender is not None:
                key = k.order_sender(sender)
                ki = index.get(key, 0)
                if not ki:
                    keys.append(key)
                    ki = index[key] = len(keys)
                senders[jid] = sender
            args += [jid, seq, ki]
        return int(await self._call(register(keys=keys, args=args)))  # type: ignore[attr-defined]

    async def order_turn(self, journal_id: str, sender: str, *, skip_lower: bool = False) -> str:
        """``go`` (this entry heads its sender's set and no lower pending entry
        is unregistered), ``wait`` (an earlier entry of the sender is
        undecided), ``lower`` (a lower pending entry is not registered yet),
        ``unregistered`` (register it first) or ``settled`` (no longer
        pending: nothing to wait for). ``skip_lower``: do not check lower
        entries (a gate stuck on an entry nobody claims)."""
        _, turn = self._order_scripts()
        k = self.k
        got = await self._call(turn(keys=[k.order_registered, k.journal_status("pending"),  # type: ignore[attr-defined]
                                          k.order_sender(sender)], args=[journal_id, "1" if skip_lower else "0"]))
        return got.decode() if isinstance(got, bytes) else str(got)

    def order_forget(self, journal_id: str) -> None:
        """The worker is done with the entry (settled): forget its sender."""
        self._order_senders().pop(journal_id, None)

    def _order_settled(self, tx: Any, journal_id: str) -> None:
        """Called by every settle (a status other than pending): the entry leaves
        ``ord:reg`` and, when this instance registered it, its sender's set, in
        the settle's own script (other instances drop a settled head lazily)."""
        tx.op("ZREM", self.k.order_registered, journal_id)
        sender = self._order_senders().get(journal_id)
        if sender is not None:
            tx.op("ZREM", self.k.order_sender(sender), journal_id)
