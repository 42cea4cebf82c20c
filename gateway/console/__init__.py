"""The agent console at ``/console``: server-rendered Jinja2 pages with a
vendored htmx (``static/htmx-2.0.4.min.js``, BSD-2 licence beside it) and a
small script of our own (``static/console.js``: the live stream, the
presence heartbeat, remote images on click). Nothing to build; works offline.

Sign-in takes the agent's own API token (or the admin ``OMNIGATE_API_TOKEN``)
and opens a server-side session (``console_sessions``): an HttpOnly,
SameSite=Strict cookie; every POST carries the session's CSRF token. Rights
are the REST API's (``gateway/auth.py``), checked here on the server for
every page and action; a page the agent may not open answers 403 with a page
saying so.

Modules: ``i18n`` (the zh-CN and English strings), ``live`` (the event bus
and the SSE stream), ``views`` (pages and actions), ``presence`` (away after
the grace time without a heartbeat), ``chats`` (the webchat's live chats), ``canned`` (canned replies: rendering,
the YAML seed, the ``/api/v1/canned-replies`` API).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

CONSOLE: web.AppKey[Any] = web.AppKey("console")


def setup(app: web.Application, pipeline: Any) -> None:
    """Routes, the live bus (nudged by the pipeline's ``after_commit``), the presence sweeper, the canned seed."""
    from gateway.console import canned, chats, views

    views.setup(app, pipeline)
    chats.setup(app)
    canned.setup(app)
