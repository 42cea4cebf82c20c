"""safexml's own dict builder against xmltodict, the reference it replaced.

``parse_xml`` builds the dict xmltodict's ``parse`` gives with its default
options (what wechatpy and the parsers were written against) with less work
per element; these tests hold the two equal on every WeChat and WeCom payload
of the corpus and the fixtures (envelope and decrypted message alike) and on
crafted and generated documents that reach every rule of that shape
(attributes, repeated elements, mixed text, whitespace, CDATA, entities,
comments, processing instructions), and check that what xmltodict refuses is
refused too.
"""

from __future__ import annotations

import random
from pathlib import Path
from xml.parsers import expat

import pytest
import xmltodict

from connectors.wechat import safexml
from connectors.wechat.envelope import Secrets, decrypt
from connectors.wechat.safexml import UnsafeXml, parse_xml, text_field
from tests.corpus import rows

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def reference(data: bytes) -> object:
    """What the parsers were written against: xmltodict, the ``<xml>`` element's
    children — of the document made readable (``safexml._readable``: a legacy
    encoding, forbidden control characters) when expat refuses it as sent."""
    try:
        return xmltodict.parse(data)["xml"]
    except (expat.ExpatError, LookupError, ValueError):
        return xmltodict.parse(safexml._readable(data))["xml"]


def payloads() -> list[tuple[str, bytes]]:
    """Every WeChat/WeCom XML payload of the corpus and the fixtures, with the
    decrypted message of each envelope whose keys are known."""
    out: list[tuple[str, bytes]] = []
    for row in rows("wechat") + rows("wecom"):
        if row.file.suffix != ".xml":
            continue
        out.append((row.file.name, row.read()))
        meta = row.meta or {}
        if isinstance(meta.get("decrypted_xml"), str):
            out.append((row.file.name + ":decrypted_xml", meta["decrypted_xml"].encode()))
    for channel in ("wechat", "wecom"):
        for path in sorted((FIXTURES / channel).glob("*.xml")):
            out.append((f"{channel}/{path.name}", path.read_bytes()))
    return out


CRAFTED = [
    b"<xml><A><![CDATA[x]]></A><B> 1 </B><C/><D a='1'>t</D><D>u</D><E><F>1</F><F/></E></xml>",
    b"<xml>\n <ToUserName><![CDATA[toUser]]></ToUserName>\n <Encrypt><![CDATA[abc]]></Encrypt>\n</xml>",
    b"<xml><a>x &amp; y &lt; &#20013;</a><b>m<c>1</c>n</b><!-- c --><?pi x?></xml>",
    "<?xml version='1.0' encoding='utf-8'?><xml><a>订单 <![CDATA[ 还没有 ]]> 到</a></xml>".encode(),
    b"<xml a='1' b='2'><k x='1'/><k x='2'>v</k><k>w</k><k/></xml>",
    b"<xml><a>   </a><b><![CDATA[]]></b><c>\r\n</c><d><e><f>deep</f></e><e/></d></xml>",
    b"<xml xmlns:wx='urn:x'><wx:a>ns</wx:a><a wx:b='1'/></xml>",
]


def generated(seed: int, count: int = 300) -> list[bytes]:
    """Random documents mixing every construct the dict's shape has a rule for."""
    rnd = random.Random(seed)
    names = ["a", "b", "c", "MsgId", "Content", "x:y"]
    texts = ["", " ", "t", " t ", "订单", "a &amp; b", "<![CDATA[ c ]]>", "<![CDATA[]]>", "\n", "&#x41;"]

    def element(depth: int) -> str:
        name = rnd.choice(names)
        attrs = "".join(f" {k}='{rnd.choice(['1', '', ' v '])}'" for k in rnd.sample(["p", "q"], rnd.randint(0, 2)))
        if depth > 3 or rnd.random() < 0.3:
            body = rnd.choice(texts)
        else:
            parts = []
            for _ in range(rnd.randint(0, 4)):
                roll = rnd.random()
                parts.append(element(depth + 1) if roll < 0.6 else rnd.choice(texts) if roll < 0.85
                             else rnd.choice(["<!-- note -->", "<?pi data?>"]))
            body = "".join(parts)
        return f"<{name}{attrs}/>" if not body and rnd.random() < 0.5 else f"<{name}{attrs}>{body}</{name}>"

    return [f"<xml>{''.join(element(1) for _ in range(rnd.randint(1, 5)))}</xml>".encode() for _ in range(count)]


@pytest.mark.parametrize("name,data", payloads(), ids=[n for n, _ in payloads()] or None)
def test_payloads_parse_as_xmltodict_parses_them(name: str, data: bytes) -> None:
    assert parse_xml(data) == reference(data)


@pytest.mark.parametrize("data", CRAFTED)
def test_crafted_documents_parse_as_xmltodict_parses_them(data: bytes) -> None:
    assert parse_xml(data) == reference(data)


def test_generated_documents_parse_as_xmltodict_parses_them() -> None:
    docs = generated(11)
    for data in docs:
        assert parse_xml(data) == reference(data), data
    assert sum(b"<![CDATA[" in d for d in docs) > 50 and sum(b"='" in d for d in docs) > 50


def test_the_bench_callbacks_decrypt_to_what_xmltodict_gives() -> None:
    from gateway.bench.ingest import wechat_requests
    from gateway.bench.server import BENCH_CHANNELS

    acct = BENCH_CHANNELS["wechat"]["accounts"]["bench"]
    secrets = Secrets(acct["token"], acct["encoding_aes_key"], acct["appid"])
    request = wechat_requests(1_700_000_000)(7)
    head, body = request.split(b"\r\n\r\n", 1)
    query = dict(p.split("=", 1) for p in head.split(b" ")[1].decode().split("?", 1)[1].split("&"))
    outer = parse_xml(body)
    assert outer == reference(body)
    plain = decrypt("oa", secrets, text_field(outer, "Encrypt") or "", query["msg_signature"], query["timestamp"],
                    query["nonce"])
    assert parse_xml(plain) == reference(plain.encode()) and parse_xml(plain)["MsgId"] == str(10**15 + 7)


@pytest.mark.parametrize("data", [
    b"<xml><a>1</a>",  # not well-formed
    b"<xml><a>&undeclared;</a></xml>",
    b"<xml><a x='1' x='2'/></xml>",
    b"",
])
def test_what_xmltodict_refuses_is_refused(data: bytes) -> None:
    with pytest.raises(expat.ExpatError):
        xmltodict.parse(data)
    with pytest.raises(UnsafeXml):
        parse_xml(data)


def test_a_doctype_is_refused_before_any_entity_is_expanded() -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
            b"<xml><c>&b;</c></xml>")
    with pytest.raises(UnsafeXml, match="DOCTYPE"):
        parse_xml(bomb)


def test_an_accounts_cipher_is_made_once_and_still_checks_every_callback() -> None:
    from connectors.wechat import envelope
    from gateway.bench.ingest import wechat_requests
    from gateway.bench.server import BENCH_CHANNELS

    acct = BENCH_CHANNELS["wechat"]["accounts"]["bench"]
    secrets = Secrets(acct["token"], acct["encoding_aes_key"], acct["appid"])
    make = wechat_requests(1_700_000_000)
    envelope._account_crypto.cache_clear()
    for n in (1, 2, 3):
        head, body = make(n).split(b"\r\n\r\n", 1)
        query = dict(p.split("=", 1) for p in head.split(b" ")[1].decode().split("?", 1)[1].split("&"))
        encrypt = text_field(parse_xml(body), "Encrypt") or ""
        assert parse_xml(decrypt("oa", secrets, encrypt, query["msg_signature"], query["timestamp"],
                                 query["nonce"]))["MsgId"] == str(10**15 + n)
        with pytest.raises(envelope.SignatureMismatch):
            decrypt("oa", secrets, encrypt, "0" * 40, query["timestamp"], query["nonce"])
        other = Secrets(acct["token"], acct["encoding_aes_key"], "wxsomeoneelse0000")
        with pytest.raises(envelope.DecryptionFailed, match="not addressed to appid"):
            decrypt("oa", other, encrypt, query["msg_signature"], query["timestamp"], query["nonce"])
    assert envelope._account_crypto.cache_info().misses == 2  # the bench account and the other one
