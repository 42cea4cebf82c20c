"""Outbound webhooks (issue 13, CONTRACTS.md "Webhooks (outbound)").

- :mod:`.catalogue`: the event types (README, OpenAPI ``webhooks``).
- :mod:`.ssrf`: refuses loopback, link-local and private addresses, also
  after DNS resolution (a guarding aiohttp resolver); redirects are not followed.
- :mod:`.service`: fan-out, claims, Standard Webhooks signing, back-off, the
  circuit breaker, dead letters, retention; ``step()`` for tests on a clock.
- :mod:`.routes`: ``/api/v1/webhooks``; :mod:`.api_reply`: the API channel's
  reply path (``message.outbound`` to the account's ``reply_webhook``).

The store side is ``gateway/store/sqlite_webhooks.py``.
"""
