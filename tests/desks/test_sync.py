"""Zammad, Zendesk and Freshdesk, each against its stand-in: a WeChat message
creates one desk ticket, a follow-up becomes a comment, the agent's reply in
the desk reaches the WeChat stand-in (push nudge, and poll), statuses mirror
both ways, a create that timed out is not made twice, 429 + Retry-After is
honoured, a forged nudge is refused, a failed delivery is written back."""

from __future__ import annotations

import asyncio

import pytest

from gateway import keys
from gateway.desks.service import SYNC, endpoint_name
from tests.desks.conftest import WORDS, Rig, sign_nudge, wait_for
from tests.gateway.conftest import AUTH

KINDS = ["zammad", "zendesk", "freshdesk"]


def customer_comments(rig: Rig, desk_id: int) -> list[str]:
    rows = rig.desk.comments.get(desk_id, [])
    if rig.kind == "zammad":
        return [a["body"] for a in rows if a["sender"] == "Customer" and not a["internal"]]
    if rig.kind == "zendesk":
        requester = rig.desk.tickets[desk_id]["requester_id"]
        return [c["body"] for c in rows if c["author_id"] == requester and c["public"]]
    return [c["body_text"] for c in rows if c["incoming"] and not c["private"]]


def internal_notes(rig: Rig, desk_id: int) -> list[str]:
    rows = rig.desk.comments.get(desk_id, [])
    key = {"zammad": "internal", "zendesk": "public", "freshdesk": "private"}[rig.kind]
    text = "body_text" if rig.kind == "freshdesk" else "body"
    return [c[text] for c in rows if (not c[key] if rig.kind == "zendesk" else c[key])]


@pytest.mark.parametrize("kind", KINDS)
async def test_round_trip_with_push(make_rig, kind: str) -> None:
    rig = await make_rig(kind)
    # a WeChat message creates one desk ticket, requester and channel mapped
    await rig.wechat_message("我的订单还没到", 9001)
    desk_t = await rig.desk_ticket()
    ticket = await rig.only_ticket()
    desk_id = desk_t["id"]
    assert await wait_for(lambda: rig.store.desk_link("hd", ticket["id"])) == str(desk_id)
    requester = rig.desk.users[desk_t["customer_id"] if kind == "zammad" else desk_t["requester_id"]]
    assert requester["email"] == f"wechat_openid-{'wxdeskofficial01'}_fromuser@omnigate.invalid"
    if kind == "freshdesk":
        assert desk_t["custom_fields"]["cf_omnigate_ticket"] == ticket["id"]
        assert "omnigate-wechat" in desk_t["tags"]
    elif kind == "zendesk":
        assert desk_t["external_id"] == ticket["id"] and "omnigate_wechat" in desk_t["tags"]
    else:
        assert f"omnigate-{ticket['id']}" in desk_t["tags"] and "channel-wechat" in desk_t["tags"]

    # a follow-up becomes a public comment from the requester
    await rig.wechat_message("能帮我查一下吗", 9002)
    if kind == "freshdesk":  # the first message is the ticket's description, not a conversation
        assert desk_t["description_text"] == "我的订单还没到"
        await wait_for(lambda: customer_comments(rig, desk_id), lambda c: c == ["能帮我查一下吗"])
    else:
        await wait_for(lambda: customer_comments(rig, desk_id), lambda c: c == ["我的订单还没到", "能帮我查一下吗"])

    # the agent's public reply in the desk reaches the customer on WeChat (a nudge)
    rig.desk.agent_reply(desk_id, "已为您加急处理")
    rig.desk.agent_reply(desk_id, "internal: check the warehouse", public=False)
    resp = await rig.nudge()
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["relayed"] == 1
    await wait_for(lambda: rig.wechat.sent)
    assert [s.body for s in rig.wechat.sent] == [
        {"touser": "fromUser", "msgtype": "text", "text": {"content": "已为您加急处理"}}]
    # a repeated nudge changes nothing; omnigate's own comments are never echoed back
    assert (await (await rig.nudge()).json())["relayed"] == 0
    await rig.app[SYNC].sync("hd")
    assert len(rig.wechat.sent) == 1

    # omnigate → desk: a status set in omnigate is mirrored
    await rig.store.set_status(ticket["id"], "pending", rig.clock(), actor="api")
    await wait_for(lambda: rig.status_word(rig.desk.tickets[desk_id]), lambda s: s == WORDS[kind]["pending"])
    # desk → omnigate: solved in the desk solves the omnigate ticket (and is not mirrored back again)
    rig.desk.agent_status(desk_id, str(WORDS[kind]["solved"]) if kind == "freshdesk" else WORDS[kind]["solved"])
    assert (await rig.nudge()).status == 200
    t = await rig.store.get_ticket(ticket["id"])
    assert t.status == "solved"
    await rig.app[SYNC].sync("hd")
    assert rig.status_word(rig.desk.tickets[desk_id]) == WORDS[kind]["solved"]

    # a forged nudge is refused and changes nothing
    rig.desk.agent_reply(desk_id, "forged?")
    for headers in ({}, {"X-Hub-Signature": "sha1=00", "X-Zendesk-Webhook-Signature": "AAAA",
                         "X-Zendesk-Webhook-Signature-Timestamp": "2026-12-01T03:00:00Z",
                         "X-Omnigate-Token": "wrong"}):
        forged = await rig.nudge(headers=headers)
        assert forged.status == 401
        assert forged.content_type == "application/problem+json"
    assert len(rig.wechat.sent) == 1
    # exactly one desk ticket throughout
    assert len(rig.desk.tickets) == 1
    # the desk's delivery queue is visible (and replayable) as the endpoint desk:hd, but not deletable
    listed = await (await rig.client.get("/api/v1/webhooks", headers=AUTH)).json()
    (ep,) = [e for e in listed["items"] if e["name"] == "desk:hd"]
    assert ep["source"] == "desk" and ep["dead"] == 0
    assert (await rig.client.delete("/api/v1/webhooks/desk:hd", headers=AUTH)).status == 409


@pytest.mark.parametrize("kind", KINDS)
async def test_a_create_that_timed_out_is_not_made_twice_and_429_is_honoured(make_rig, kind: str) -> None:
    rig = await make_rig(kind)
    rig.desk.stall_creates = 1  # the desk makes the ticket but its answer never comes (timeout 0.5 s)
    await rig.wechat_message("第一条消息", 9101)
    store, ep = rig.store, endpoint_name("hd")
    log = await wait_for(lambda: store.webhook_deliveries(ep), lambda rows: any(r["outcome"] != "delivered"
                                                                                for r in rows))
    assert "no answer within" in log[0]["error"]
    assert len(rig.desk.tickets) == 1 and await store.desk_link("hd", (await rig.only_ticket())["id"]) is None
    # the retry comes after the back-off (on the clock); the desk then rate-limits it once
    rig.desk.rate_limit(1, retry_after=120)
    rig.clock.advance(minutes=5)
    await wait_for(lambda: store.webhook_deliveries(ep),
                   lambda rows: any(r["status_code"] == 429 for r in rows))
    due = await store.webhook_next_due(rig.clock())
    assert (due - rig.clock()).total_seconds() >= 119  # Retry-After: 120, not the back-off
    rig.clock.advance(seconds=121)
    ticket = await rig.only_ticket()
    await wait_for(lambda: store.desk_link("hd", ticket["id"]))
    assert len(rig.desk.tickets) == 1  # found by the lookup before create, not made again
    (desk_id,) = rig.desk.tickets
    assert await store.desk_link("hd", ticket["id"]) == str(desk_id)
    await rig.wechat_message("第二条消息", 9102)
    await wait_for(lambda: customer_comments(rig, desk_id), lambda c: "第二条消息" in c)
    assert len(rig.desk.tickets) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_reply_that_fails_on_wechat_is_written_back_as_an_internal_note(make_rig, kind: str) -> None:
    rig = await make_rig(kind)
    await rig.wechat_message("在吗", 9201)
    desk_id = (await rig.desk_ticket())["id"]
    await wait_for(lambda: rig.store.desk_links("hd"))
    rig.wechat.closed_windows.add("fromUser")  # the 48-hour window is closed: WeChat answers 45015
    rig.desk.agent_reply(desk_id, "抱歉久等了")
    assert (await rig.nudge()).status == 200
    notes = await wait_for(lambda: internal_notes(rig, desk_id), lambda n: any("could not deliver" in x for x in n))
    assert any("45015" in n or "48-hour" in n for n in notes)
    assert rig.wechat.sent == []
    # the note is omnigate's own: never sent to the customer
    await rig.app[SYNC].sync("hd")
    assert rig.wechat.sent == []


async def test_poll_mode_reaches_the_same_state_as_push(make_rig) -> None:
    rig = await make_rig("zendesk", mode="poll", poll_interval="60s", webhook_secret=None)
    await rig.wechat_message("轮询模式", 9301)
    desk_id = (await rig.desk_ticket())["id"]
    ticket = await rig.only_ticket()
    await wait_for(lambda: rig.store.desk_links("hd"))
    rig.desk.agent_reply(desk_id, "轮询回复")
    rig.clock.advance(seconds=61)
    await wait_for(lambda: rig.wechat.sent)
    assert rig.wechat.sent[0].body["text"]["content"] == "轮询回复"
    rig.desk.agent_status(desk_id, "solved")
    rig.clock.advance(seconds=61)
    await wait_for(lambda: rig.store.get_ticket(ticket["id"]), lambda t: t.status == "solved")
    rig.clock.advance(seconds=61)
    await wait_for(lambda: rig.app[SYNC].store.state_get("desk:hd:cursor"))
    assert len(rig.wechat.sent) == 1 and len(rig.desk.tickets) == 1
    # no way back configured for push: a nudge is refused
    assert (await rig.nudge()).status == 401


# Synthetic directory: one chat agent online, an SLA policy for every ticket.
DIRECTORY = """
calendars:
  cn-office:
    hours: {weekdays: [09:00-12:00, 13:30-18:00]}
agents:
  - {id: a-chat, name: Chat, presence: online, capacity: {chat: 5}}
sla_policies:
  - {id: standard, calendar: cn-office, targets: {first_response: 2h, resolution: 24h}}
"""


@pytest.mark.parametrize("ownership", ["omnigate", "desk"])
async def test_ownership_decides_who_assigns_and_times(make_rig, ownership: str) -> None:
    rig = await make_rig("zammad", directory=DIRECTORY, ownership=ownership)
    await rig.wechat_message("帮我看看订单", 9401)
    desk_id = (await rig.desk_ticket())["id"]
    ticket = await rig.only_ticket()
    await wait_for(lambda: rig.store.desk_links("hd"))
    if ownership == "omnigate":  # omnigate assigns and times it; the desk is told who has it
        assert ticket["assignee"] == "a-chat" and ticket["sla"]["policy"] == "standard"
        notes = await wait_for(lambda: internal_notes(rig, desk_id), lambda n: n)
        assert notes == ["omnigate assigned this ticket to a-chat (team —)"]
    else:  # the desk routes it: omnigate's agent is released and no SLA is timed
        t = await wait_for(lambda: rig.store.get_ticket(ticket["id"]), lambda t: t.assignee is None)
        assert t.sla is None
        timeline = await (await rig.client.get(f"/api/v1/tickets/{ticket['id']}/timeline", headers=AUTH)).json()
        assert any(e["kind"] == "assignment" and "help desk" in e["text"] for e in timeline["items"])
        await rig.wechat_message("还在吗", 9402)  # a follow-up does not bring omnigate's routing back
        assert (await rig.store.get_ticket(ticket["id"])).assignee is None
        assert internal_notes(rig, desk_id) == []


async def test_a_nudge_whose_body_stalls_is_408_and_a_huge_one_413(make_rig, monkeypatch) -> None:
    """The way back reads its body like every other intake: whole within the
    body timeout (a stalled one holds no handler), up to max_body_bytes."""
    import connectors.http

    rig = await make_rig("freshdesk")
    monkeypatch.setattr(connectors.http, "BODY_TIMEOUT_S", 0.3)
    stalled = asyncio.Event()

    async def body():
        yield b'{"ticket": '
        await stalled.wait()  # never sends the rest (slowloris)

    resp = await rig.client.post("/channels/desks/hd", data=body(),
                                 headers={"Content-Type": "application/json", **sign_nudge("freshdesk", b"", rig.clock)})
    assert resp.status == 408, await resp.text()
    assert resp.content_type == "application/problem+json"
    stalled.set()
    big = await rig.nudge(b"x" * (rig.app[keys.CONFIG].max_body_bytes + 1))
    assert big.status == 413
