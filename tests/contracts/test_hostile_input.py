"""Hostile input on the API channel and the REST API: every refusal is a 4xx
problem+json naming the field at fault, and nothing is journaled."""

from __future__ import annotations

import json

import pytest

from tests.gateway.conftest import AUTH

MESSAGE = {"external_id": "h-1", "sender": {"kind": "email", "value": "li@example.cn"}, "text": "hi"}


async def _journal(client) -> list[dict]:
    resp = await client.get("/api/v1/journal", headers=AUTH)
    assert resp.status == 200
    return (await resp.json())["items"]


@pytest.mark.parametrize("body, field", [
    (b'{"external_id": "a", "external_id": "b", "sender": {"kind": "email", "value": "li@example.cn"}, "text": "t"}',
     "$.external_id"),
    (b'{"external_id": "a", "sender": {"kind": "email", "kind": "phone", "value": "li@example.cn"}, "text": "t"}',
     "$.sender.kind"),
    (b'{"external_id": "a", "sender": {"kind": "email", "value": "li@example.cn"}, "text": "t", "text": "u"}',
     "$.text"),
    (b'{"external_id": "a", "sender": {"kind": "email", "value": "li@example.cn"}, "text": "t", "attachments": '
     b'[{"name": "a", "content_type": "text/plain", "data_base64": "", "name": "b"}]}', "$.attachments[0].name"),
    # an escaped key is the same key
    (b'{"external_id": "a", "\\u0065xternal_id": "b", "sender": {"kind": "email", "value": "li@example.cn"}, '
     b'"text": "t"}', "$.external_id"),
])
async def test_a_key_given_twice_is_400_naming_it_and_nothing_is_journaled(gw, body, field) -> None:
    client, app = gw
    resp = await client.post("/channels/api/messages", data=body,
                             headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["field"] == field and "more than once" in problem["detail"]
    assert await _journal(client) == []


async def test_the_same_key_in_different_objects_is_not_a_duplicate(gw) -> None:
    client, app = gw
    body = {**MESSAGE, "attachments": [{"name": "a.txt", "content_type": "text/plain", "data_base64": "aGk="},
                                       {"name": "b.txt", "content_type": "text/plain", "data_base64": "aGk="}],
            "subject": "name"}
    resp = await client.post("/channels/api/messages", json=body, headers=AUTH)
    assert resp.status == 202, await resp.text()


@pytest.mark.parametrize("external_id, why", [("x" * 1025, "longer than 1024"), ("a\u0000b", "control"),
                                              ("line\nbreak", "control")])
async def test_an_unusable_external_id_is_400_naming_it(gw, external_id, why) -> None:
    client, app = gw
    resp = await client.post("/channels/api/messages", json={**MESSAGE, "external_id": external_id}, headers=AUTH)
    assert resp.status == 400, await resp.text()
    problem = await resp.json()
    assert problem["field"] == "$.external_id" and why in problem["detail"]
    assert await _journal(client) == []


async def test_the_longest_external_id_is_taken(gw) -> None:
    client, app = gw
    resp = await client.post("/channels/api/messages", json={**MESSAGE, "external_id": "x" * 1024}, headers=AUTH)
    assert resp.status == 202, await resp.text()


async def test_a_rest_body_with_a_key_given_twice_is_400_naming_it_and_changes_nothing(gw) -> None:
    client, app = gw
    resp = await client.post("/channels/api/messages", json=MESSAGE, headers=AUTH)
    assert resp.status == 202
    from tests.gateway.conftest import drain

    await drain(app)
    (ticket,) = (await (await client.get("/api/v1/tickets", headers=AUTH)).json())["items"]
    resp = await client.patch(f"/api/v1/tickets/{ticket['id']}", data=b'{"priority": "high", "priority": "low"}',
                              headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["field"] == "$.priority"
    after = await (await client.get(f"/api/v1/tickets/{ticket['id']}", headers=AUTH)).json()
    assert after["priority"] == ticket["priority"]
    # the same in a nested object of a free-form body
    contact = ticket["contact_id"]
    resp = await client.patch(f"/api/v1/contacts/{contact}", data=json.dumps({"attributes": {"a": "1"}})[:-2].encode()
                              + b', "a": "2"}}', headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["field"] == "$.attributes.a"


@pytest.mark.parametrize("path", ["/channels/api/messages", "/api/v1/webhooks", "/api/v1/tokens"])
@pytest.mark.parametrize("body", [b'{"', b"<xml/>", b"", b'"\xff"', b"[" * 10_000 + b"]" * 10_000, b"[1]"])
async def test_a_body_that_is_not_json_is_400_naming_the_whole_body(gw, path, body) -> None:
    client, app = gw
    resp = await client.post(path, data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["field"] == "$"
    assert await _journal(client) == []


def test_the_key_scan_agrees_with_the_full_parse_on_generated_bodies() -> None:
    """duplicate_key's scan of string tokens (the fast path) gives what the
    full object_pairs parse gives, on bodies with nested objects, lists, keys
    repeated within and across objects, escaped quotes and keys, colons and
    quotes inside values, and Chinese text."""
    from connectors.api import parse

    def full(raw: bytes) -> str | None:
        return parse._first_duplicate(json.loads(raw, object_pairs_hook=parse._Pairs), "$")

    rng = __import__("random").Random(11)
    names = ["a", "b", "kind", "name", 'q"uote', "co:lon", "订单", ""]
    values = ['x": "y', "\\", "a\"b", "你好: 世界", "", "}{", "[]"]

    def obj(depth: int) -> str:
        pairs = []
        for _ in range(rng.randint(0, 4)):
            key = json.dumps(rng.choice(names), ensure_ascii=rng.random() < 0.3)
            if rng.random() < 0.1:  # the same key written with an escape
                key = '"\\u0061"' if key == '"a"' else key
            roll = rng.random()
            if depth < 3 and roll < 0.25:
                value = obj(depth + 1)
            elif depth < 3 and roll < 0.4:
                value = "[" + ", ".join(obj(depth + 1) for _ in range(rng.randint(0, 2))) + "]"
            else:
                value = json.dumps(rng.choice(values), ensure_ascii=rng.random() < 0.5)
            pairs.append(f"{key}{' ' * rng.randint(0, 2)}:{' ' * rng.randint(0, 1)}{value}")
        return "{" + ", ".join(pairs) + "}"

    bodies = [obj(0).encode() for _ in range(3000)]
    assert sum(full(b) is not None for b in bodies) > 300  # both answers are well represented
    for body in bodies:
        assert parse.duplicate_key(body) == full(body), body
