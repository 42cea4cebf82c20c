"""Bench figure: the cost of opening a safe-mode callback, in-process.

``wechat_callback_aes`` times what the webhook does before it can journal a
safe-mode (AES) callback and what parse does again on it: the ``signature``
check, the ``msg_signature`` check, AES-CBC decryption (wechatpy), the
safe XML parse of envelope and message, and the mapping to an Inbound. The
raw baseline parses the same plain XML with ``xml.etree`` only, so the ratio
says what security and normalization cost per message.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import Callable

from wechatpy.crypto import WeChatCrypto
from wechatpy.utils import WeChatSigner

from connectors.wechat.parse import parse

_APPID = "wxbenchapp000001"
_TOKEN = "bench-token"
_AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"  # wechatpy's public test key
_TS, _NONCE = "1700000000", "123456789"
_XML = (
    "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[oBenchOpenid000001]]></FromUserName>"
    "<CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>"
    "<Content><![CDATA[您好，我的订单 20240101-0001 还没有发货，请帮忙查一下]]></Content><MsgId>7300000000000000001</MsgId></xml>"
)


def _sign(*parts: str) -> str:
    signer = WeChatSigner()
    signer.add_data(*parts)
    return signer.signature


def _rate(fn: Callable[[], object], budget_s: float) -> tuple[float, int]:
    """Calls per second of ``fn`` over about ``budget_s`` seconds (after a warm-up)."""
    for _ in range(50):
        fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget_s:
        for _ in range(100):
            fn()
        n += 100
    return n / elapsed, n


def figures() -> dict[str, dict]:
    body = WeChatCrypto(_TOKEN, _AES_KEY, _APPID).encrypt_message(_XML, _NONCE, _TS).encode()
    msg_signature = ET.fromstring(body).findtext("MsgSignature") or ""
    context = {
        "token": _TOKEN,
        "encoding_aes_key": _AES_KEY,
        "appid": _APPID,
        "query": {"signature": _sign(_TOKEN, _TS, _NONCE), "timestamp": _TS, "nonce": _NONCE, "msg_signature": msg_signature},
    }
    plain = _XML.encode()
    assert parse(body, context)[0].text  # the bench measures a working path

    value, n = _rate(lambda: parse(body, context), 4.0)
    baseline, n_base = _rate(lambda: ET.fromstring(plain), 2.0)
    return {
        "wechat_parse_aes": {
            "value": round(value, 1),
            "unit": "msg/s",
            "baseline": round(baseline, 1),
            "baseline_label": "xml.etree.ElementTree.fromstring of the same plain XML",
            "ratio": round(value / baseline, 4),
            "detail": {
                "steps": "signature + msg_signature (sha1) + AES-256-CBC decrypt (wechatpy) + safe XML x2 + Inbound",
                "iterations": n,
                "baseline_iterations": n_base,
                "body_bytes": len(body),
                "us_per_msg": round(1e6 / value, 1),
            },
        }
    }


if __name__ == "__main__":
    import json

    print(json.dumps(figures(), indent=2))
