"""Pollers that must have one owner across instances ask the context's
ownership (gateway/ownership.py) for their lease by a stable name: each IMAP
mailbox, each tailed call log (the Telegram bots: tests/connectors/telegram).
A context without ownership (one process) runs them directly."""

from __future__ import annotations

from connectors.email.client import EmailConnector
from connectors.phone.client import PhoneConnector
from tests.connectors.email.conftest import MemoryContext as EmailContext
from tests.connectors.email.test_settings import GOOD
from tests.connectors.memory import MemoryContext


class Recorder:
    """An ownership that never grants the lease: records who asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def run_owned(self, name, factory) -> None:
        self.asked.append(name)


async def test_each_imap_mailbox_runs_under_its_own_lease_smtp_does_not():
    ctx = EmailContext(GOOD)
    ctx.ownership = Recorder()
    tasks = EmailConnector(ctx).tasks()
    await tasks["email:imap:sales"]()
    assert ctx.ownership.asked == ["email:imap:sales"]
    assert "email:smtp" in tasks  # every instance listens for SMTP: no lease


async def test_each_tailed_call_log_runs_under_its_own_lease(tmp_path):
    (tmp_path / "Master.csv").write_text("")
    ctx = MemoryContext(config={"accounts": {"pbx1": {"source": "asterisk", "cdr_path": str(tmp_path / "Master.csv")}}},
                        channel="phone")
    ctx.ownership = Recorder()
    await PhoneConnector(ctx).run()  # the recorder never grants it: the tail returns at once
    assert ctx.ownership.asked == ["phone:tail:pbx1"]
    assert ctx.journal == []
