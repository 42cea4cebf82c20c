"""Helpers shared by the webhook connectors of signed-JSON platforms
(WhatsApp Cloud API, Messenger/Instagram, LINE): HMAC signature checks in
constant time and case-insensitive header lookup in a ``--context`` dict.
Pure (bodies are read by :func:`connectors.http.read_body`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any, Mapping


def header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    """A header of a plain dict (``--context``'s ``headers``), case-insensitive."""
    if not headers:
        return None
    lname = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == lname:
            return value if isinstance(value, str) else None
    return None


def hub_signature_ok(body: bytes, signature: str | None, app_secret: str | None) -> bool:
    """Meta's ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``
    keyed with the app secret; constant-time; no secret matches nothing."""
    if not signature or not app_secret or not signature.startswith("sha256="):
        return False
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature[len("sha256="):].strip().lower().encode(), expected.encode())


def line_signature_ok(body: bytes, signature: str | None, channel_secret: str | None) -> bool:
    """LINE's ``X-Line-Signature``: base64 of HMAC-SHA256 of the body keyed
    with the channel secret; constant-time; no secret matches nothing."""
    if not signature or not channel_secret:
        return False
    expected = base64.b64encode(hmac.new(channel_secret.encode(), body, hashlib.sha256).digest())
    return hmac.compare_digest(signature.strip().encode(), expected)


def secret_equal(given: str | None, expected: str | None) -> bool:
    """A shared secret (the webhook verify token) compared in constant time."""
    return bool(given and expected) and hmac.compare_digest(given.encode(), expected.encode())
