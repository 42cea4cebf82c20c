"""The API channel's refusal for load, answered where aiohttp parses the request.

While the pipeline is starved, shedding (``pipeline.admission_shed``,
gateway/admission.py) refuses an API-channel intake with 503 problem+json
``Overloaded`` and ``Retry-After``. Past capacity most API requests are
refused (two of three at 3× the sustainable rate), so what a refusal costs
decides how much of the one interpreter is left for the pipeline. Through
aiohttp's ordinary path a refusal cost ~66 µs of server CPU, most of it
aiohttp's per-request work: the request object, a task per request, routing,
the route guard, a response object and its headers. Here the same answer is
written from the protocol's ``data_received``, as soon as the request is
parsed, before any of that exists (ARCHITECTURE.md, "Fifth pass (issue 11,
overload: the refusal)").

What is answered here — everything else takes aiohttp's ordinary path, where
``gateway.api.api_message`` makes the same decisions and refuses the same
way (the two answers are the same bytes but for ``Date``; tests pin it):

- ``POST /channels/api/messages`` exactly, HTTP/1.1, keep-alive, not an
  upgrade, its body complete in what arrived (a body still arriving, or a
  client waiting for ``100 Continue``, goes the ordinary way, which refuses
  without reading it and discards it before the next request);
- only while the connection is idle (nothing queued or in progress on it,
  so answers stay in request order) and its writes are not paused;
- the bearer token right (the same constant-time check as the handler's: a
  wrong or missing token gets the handler's 401, so a 503 never tells an
  unauthenticated caller more than before);
- and the gate says refuse (:meth:`gateway.ingest.Ingest.shed_or_reserve`,
  asked last, as the handler asks it, so ``shed_count`` counts each refusal
  once).

The decision there is binding (ARCHITECTURE.md, "Sixth pass (issue 11,
overload at 3×: the binding decision)"): a request of that kind that is not
refused has its gate credit taken as it is parsed, and its handler honours
it (:func:`claim`: no second question, no second credit at the append).
Asked without taking, a request let through at the parse could be refused
by the handler a loop iteration later, once requests admitted meanwhile had
spoken for the credits — at 3× the sustainable rate a third to a half of the
refusals, each at over twice the CPU. A credit taken for a request that
then does not append goes back (``Ingest.release``): its handler refused it
(400, 413, the backlog limit) or went away, or its connection closed before
the handler claimed it (:meth:`RefusingRequestHandler.connection_lost`).

The refusal is counted in ``omnigate_rejected_total{channel="api",
reason="overloaded"}`` as before. It makes no access-log line (the daemon
runs without one) and is not in the bench server's intake times
(:class:`gateway.bench.server.IntakeTimes`): it is answered on arrival.

How it is installed: aiohttp has no public hook between parsing a request
and building its ``web.Request``. :func:`install` makes the application's
server (``Application._make_handler``, what every ``AppRunner`` calls: the
daemon's ``web.run_app``, ``aiohttp_client`` in tests, the bench servers)
a :class:`RefusingServer`, whose connections are
:class:`RefusingRequestHandler`: aiohttp's own protocol with
``data_received`` extended. It reads a few of the protocol's attributes
(:data:`_PROTOCOL_SLOTS`); an aiohttp without them keeps the ordinary path
(:func:`supported`, logged once at start).
"""

from __future__ import annotations

import collections
import time
from email.utils import formatdate
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11, RawRequestMessage
from aiohttp.web_protocol import RequestHandler

from gateway import keys
from gateway.http_util import bearer_matches

log = structlog.get_logger(__name__)

#: The one route refused here (the API channel's intake, gateway/api.py).
PATH = "/channels/api/messages"
#: aiohttp protocol attributes the refusal reads or sets (see :func:`supported`).
_PROTOCOL_SLOTS = ("_messages", "_waiter", "_parser", "_force_close", "_close", "_upgraded", "_payload_parser",
                   "_buffer_paused", "_paused", "_keepalive_timeout", "_next_keepalive_close_time")


def supported() -> bool:
    """This aiohttp's protocol has what :class:`RequestHandler` subclassing
    here relies on (its ``__slots__``; checked, not assumed)."""
    slots: set[str] = set()
    for cls in RequestHandler.__mro__:
        slots.update(getattr(cls, "__slots__", ()))
    return all(name in slots for name in _PROTOCOL_SLOTS)


class ApiRefusal:
    """Whether a parsed request is refused for load here, and the answer's bytes.

    ``app`` gives the configuration (the bearer token), the ingest path (its
    shedding decision and ``Retry-After``) and the metrics."""

    def __init__(self, app: web.Application):
        from gateway.api import overloaded_problem  # the handler's own refusal, built once here

        self.app = app
        self.rejected = app[keys.METRICS].rejected.labels("api", "overloaded")
        self.count = 0  # refusals answered here (the rest of the API's refusals went through the handler)
        self._problem = overloaded_problem
        self._retry: int | None = None
        self._head = b""
        self._tail = b""
        self._second = -1
        self._answer = b""

    def answer(self, message: Any, payload: Any) -> bytes | bool | None:
        """The refusal's bytes for ``message`` (a parsed request whose body
        ``payload`` holds); True: not refused, and the gate's credit for it
        taken now (``Ingest.shed_or_reserve``: the handler honours it,
        :func:`claim`); None: aiohttp's ordinary path decides."""
        if (not isinstance(message, RawRequestMessage) or message.path != PATH or message.method != "POST"
                or message.version != HttpVersion11 or message.should_close or message.upgrade
                or not payload.is_eof()):
            return None
        app = self.app
        token = app[keys.CONFIG].api_token
        if not token or not bearer_matches(message.headers.get("Authorization"), token):
            return None  # the handler answers 401
        ingest = app[keys.INGEST]
        refused = ingest.shed_or_reserve()
        if not refused:
            return None if refused is None else True
        self.rejected.inc()
        self.count += 1
        return self._bytes(ingest.retry_after_s)

    def _bytes(self, retry: int) -> bytes:
        if retry != self._retry:
            self._prepare(retry)
        second = int(time.time())  # ``Date`` is the real time, as aiohttp writes it (not the gateway's clock)
        if second != self._second:
            self._second = second
            self._answer = b"%sDate: %s\r\n%s" % (self._head, formatdate(second, usegmt=True).encode(), self._tail)
        return self._answer

    def _prepare(self, retry: int) -> None:
        """The answer aiohttp would write for the handler's refusal: its
        status line and headers (those of the problem response, then
        ``Content-Length``, ``Date``, ``Server`` as aiohttp adds them) and body."""
        resp = self._problem(retry).response()
        body = resp.body
        head = [f"HTTP/1.1 {resp.status} {resp.reason}"]
        head += [f"{name}: {value}" for name, value in resp.headers.items()]
        head.append(f"Content-Length: {len(body)}")
        self._retry, self._second = retry, -1
        self._head = ("\r\n".join(head) + "\r\n").encode("latin-1")
        self._tail = f"Server: {SERVER_SOFTWARE}\r\n\r\n".encode("latin-1") + body


class RefusingRequestHandler(RequestHandler):
    """aiohttp's HTTP protocol, answering :class:`ApiRefusal`'s refusals as
    the requests are parsed (module docstring).

    While the connection is idle its request loop (``RequestHandler.start``)
    waits on ``_waiter`` for the parser to queue a request. Data arriving
    then is parsed with that waiter set aside, so the loop is not woken yet;
    the refusable requests at the head of the queue are answered and
    dropped, and the loop is woken only if others remain — which it serves
    in order, after the answers already written."""

    __slots__ = ("_refusal", "_reserved")

    def __init__(self, manager: web.Server, *, refusal: ApiRefusal, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._refusal = refusal
        #: the request whose credit :meth:`ApiRefusal.answer` took, until its handler claims it (:func:`claim`)
        self._reserved: RawRequestMessage | None = None

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if (waiter is None or waiter.done() or self._messages or self._payload_parser is not None
                or self._upgraded or self._force_close or self._close):
            super().data_received(data)
            return
        self._waiter = None  # parse without waking the request loop
        try:
            super().data_received(data)
        finally:
            self._waiter = waiter
        messages = self._messages
        if messages and not self._buffer_paused:
            self._refuse_leading(messages)
        if messages and not waiter.done():
            waiter.set_result(None)

    def _refuse_leading(self, messages: collections.deque) -> None:
        refusal = self._refusal
        while messages and not self._paused and self.transport is not None:
            message, payload = messages[0]
            answer = refusal.answer(message, payload)
            if answer is None:
                return
            if answer is True:  # admitted: its handler, next on this connection, takes the credit
                self._unreserve()
                self._reserved = message
                return
            messages.popleft()
            consumed = getattr(self._parser, "message_consumed", None)  # aiohttp ≥ 3.14 counts queued messages
            if consumed is not None:
                consumed()
            self.transport.write(answer)
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout

    def _unreserve(self) -> None:
        """Give back a credit no handler claimed: the connection closed
        first, or (defensively) the request never reached ``api_message``
        — a connection is idle again only after its last request was
        handled, so a reservation still here then is one nobody will claim."""
        if self._reserved is not None:
            self._reserved = None
            self._refusal.app[keys.INGEST].release()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._unreserve()
        super().connection_lost(exc)


class RefusingServer(web.Server):
    """aiohttp's low-level server whose connections are
    :class:`RefusingRequestHandler` (built by :func:`install`)."""

    def __init__(self, handler: Any, *, refusal: ApiRefusal, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.refusal = refusal

    def __call__(self) -> RequestHandler:
        return RefusingRequestHandler(self, refusal=self.refusal, loop=self._loop, **self._kwargs)


def claim(request: web.BaseRequest) -> bool:
    """The gate's credit was taken for ``request`` as it was parsed
    (:meth:`ApiRefusal.answer`): True once, for its handler, which then
    appends without asking the gate again (``Ingest.ingest(…,
    reserved=True)``) or gives the credit back (``Ingest.release``) if it
    refuses the request or goes away. False: nothing was decided for it
    (the handler asks ``Ingest.shed`` as before), or its connection closed
    first and gave the credit back."""
    protocol = request.protocol
    if (isinstance(protocol, RefusingRequestHandler) and protocol._reserved is not None
            and protocol._reserved is getattr(request, "_message", None)):  # the parsed request it was taken for
        protocol._reserved = None
        return True
    return False


#: The app's :class:`ApiRefusal` (absent where :func:`supported` is false).
REFUSAL = web.AppKey("fast_refusal", ApiRefusal)


def install(app: web.Application) -> None:
    """Serve ``app`` with refusals answered at the protocol level (module
    docstring; ``app[REFUSAL]`` counts them). Where this aiohttp lacks what
    that needs, the handler refuses, as it always can."""
    if not supported():
        log.warning("http.fast_refusal_unavailable", hint="this aiohttp's protocol differs: refusals for load "
                                                          "take the ordinary path")
        return
    refusal = app[REFUSAL] = ApiRefusal(app)
    make_handler = app._make_handler

    def make_refusing_handler(**kwargs: Any) -> web.Server:
        server = make_handler(**kwargs)  # aiohttp's own, with every setting it applies
        return RefusingServer(server.request_handler, refusal=refusal, request_factory=server.request_factory,
                              handler_cancellation=server.handler_cancellation, loop=server._loop,
                              **server._kwargs)

    app._make_handler = make_refusing_handler  # type: ignore[method-assign]
