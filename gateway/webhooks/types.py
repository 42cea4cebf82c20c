"""The JSON shapes of ``/api/v1/webhooks`` (decoded and encoded through
these Structs; the OpenAPI document is generated from them)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

Name = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="lowercase letters, digits, - and _")]
Url = Annotated[str, Meta(pattern=r"^https?://", max_length=2000)]
Secret = Annotated[str, Meta(max_length=2000, description="whsec_ + base64; two lines during a rotation")]
Events = Annotated[list[Annotated[str, Meta(max_length=100)]], Meta(max_length=100,
                                                                    description="event types or prefixes; empty: all")]


class WebhookEndpoint(msgspec.Struct, omit_defaults=True):
    name: str
    url: str
    events: list[str]
    allow_private: bool
    enabled: bool
    #: ``config`` (edited in the configuration), ``api``, or ``desk`` (a help desk's sync, ``desk:<name>``)
    source: str
    failures: int
    queued: int
    dead: int
    description: str | None = None
    #: why it is disabled (a 410 from the receiver, or an API call)
    disabled_reason: str | None = None
    #: the circuit breaker holds its deliveries until then
    paused_until: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    #: a generated secret, in the creation answer only
    secret: str | None = None


class WebhookEndpointList(msgspec.Struct):
    items: list[WebhookEndpoint]
    #: the event catalogue
    events: list[str]


class WebhookCreateBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    url: Url
    secret: Secret | None = None
    events: Events | None = None
    allow_private: bool = False
    enabled: bool = True
    description: Annotated[str, Meta(max_length=500)] | None = None


class WebhookPatchBody(msgspec.Struct, forbid_unknown_fields=True):
    url: Url | None = None
    secret: Secret | None = None
    events: Events | None = None
    allow_private: bool | None = None
    enabled: bool | None = None
    description: Annotated[str, Meta(max_length=500)] | None = None


class WebhookDelivery(msgspec.Struct):
    seq: int
    event_id: str
    type: str
    attempt: int
    at: str | None
    #: delivered | retrying | dead | gone
    outcome: str
    status_code: int | None
    latency_ms: int | None
    error: str | None


class WebhookDeliveryPage(msgspec.Struct):
    items: list[WebhookDelivery]


class WebhookDeadLetter(msgspec.Struct):
    event_id: str
    type: str
    ticket_id: str | None
    attempts: int
    queued_at: str | None
    dead_at: str | None
    error: str | None


class WebhookDeadPage(msgspec.Struct):
    items: list[WebhookDeadLetter]


class WebhookListQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class WebhookReplayBody(msgspec.Struct, forbid_unknown_fields=True):
    #: dead letters of events queued since then
    since: datetime | None = None
    #: this event (also one delivered before: sent again with the same webhook-id)
    id: Annotated[str, Meta(max_length=100)] | None = None


class WebhookReplayResult(msgspec.Struct):
    requeued: int
