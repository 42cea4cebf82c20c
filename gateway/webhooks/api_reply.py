"""The API channel's reply path: a reply on an API-channel ticket is posted
to the webhook endpoint its account names (``api: {reply_webhook: NAME}``,
or ``api: {accounts: {ACCOUNT: {reply_webhook: NAME}}}``) as a signed
``message.outbound`` event. It runs as the ``api`` channel's sender in the
reply dispatcher (gateway/outbox.py), so retries, back-off and the delivery
status on the timeline entry are the dispatcher's: a 2xx is ``sent``, 410
disables the endpoint and fails the reply, anything else is retried.
"""

from __future__ import annotations

from typing import Any, Mapping

import msgspec

from connectors.base import SendError, SendResult
from routing.model import Outbound


class ApiReplySender:
    def __init__(self, service: Any, section: Mapping[str, Any]) -> None:
        self.service = service
        self.section = dict(section or {})

    def endpoint_name(self, account: str) -> str | None:
        accounts = self.section.get("accounts")
        if isinstance(accounts, dict) and isinstance(accounts.get(account), dict):
            name = accounts[account].get("reply_webhook")
            if name:
                return str(name)
        name = self.section.get("reply_webhook")
        return str(name) if name else None

    def can_send(self, outbound: Outbound, facts: Mapping[str, Any]) -> str | None:
        """A reply on an API ticket needs an endpoint to go to (409 at the API otherwise)."""
        if self.endpoint_name(outbound.account) is None:
            return (f"the api channel cannot send replies without a webhook: set api.reply_webhook (or "
                    f"api.accounts.{outbound.account}.reply_webhook) to an endpoint under webhooks.endpoints")
        return None

    async def send(self, outbound: Outbound) -> SendResult:
        name = self.endpoint_name(outbound.account)
        if name is None:
            raise SendError(f"API account {outbound.account!r} names no reply_webhook: set api.reply_webhook "
                            "(or api.accounts.<account>.reply_webhook) to an endpoint under webhooks.endpoints")
        store = self.service.store
        endpoint = await store.webhook_endpoint(name)
        if endpoint is None:
            raise SendError(f"reply_webhook {name!r} is no webhook endpoint")
        if not endpoint["enabled"]:
            raise SendError(f"webhook endpoint {name!r} is disabled: {endpoint.get('disabled_reason') or ''}".strip(),
                            retryable=True, retry_after=60)
        message = msgspec.to_builtins(outbound)
        for a in message.get("attachments", []):
            a.pop("data", None)
        body_data = {"message": message, "ticket_id": outbound.ticket_id}
        from gateway.webhooks.service import event_body

        now = self.service.clock()
        body = event_body("message.outbound", int(now.timestamp() * 1000), body_data)
        result = await self.service.post(endpoint, outbound.id, body)
        if result.outcome == "delivered":
            return SendResult(external_id=outbound.id)
        if result.outcome == "gone":
            await store.webhook_set_enabled(name, False, "the receiver answered 410 Gone to a message.outbound", now)
            raise SendError(f"webhook {name!r} answered 410 Gone (endpoint disabled)", code="410")
        raise SendError(f"webhook {name!r}: {result.error}", retryable=True, retry_after=result.retry_after,
                        code=str(result.code) if result.code else None)
