"""Helpers shared by the webhook connectors of signed-JSON platforms
(WhatsApp Cloud API, Messenger/Instagram, LINE): HMAC signature checks in
constant time, case-insensitive header lookup in a ``--context`` dict and
the parsers' ``verify`` over it, JSON decoding, the journal key of a body
from its items' ids, and the small readers of untrusted JSON values.
Pure (bodies are read by :func:`connectors.http.read_webhook`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import msgspec

from connectors.base import PayloadRejected

_decoder = msgspec.json.Decoder()


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
    return hmac.compare_digest(_header_bytes(signature[len("sha256="):].strip().lower()), expected.encode())


def line_signature_ok(body: bytes, signature: str | None, channel_secret: str | None) -> bool:
    """LINE's ``X-Line-Signature``: base64 of HMAC-SHA256 of the body keyed
    with the channel secret; constant-time; no secret matches nothing."""
    if not signature or not channel_secret:
        return False
    expected = base64.b64encode(hmac.new(channel_secret.encode(), body, hashlib.sha256).digest())
    return hmac.compare_digest(_header_bytes(signature.strip()), expected)


def secret_equal(given: str | None, expected: str | None) -> bool:
    """A shared secret (the webhook verify token) compared in constant time."""
    return bool(given and expected) and hmac.compare_digest(_header_bytes(given), expected.encode())


def _header_bytes(value: str) -> bytes:
    """A header's value as the bytes it was: bytes that are not UTF-8 arrive
    as surrogate escapes, which a plain ``encode()`` refuses (a 500)."""
    return value.encode("utf-8", "surrogateescape")


def verify_context(raw: bytes, context: Mapping[str, Any], *, signature_header: str, secret_field: str,
                   signature_ok: Callable[[bytes, str | None, str | None], bool]) -> None:
    """A parser's ``verify``: when the context carries a live request's
    ``headers`` and the secret (``context[secret_field]``), the signature in
    ``signature_header`` must verify over the exact bytes;
    :class:`PayloadRejected` naming the header when it is missing or wrong."""
    headers, secret = context.get("headers"), context.get(secret_field)
    if not headers or not secret:
        return
    signature = header(headers, signature_header)
    if signature is None:
        raise PayloadRejected(f"{signature_header} header missing")
    if not signature_ok(raw, signature, str(secret)):
        raise PayloadRejected(f"{signature_header} does not match the body (wrong {secret_field} or altered body)")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]", re.I)


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


def decode_json(raw: bytes) -> Any:
    """The body's JSON value; :class:`PayloadRejected` when it is not JSON.

    A string escape of half an emoji (``"\\ud83d"`` alone: text a JavaScript
    sender cut in the middle of a UTF-16 pair, which ``JSON.stringify``
    writes this way) is still JSON: msgspec refuses it, so such a body is
    read by the stdlib and each lone half becomes U+FFFD."""
    try:
        return _decoder.decode(raw)
    except RecursionError:  # [[[[…]]]] thousands deep: msgspec's depth guard
        raise PayloadRejected("not JSON this gateway reads: nested too deeply") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        if _SURROGATE_ESCAPE.search(raw):
            try:
                return _without_lone_surrogates(json.loads(raw))
            except (ValueError, RecursionError):
                pass
        raise PayloadRejected(f"not JSON: {exc}") from None


def body_key(ids: list[str], raw: bytes) -> str:
    """The journal's idempotency key of a body: its one item's id, or a hash
    of all its items' ids (platforms redeliver the same items), or of the
    bytes when it has none."""
    if len(ids) == 1 and len(ids[0]) <= 200:
        return ids[0]
    return "sha256:" + hashlib.sha256("\n".join(ids).encode() if ids else raw).hexdigest()


def dicts(value: Any) -> list[dict[str, Any]]:
    """The objects of a JSON list (anything else: none)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def as_dict(value: Any) -> dict[str, Any]:
    """A JSON object, or an empty one."""
    return value if isinstance(value, dict) else {}


def id_str(value: Any) -> str | None:
    """A non-empty string, or an integer as its string (ids arrive as both); else None."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def epoch_ms(value: Any) -> datetime | None:
    """A Unix time in milliseconds as an aware UTC datetime; None when it is not one."""
    try:
        return datetime.fromtimestamp(int(value) / 1000, timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
