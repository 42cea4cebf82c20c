"""Callback signatures and AES envelopes of WeChat and WeCom, through wechatpy.

Both platforms sign callbacks with ``sha1(sort(token, timestamp, nonce[, Encrypt]))``
and, in safe mode, wrap the message in ``<Encrypt>`` (AES-256-CBC, the key is
the account's EncodingAESKey, the plaintext ends with the receiver's appid or
corp_id). The Official Account and WeCom flavours differ only in wechatpy's
crypto class; everything else — which parameters to use, how a failure is
named — lives here once, for ``parse`` (replays) and the live webhooks.

Failures are :class:`PayloadRejected` subclasses whose message says what was
wrong and never contains a secret.

An account's crypto objects are made once (:func:`_crypto`, keyed by its
:class:`Secrets`): wechatpy's ``decrypt_message`` built a new AES cipher for
every callback, a third of the decryption's cost, paid at intake and again
by ``parse``.
"""

from __future__ import annotations

import binascii
import functools
import hmac
import struct
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from wechatpy.crypto import PrpCrypto as OaPrp, WeChatCrypto as OaCrypto
from wechatpy.enterprise.crypto import PrpCrypto as WorkPrp, WeChatCrypto as WorkCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.enterprise.exceptions import InvalidCorpIdException
from wechatpy.utils import WeChatSigner

from connectors.base import PayloadRejected
from connectors.wechat.safexml import MAX_XML_BYTES, parse_xml, text_field

Flavor = Literal["oa", "wecom"]
_CRYPTO = {"oa": OaCrypto, "wecom": WorkCrypto}
_PRP = {"oa": OaPrp, "wecom": WorkPrp}
_RECEIVER = {"oa": "appid", "wecom": "corp_id"}


class SignatureMismatch(PayloadRejected):
    """The signature is missing or does not match: the payload is not WeChat's."""


class DecryptionFailed(PayloadRejected):
    """The signature was valid but the ``<Encrypt>`` element cannot be opened."""


@dataclass(frozen=True, slots=True)
class Secrets:
    """What an account needs to check and open its callbacks."""

    token: str | None
    encoding_aes_key: str | None
    receive_id: str | None  # appid (Official Account) or corp_id (WeCom)

    @classmethod
    def from_context(cls, context: Mapping[str, Any], flavor: Flavor) -> Secrets:
        return cls(
            token=context.get("token") or None,
            encoding_aes_key=context.get("encoding_aes_key") or None,
            receive_id=context.get(_RECEIVER[flavor]) or None,
        )


@dataclass(frozen=True, slots=True)
class Opened:
    """A callback after its checks: the message fields, and whether it came encrypted."""

    fields: dict[str, Any]
    encrypted: bool


def check_plain(token: str, query: Mapping[str, Any]) -> None:
    """Check ``signature`` over (token, timestamp, nonce), sent with every OA callback."""
    signature, timestamp, nonce = (str(query.get(k) or "") for k in ("signature", "timestamp", "nonce"))
    if not (signature and timestamp and nonce):
        raise SignatureMismatch("signature, timestamp or nonce missing from the query")
    if not _signed(signature, token, timestamp, nonce):
        raise SignatureMismatch("signature does not match the account's token")


def _signed(signature: str, *parts: str) -> bool:
    """``signature`` is WeChat's SHA-1 over ``parts`` (sorted, joined), compared
    in constant time (wechatpy's own checks compare with ``!=``)."""
    signer = WeChatSigner()
    signer.add_data(*parts)
    return hmac.compare_digest(signer.signature.encode(), signature.encode("utf-8", "surrogateescape"))


@dataclass(frozen=True, slots=True)
class _Crypto:
    """An account's wechatpy crypto (URL verification) and AES-CBC cipher (callbacks)."""

    crypto: Any
    prp: Any


def _crypto(flavor: Flavor, secrets: Secrets) -> _Crypto:
    if not (secrets.token and secrets.encoding_aes_key and secrets.receive_id):
        raise DecryptionFailed(
            f"encrypted payload, but token, encoding_aes_key and {_RECEIVER[flavor]} are not all known"
        )
    return _account_crypto(flavor, secrets)


@functools.lru_cache(maxsize=256)
def _account_crypto(flavor: Flavor, secrets: Secrets) -> _Crypto:
    """Made once per account (the cipher holds no per-message state: each
    decryption opens its own context); a bad key is not cached, it raises."""
    try:
        crypto = _CRYPTO[flavor](secrets.token, secrets.encoding_aes_key, secrets.receive_id)
    except (binascii.Error, AssertionError, ValueError):
        raise DecryptionFailed("encoding_aes_key is not a 43-character base64 key") from None
    return _Crypto(crypto, _PRP[flavor](crypto.key))


def decrypt(
    flavor: Flavor, secrets: Secrets, encrypt: str, msg_signature: str, timestamp: str, nonce: str
) -> str:
    """Verify ``msg_signature`` over the ciphertext, then decrypt it — what
    wechatpy's ``decrypt_message`` does, with the account's cipher made once."""
    opener = _crypto(flavor, secrets)
    if not _signed(msg_signature, secrets.token, timestamp, nonce, encrypt):
        raise SignatureMismatch("msg_signature does not match the encrypted payload")
    try:
        return opener.prp.decrypt(encrypt, secrets.receive_id)
    except (InvalidAppIdException, InvalidCorpIdException):
        raise DecryptionFailed(
            f"decrypted payload is not addressed to {_RECEIVER[flavor]} {secrets.receive_id}"
            " (wrong EncodingAESKey, or another account's payload)"
        ) from None
    except binascii.Error:
        raise DecryptionFailed("Encrypt is not valid base64") from None
    except UnicodeDecodeError:
        raise DecryptionFailed("decrypted bytes are not UTF-8 (wrong EncodingAESKey?)") from None
    except (ValueError, struct.error, IndexError) as exc:
        # cryptography's block-length error, or a plaintext too short for its length prefix
        raise DecryptionFailed(f"AES-CBC decryption failed: {exc or type(exc).__name__}") from None


def verify_echo(flavor: Flavor, secrets: Secrets, query: Mapping[str, Any]) -> str:
    """WeCom's URL verification: check ``msg_signature`` over echostr and decrypt it."""
    crypto = _crypto(flavor, secrets).crypto
    args = [str(query.get(k) or "") for k in ("msg_signature", "timestamp", "nonce", "echostr")]
    if not all(args):
        raise SignatureMismatch("msg_signature, timestamp, nonce or echostr missing from the query")
    try:
        return crypto.check_signature(*args)
    except InvalidSignatureException:
        raise SignatureMismatch("msg_signature does not match echostr") from None
    except (InvalidAppIdException, InvalidCorpIdException, binascii.Error, UnicodeDecodeError, ValueError, struct.error,
            IndexError):  # IndexError: an echostr that decodes to no bytes at all ("%%%")
        raise DecryptionFailed("echostr cannot be decrypted with this account's EncodingAESKey") from None


def _envelope_params(fields: Mapping[str, Any], query: Mapping[str, Any]) -> tuple[str, str, str]:
    """msg_signature, timestamp, nonce: from the query, else inline in the
    envelope (a passive-reply envelope carries MsgSignature/TimeStamp/Nonce)."""
    msg_signature = str(query.get("msg_signature") or text_field(fields, "MsgSignature") or "")
    timestamp = str(query.get("timestamp") or text_field(fields, "TimeStamp") or "")
    nonce = str(query.get("nonce") or text_field(fields, "Nonce") or "")
    if not (msg_signature and timestamp and nonce):
        raise SignatureMismatch("encrypted payload without msg_signature, timestamp and nonce")
    return msg_signature, timestamp, nonce


def open_callback(
    raw: bytes, context: Mapping[str, Any], flavor: Flavor, *, max_bytes: int = MAX_XML_BYTES
) -> Opened:
    """Safe-parse a callback, check what can be checked, decrypt an envelope.

    - an envelope (``<Encrypt>``) must verify and decrypt, else it is refused;
    - a plain payload is checked when the context has the token and the query
      a ``signature`` (Official Account); without secrets it is taken as is.
    """
    secrets = Secrets.from_context(context, flavor)
    query: Mapping[str, Any] = context.get("query") or {}
    if secrets.token and query.get("signature"):
        check_plain(secrets.token, query)  # before parsing: a forgery costs one sha1
    fields = parse_xml(raw, max_bytes=max_bytes)
    encrypt = text_field(fields, "Encrypt")
    if encrypt is None:
        return Opened(fields, encrypted=False)
    plain = decrypt(flavor, secrets, encrypt, *_envelope_params(fields, query))
    return Opened(parse_xml(plain, max_bytes=max_bytes), encrypted=True)
