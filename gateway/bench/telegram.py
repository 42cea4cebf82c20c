"""``omnigate bench`` figure of the Telegram channel: CPU cost of one webhook update.

Measures in process, per update, what omnigate does with a webhook body: the
constant-time secret check, then the pure parser down to an Inbound (JSON
decode, idempotency key, sender, text, attachments), against the raw floor
of ``json.loads`` of the same body. No network and no journal: those are
measured by the gateway's own figures.
"""

from __future__ import annotations

import json
import time
from typing import Callable

from connectors.telegram.client import secret_matches
from connectors.telegram.parse import parse

SECONDS_PER_SIDE = 2.0  # two sides plus warm-up stay far below the 15 s budget
SECRET = "bench-secret-token_0123456789"
CONTEXT = {"account": "1111111"}
#: A private-chat text update shaped like https://core.telegram.org/bots/api#update
BODY = json.dumps(
    {
        "update_id": 700000001,
        "message": {
            "message_id": 4711,
            "from": {
                "id": 111111,
                "is_bot": False,
                "first_name": "Test Firstname",
                "last_name": "Test Lastname",
                "username": "Testusername",
                "language_code": "en",
            },
            "chat": {
                "id": 111111,
                "first_name": "Test Firstname",
                "last_name": "Test Lastname",
                "username": "Testusername",
                "type": "private",
            },
            "date": 1700000000,
            "text": "Hello, my order 4711 has not arrived yet. Could you check where it is?",
        },
    }
).encode()


def _handle() -> None:
    if not secret_matches(SECRET, SECRET):
        raise AssertionError("secret check failed")
    parse(BODY, CONTEXT)


def _baseline() -> None:
    json.loads(BODY)


def _rate(fn: Callable[[], None], seconds: float) -> float:
    """Calls per second over about ``seconds`` (the clock is read once per batch)."""
    calls, batch = 0, 500
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls / elapsed


def figures() -> dict[str, dict]:
    _rate(_handle, 0.2)  # warm-up: imports, caches
    value = _rate(_handle, SECONDS_PER_SIDE)
    baseline = _rate(_baseline, SECONDS_PER_SIDE)
    return {
        "telegram_webhook_parse": {
            "value": round(value),
            "unit": "msg/s",
            "baseline": round(baseline),
            "baseline_label": "json.loads of the same body",
            "ratio": round(value / baseline, 3),
            "detail": f"secret check + parse to Inbound of a {len(BODY)}-byte private text update, one core, in process",
        }
    }
