"""Test helpers shared by the wechat and wecom tests: a ConnectorContext that
keeps the journal in a list and the state in a dict, and the signing and
encrypting WeChat does on its side of a callback (through wechatpy)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from wechatpy.crypto import WeChatCrypto as OaCrypto
from wechatpy.enterprise.crypto import WeChatCrypto as WorkCrypto
from wechatpy.utils import WeChatSigner

from connectors.wechat.safexml import parse_xml
from tests.connectors.memory import MemoryContext as BaseMemoryContext

AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"  # wechatpy's test key, not a secret
TOKEN = "tok-123456"
TIMESTAMP, NONCE = "1411525903", "461056294"


#: The gateway's clock in these tests: the moment the helpers' requests are signed.
SIGNED_AT = datetime.fromtimestamp(int(TIMESTAMP), timezone.utc)


@dataclass
class MemoryContext(BaseMemoryContext):
    channel: str = "wechat"
    data_dir: str = "/nonexistent"
    now: datetime | None = SIGNED_AT


def sign(*parts: str) -> str:
    signer = WeChatSigner()
    signer.add_data(*parts)
    return signer.signature


def plain_query(token: str = TOKEN, *, timestamp: str = TIMESTAMP, nonce: str = NONCE, **extra: str) -> dict[str, str]:
    """The query WeChat puts on a callback: signature over token, timestamp, nonce."""
    return {"signature": sign(token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce, **extra}


def envelope(flavor: str, xml: str, receive_id: str, token: str = TOKEN, aes_key: str = AES_KEY, *,
             timestamp: str = TIMESTAMP, nonce: str = NONCE) -> tuple[bytes, str]:
    """WeChat's side of safe mode: (envelope body, msg_signature)."""
    crypto = (OaCrypto if flavor == "oa" else WorkCrypto)(token, aes_key, receive_id)
    body = crypto.encrypt_message(xml, nonce, timestamp)
    return body.encode(), parse_xml(body)["MsgSignature"]


def corpus_params(params: list, wecom: bool) -> list:
    """The wechat corpus rows of one connector: WeCom's are the ``_work_`` files."""
    return [p for p in params if p.values[0] is None or ("_work_" in p.values[0].path) == wecom]


def check_corpus_row(row: Any, parse: Any, channel: str, sender_kind: str) -> None:
    """The manifest facts of a row, through the parser and the row's meta context."""
    facts = row.facts()
    (inbound,) = parse(row.read(), row.context)
    assert inbound.channel == channel
    assert inbound.sender.kind == sender_kind
    # account-scoped: "<appid or corp_id>:<user>"
    scope, _, user = inbound.sender.value.rpartition(":")
    assert scope and user == facts["FromUserName"]
    if "MsgId" in facts:
        assert inbound.external_id == facts["MsgId"]
    else:
        assert inbound.external_id == f"{facts['FromUserName']}:{facts['CreateTime']}:{facts.get('Event') or facts['MsgType']}"
    if "Content" in facts:
        assert inbound.text == facts["Content"]
    if facts["MsgType"] == "event":
        assert (inbound.kind, inbound.raw_type) == ("event", facts["Event"])
    elif facts["MsgType"] in ("text", "image", "voice", "video", "shortvideo", "location", "link", "file"):
        assert (inbound.kind, inbound.raw_type) == ("message", facts["MsgType"])
    else:  # an unknown kind: an event carrying its raw type
        assert (inbound.kind, inbound.raw_type) == ("event", facts["MsgType"])
    assert inbound.sent_at is not None and int(inbound.sent_at.timestamp()) == int(facts["CreateTime"])
    assert inbound.defects == []
