"""微信客服 end to end: a whole (synthetic, labelled) kf/sync_msg conversation
through the gateway's journal and pipeline — the customer's messages make one
ticket, the servicer's reply from the WeCom client is a reply on it (the first
response), and the session's end solves the ticket. The ten messages are
journaled at once and the pipeline runs them concurrently: the session end
must still come after the customer's last message (per-sender ordering)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from gateway import keys
from tests.connectors.wechat.support import AES_KEY, TOKEN
from tests.e2e.conftest import Gateway

SYNC = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "wecom" / "kf_sync_msg_synthetic.json")
                  .read_text(encoding="utf-8"))


async def test_a_kf_session_is_one_ticket_answered_and_solved(start_gateway, wechat_api) -> None:
    gw: Gateway = await start_gateway(wecom={"api_base": wechat_api.base, "accounts": {"kf": {
        "corp_id": SYNC["corp_id"], "secret": "kf-secret", "token": TOKEN, "encoding_aes_key": AES_KEY}}})
    for msg in SYNC["msg_list"]:  # what the connector ingests after each sync_msg page
        await gw.app[keys.INGEST].ingest("wecom", "kf", msg["msgid"], msgspec.json.encode(msg), None)
    await gw.drain()
    journal = await gw.journal()
    assert [e["status"] for e in journal] == ["processed"] * len(SYNC["msg_list"])
    customer = {e["contact_id"] for e in journal if e["id"] != journal[7]["id"]}  # kfmsg-0008: servicer presence
    assert len(customer) == 1
    tickets = {e["ticket_id"] for e in journal if e.get("ticket_id")}
    assert len(tickets) == 1
    ticket = await gw.get(f"/api/v1/tickets/{tickets.pop()}")
    assert ticket["status"] == "solved" and ticket["first_response_at"]
    entries = await gw.timeline(ticket["id"], "message_in", "message_out", "event")
    [answer] = [e for e in entries if e["kind"] == "message_out"]
    assert answer["text"] == "您好，请提供订单号" and answer["data"]["author"] == f"{SYNC['corp_id'].lower()}:zhangsan"
    assert [e["text"] for e in entries if e["kind"] == "message_in"][0] == "我想退货"
    ended = [e for e in entries if e["kind"] == "event" and e["data"].get("status_change")]
    assert ended and ended[-1]["data"]["status_change"]["to"] == "solved"
