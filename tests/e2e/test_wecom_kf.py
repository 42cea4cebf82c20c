"""微信客服 end to end: WeCom's signed, encrypted ``kf_msg_or_event``
notification posted to the gateway's callback route makes the real connector
pull a whole (synthetic, labelled) kf/sync_msg conversation from the API
stand-in into the journal and the pipeline — the customer's messages make one
ticket, the servicer's reply from the WeCom client is a reply on it (the first
response), and the session's end solves the ticket. The ten messages are
journaled at once and the pipeline runs them concurrently: the session end
must still come after the customer's last message (per-sender ordering)."""

from __future__ import annotations

import json
from pathlib import Path

from gateway import keys
from tests.connectors.wechat.support import AES_KEY, NONCE, TOKEN, envelope
from tests.e2e.conftest import Gateway, wait_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wecom"
SYNC = json.loads((FIXTURES / "kf_sync_msg_synthetic.json").read_text(encoding="utf-8"))


async def test_a_kf_session_is_one_ticket_answered_and_solved(start_gateway, wechat_api) -> None:
    corp = SYNC["corp_id"]
    wechat_api.work_apps[(corp, "kf-secret")] = "kf"
    wechat_api.kf_messages.extend(SYNC["msg_list"])
    gw: Gateway = await start_gateway(wecom={"api_base": wechat_api.base, "accounts": {"kf": {
        "corp_id": corp, "secret": "kf-secret", "token": TOKEN, "encoding_aes_key": AES_KEY}}})
    notification = (FIXTURES / "kf_msg_or_event_synthetic.xml").read_text(encoding="utf-8")
    signed_at = str(int(gw.app[keys.CLOCK]().timestamp()))  # as WeCom signs it: now, by the gateway's clock
    body, msg_signature = envelope("wecom", notification, corp, timestamp=signed_at)
    resp = await gw.client.post(f"/channels/wecom/{corp}/kf", data=body,
                                params={"msg_signature": msg_signature, "timestamp": signed_at, "nonce": NONCE})
    assert (resp.status, await resp.text()) == (200, "success")
    # the callback is answered within kf_pull_wait_s; the pull may go on behind it
    await wait_for(gw.journal, lambda items: len(items) == len(SYNC["msg_list"]))  # pulled from sync_msg
    await gw.drain()
    journal = await gw.journal()
    assert wechat_api.sync_calls and {c["token"] for c in wechat_api.sync_calls} == {"ENCSyntheticSyncToken"}
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
