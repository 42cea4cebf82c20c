"""The webchat behind a load balancer without stickiness: two gateways on one
real Redis share the webchat's durable state (connectors/webchat/redis_transcript.py),
so a visitor whose socket moves from A to B resumes the same conversation
with its history and files, and an agent reply committed on A reaches the
visitor connected to B."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest

from gateway import keys
from routing.model import Attachment, Identity, Outbound, new_id
from tests.connectors.webchat.conftest import Visitor
from tests.gateway.conftest import AUTH
from tests.gateway.test_redis_live import _event, _instance

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40


async def test_a_visitor_moves_between_instances_and_keeps_the_conversation(
        aiohttp_client, tmp_path, redis_server, redis_prefix):
    (ca, app_a) = await _instance(aiohttp_client, tmp_path, "a", redis_server, redis_prefix)
    (cb, app_b) = await _instance(aiohttp_client, tmp_path, "b", redis_server, redis_prefix)
    agent = await ca.ws_connect("/api/v1/live/webchat", headers=AUTH)  # the agent is on A
    await agent.receive(timeout=5)

    # the visitor starts on A, with a screenshot
    v = await Visitor.connect(ca)
    conv, who = v.welcome["conversation"], {"site": "shop", "visitor": v.welcome["visitor"],
                                            "token": v.welcome["token"]}
    ack1 = await v.say("c1", "my order is late", files=[{"name": "s.png", "content_type": "image/png",
                                                          "data_base64": base64.b64encode(PNG).decode()}])
    [shot] = ack1["files"]
    await v.close()

    # the socket reconnects on B (no stickiness): B accepts A's token and shows the history
    w = await Visitor.connect(cb, visitor=who["visitor"], token=who["token"])
    assert (w.welcome["conversation"], w.welcome["visitor"], w.welcome["last_seq"]) == (conv, who["visitor"], 1)
    [old] = w.welcome["history"]
    assert (old["cid"], old["text"], old["files"]) == ("c1", "my order is late", [shot])
    # the upload made on A downloads through B
    r = await cb.get(f"/channels/webchat/files/{shot['sha256']}", params=who)
    assert r.status == 200 and await r.read() == PNG

    # the visitor writes on B: numbered after A's frame; the agent on A sees it
    ack2 = await w.say("c2", "any news?")
    assert ack2["seq"] == 2
    msg = await _event(agent, "message", conversation=conv, cid="c2")
    assert (msg["from"], msg["text"], msg["seq"]) == ("visitor", "any news?", 2)
    # a resend of c2 through A (the widget reconnected there meanwhile) is the same frame
    tab = await Visitor.connect(ca, visitor=who["visitor"], token=who["token"], after=2)
    assert tab.welcome["history"] == [] and tab.welcome["last_seq"] == 2
    again = await tab.say("c2", "any news?")
    assert (again["seq"], again["journal_id"]) == (2, ack2["journal_id"])

    # the agent's reply, dispatched by A's outbox (the connector's send), with a PDF stored on A
    pdf = b"%PDF-1.4\n% synthetic invoice\n"
    sha = await app_a[keys.CONNECTORS]["webchat"].files.aput(pdf)
    out = Outbound(id=new_id(), ticket_id="T1", channel="webchat", account="shop",
                   to=Identity("webchat", conv.split(":", 1)[1]), text="shipped today", author="ann",
                   attachments=[Attachment(name="invoice.pdf", content_type="application/pdf", size=len(pdf),
                                           sha256=sha)])
    sent = await app_a[keys.CONNECTORS]["webchat"].send(out)
    assert sent.external_id == f"{conv}#3"
    got = await w.expect("message")  # the visitor's socket on B
    assert (got["from"], got["text"], got["author"], got["seq"]) == ("agent", "shipped today", "ann", 3)
    assert (await tab.expect("message"))["seq"] == 3  # and the tab on A
    r = await cb.get(f"/channels/webchat/files/{sha}", params=who)
    assert r.status == 200 and await r.read() == pdf and r.headers["Content-Disposition"] == "attachment"
    # sent again after a crash: the same frame, nothing new for the visitor
    assert (await app_b[keys.CONNECTORS]["webchat"].send(out)).external_id == f"{conv}#3"

    # the visitor reads on B; the agent on A sees it, and reads back: the visitor on B sees that
    await w.send({"type": "read", "seq": 3})
    assert (await _event(agent, "read", conversation=conv, **{"from": "visitor"}))["seq"] == 3
    await agent.send_str(json.dumps({"type": "read", "conversation": conv, "seq": 2}))
    assert (await w.expect("read"))["seq"] == 2

    # a third instance start (or a restart) sees the same state
    for app in (app_a, app_b):
        info = await app[keys.CONNECTORS]["webchat"].transcript.conversation(conv)
        assert (info["last_seq"], info["visitor_read_seq"], info["agent_read_seq"]) == (3, 3, 2)
    await w.close()
    await tab.close()
    await agent.close()


async def test_an_idle_conversation_is_ended_by_one_instance_only(aiohttp_client, tmp_path, redis_server,
                                                                 redis_prefix):
    (ca, app_a) = await _instance(aiohttp_client, tmp_path, "a", redis_server, redis_prefix)
    (cb, app_b) = await _instance(aiohttp_client, tmp_path, "b", redis_server, redis_prefix)
    v = await Visitor.connect(cb)
    await v.say("c1", "hello")
    conn_a, conn_b = app_a[keys.CONNECTORS]["webchat"], app_b[keys.CONNECTORS]["webchat"]
    ahead = [timedelta(days=1)]  # both clocks past the inactivity (30 minutes)
    for conn in (conn_a, conn_b):
        conn.clock = lambda: app_a[keys.CLOCK]() + ahead[0]
    assert (await conn_a.sweep())["ended"] == 1  # A takes the sweep's lease
    assert (await v.expect("ended"))["conversation"] == v.welcome["conversation"]  # the socket on B hears it
    assert (await conn_a.sweep())["ended"] == 0  # ended once
    u = await Visitor.connect(cb)
    await u.say("c1", "another one")
    ahead[0] = timedelta(days=2)
    assert (await conn_b.sweep())["ended"] == 0  # A holds the lease: B neither ends nor mails anything
    assert (await conn_a.sweep())["ended"] == 1
    await v.close()
    await u.close()
