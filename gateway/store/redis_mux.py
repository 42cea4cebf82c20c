"""Auto-pipelining: what the coroutines of one process ask Redis within one
event-loop turn goes out in one write, on one shared connection, and the
replies are handed back in order.

redis-py gives every command and every pipeline a connection of its own
from its pool: a checkout and a release, a retry wrapper, a timeout context,
a ``send`` system call and a wake-up of the loop for its reply, per round
trip. With the pipeline's 64 tasks each waiting on its own connection that
machinery was most of the Redis backend's CPU (py-spy of the bare pipeline
on Redis: ~48 % of the loop in redis-py's command path, 10.5 % in the
sockets' ``send``, 9 % checking connections out of the pool). Redis runs
one command at a time whatever the number of connections, so one connection
loses nothing: commands asked for in the same turn are packed together
(redis-py's own encoder), written once when the turn ends, and the replies,
parsed by hiredis as they arrive, resolve the callers' futures in order
(ioredis calls it ``enableAutoPipelining``).

:class:`MuxRedis` is a ``redis.asyncio.Redis`` whose ``execute_command``
and non-transactional pipelines go through it; everything else is redis-py
as before:

- what would hold the shared connection or change its state goes through
  the pool: blocking commands (``WAIT``, the ``B…`` pops, ``XREAD``/
  ``XREADGROUP`` with ``BLOCK``), ``MULTI``/``EXEC``/``WATCH`` and
  transactions, connection commands (``SELECT``, ``AUTH``, ``CLIENT``…),
  pipelines holding redis-py ``Script`` objects (it loads them first);
- a command whose shared connection failed (closed, reset, no reply within
  ``socket_timeout``) is sent once more through the pool, exactly what
  redis-py's retry does for its own connections; a ``READONLY`` answer (a
  primary demoted by Sentinel) drops the shared connection, so that the next
  one is opened to the primary the Sentinels name, and the command goes
  through the pool the same way;
- the shared connection is opened by redis-py (address from Sentinel,
  TLS, ``AUTH``, ``SELECT``) and replaced after ``health_check_interval``
  seconds idle instead of being pinged.

Replies are converted by redis-py's own response callbacks, so a caller
sees what redis-py would have given it, errors included (a pipeline raises
its first error, as ``raise_on_error`` does).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.client import EMPTY_RESPONSE, NEVER_DECODE, Pipeline, Redis
from redis.exceptions import ConnectionError, InvalidResponse, ReadOnlyError, ResponseError, TimeoutError

#: commands that hold the connection (blocking) or change its state: never shared
_POOL_ONLY = frozenset({
    "WAIT", "WAITAOF", "BLPOP", "BRPOP", "BLMOVE", "BRPOPLPUSH", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP",
    "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "SELECT", "AUTH", "HELLO", "CLIENT", "RESET", "QUIT",
    "MONITOR", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE",
    "SYNC", "PSYNC", "REPLICAOF", "SLAVEOF", "SHUTDOWN", "DEBUG", "READONLY", "READWRITE", "ASKING",
})
_BLOCK_WHEN = frozenset({"XREAD", "XREADGROUP"})  # blocking only with BLOCK
_NOT_ENOUGH = object()

_names: dict[Any, str] = {}


def shareable(args: tuple) -> bool:
    """Whether the command ``args`` may go through the shared connection."""
    first = args[0]
    name = _names.get(first)
    if name is None:
        text = first.decode() if isinstance(first, bytes) else str(first)
        name = _names[first] = text.split(" ", 1)[0].upper()
    if name in _POOL_ONLY:
        return False
    return name not in _BLOCK_WHEN or ("BLOCK" not in args and b"BLOCK" not in args)


class _Mux:
    """The shared connection of one client: the write buffer of this loop
    turn and the requests waiting for their replies, in order."""

    def __init__(self, pool: Any):
        self.pool = pool
        kw = pool.connection_kwargs
        self.timeout: float | None = kw.get("socket_timeout")
        self.idle_s: float = kw.get("health_check_interval") or 0
        self._conn: Any = None
        self._writer: Any = None  # the connection's asyncio StreamWriter
        self._opening: asyncio.Lock | None = None
        #: packed commands of this turn, written by :meth:`_flush`
        self._out: list[bytes] = []
        self._flush_at: asyncio.Handle | None = None
        #: [future, replies expected, replies so far], in the order they were written
        self._waiting: collections.deque[list] = collections.deque()
        #: the connection's reader (one task for its life) and the timer of ``socket_timeout``
        self._read_task: asyncio.Task | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        #: when bytes last came (or a request went out on an idle connection), loop time
        self._progress = 0.0
        #: replace the connection once nothing is in flight on it (a ``READONLY`` answer)
        self._replace = False
        self._closing: set[asyncio.Task] = set()
        self.closed = False

    async def send(self, commands: list[tuple]) -> list:
        """The raw replies to ``commands`` (an error reply as its exception,
        not raised); ConnectionError or TimeoutError when the connection
        failed before every reply came. Written at once when nothing is in
        flight, else with the rest of this loop turn's."""
        loop = asyncio.get_running_loop()
        conn = self._conn
        if self._replace and self._waiting:  # a demoted primary's: the pool's way until it is idle
            raise ConnectionError("the shared connection is being replaced")
        if conn is None or ((self._replace or (self.idle_s and loop.time() - self._progress > self.idle_s))
                            and not self._waiting):
            conn = await self._open(conn)
        packed = conn.pack_commands(commands)
        fut = loop.create_future()
        waiting = self._waiting
        waiting.append([fut, len(commands), []])
        if len(waiting) == 1:
            self._progress = loop.time()
            self._writer.writelines(packed)
            if self.timeout and self._watchdog is None:
                self._watchdog = loop.call_later(self.timeout, self._check)
        else:
            self._out.extend(packed)
            if self._flush_at is None:
                self._flush_at = loop.call_soon(self._flush)
        return await fut

    async def _open(self, seen: Any) -> Any:
        if self.closed:
            raise ConnectionError("the client is closed")
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._conn is not seen and self._conn is not None:
                return self._conn  # another caller opened it meanwhile
            self.drop()
            self._replace = False
            conn = self.pool.make_connection()
            await conn.connect()  # redis-py: the address (Sentinel), TLS, AUTH, SELECT
            parser = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error,
                                    notEnoughData=_NOT_ENOUGH)
            loop = asyncio.get_running_loop()
            self._conn, self._writer, self._progress = conn, conn._writer, loop.time()
            self._read_task = loop.create_task(self._read(conn, conn._reader, parser))
            return conn

    def _flush(self) -> None:
        self._flush_at = None
        if self._out:
            self._writer.writelines(self._out)
            self._out.clear()

    def _check(self) -> None:
        """``socket_timeout`` passed since the watchdog was set: fail what is in
        flight if nothing came meanwhile, else look again later."""
        self._watchdog = None
        if not self._waiting or not self.timeout:
            return
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._progress
        if quiet >= self.timeout:
            self._fail(TimeoutError("Timeout reading from the shared connection"))
        else:
            self._watchdog = loop.call_later(self.timeout - quiet, self._check)

    async def _read(self, conn: Any, reader: asyncio.StreamReader, parser: Any) -> None:
        """Hand each reply to the oldest request, for the connection's life."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("Connection closed by server.")
                self._progress = loop.time()
                parser.feed(data)
                waiting = self._waiting
                while (reply := parser.gets()) is not _NOT_ENOUGH:
                    if not waiting:
                        raise InvalidResponse("a reply nobody asked for")
                    if isinstance(reply, ReadOnlyError):
                        self._replace = True  # a demoted primary: replaced once nothing is in flight
                    request = waiting[0]
                    got = request[2]
                    got.append(reply)
                    if len(got) == request[1]:
                        waiting.popleft()
                        if not request[0].done():
                            request[0].set_result(got)
        except asyncio.CancelledError:
            if self._conn is conn:
                self._fail(ConnectionError("the client is closing"))
            raise
        except Exception as exc:  # noqa: BLE001 - every waiter learns the connection failed
            if self._conn is conn:
                self._fail(exc if isinstance(exc, (ConnectionError, TimeoutError)) else ConnectionError(str(exc)))

    def _fail(self, exc: BaseException) -> None:
        waiting, self._waiting = self._waiting, collections.deque()
        self._out.clear()
        for handle in (self._flush_at, self._watchdog):
            if handle is not None:
                handle.cancel()
        self._flush_at = self._watchdog = None
        self.drop()
        for request in waiting:
            if not request[0].done():
                request[0].set_exception(exc)

    def drop(self) -> None:
        """Forget the shared connection (the next request opens another)."""
        conn, self._conn = self._conn, None
        task, self._read_task = self._read_task, None
        if conn is None:
            return
        ending = [asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))]
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            ending.append(task)
        for t in ending:  # awaited by close()
            self._closing.add(t)
            t.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        self.closed = True
        if self._conn is not None:
            self._fail(ConnectionError("the client is closing"))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


async def _parsed(client: Any, args: tuple, reply: Any, options: dict) -> Any:
    """``reply`` as redis-py's ``parse_response`` would give it."""
    if isinstance(reply, ResponseError):
        if EMPTY_RESPONSE in options:
            return options[EMPTY_RESPONSE]
        raise reply
    options.pop(EMPTY_RESPONSE, None)
    options.pop(NEVER_DECODE, None)
    options.pop("keys", None)
    callback = client.response_callbacks.get(args[0])
    if callback is None:
        return reply
    value = callback(reply, **options)
    return await value if inspect.isawaitable(value) else value


class MuxRedis(Redis):
    """A ``redis.asyncio.Redis`` that shares one connection among what its
    callers send in the same loop turn (module docstring). Bytes replies
    and RESP2 only (``decode_responses=False``, no ``protocol=3``, whose
    pushes are not replies); otherwise it is plain redis-py."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        kw = self.connection_pool.connection_kwargs
        plain = not kw.get("decode_responses") and str(kw.get("protocol") or 2) == "2"  # RESP3 may push
        self._mux = _Mux(self.connection_pool) if plain else None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        mux = self._mux
        if mux is None or self.single_connection_client or not shareable(args):
            return await super().execute_command(*args, **options)
        try:
            (reply,) = await mux.send([args])
        except (ConnectionError, TimeoutError):
            return await super().execute_command(*args, **options)  # once more, the pool's way
        if isinstance(reply, ReadOnlyError):
            return await super().execute_command(*args, **options)
        return await _parsed(self, args, reply, options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        if self._mux is None:
            return super().pipeline(transaction, shard_hint)
        return MuxPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint, mux=self._mux)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self._mux is not None:
            await self._mux.close()
        await super().aclose(close_connection_pool)


class MuxPipeline(Pipeline):
    """A pipeline of :class:`MuxRedis`: without a transaction, scripts or
    commands that must not be shared, it goes out with whatever else the
    loop turn sends."""

    def __init__(self, *args: Any, mux: _Mux, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._mux = mux

    async def execute(self, raise_on_error: bool = True) -> list:
        stack = self.command_stack
        if (not stack or self.watching or self.scripts or self.is_transaction or self.explicit_transaction
                or not all(shareable(args) for args, _ in stack)):
            return await super().execute(raise_on_error)
        await self.reset()
        try:
            replies = await self._mux.send([args for args, _ in stack])
        except (ConnectionError, TimeoutError):
            replies = None
        if replies is None or any(isinstance(r, ReadOnlyError) for r in replies):
            self.command_stack = stack  # once more, the pool's way
            return await super().execute(raise_on_error)
        response = []
        for (args, options), reply in zip(stack, replies):
            try:
                response.append(await _parsed(self, args, reply, options))
            except ResponseError as exc:
                response.append(exc)
        if raise_on_error:
            self.raise_first_error(stack, response)
        return response
