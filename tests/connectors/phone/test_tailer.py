"""The Asterisk CDR tailer against a real file (pure: an in-memory journal):
complete rows only, the offset stored after the journal, restarts, rotation."""

from __future__ import annotations

import json
import os
from pathlib import Path

from connectors.phone.client import PhoneConnector, complete_prefix
from tests.connectors.memory import MemoryContext


def row(n: int, disposition: str = "ANSWERED") -> str:
    return (f'"","1380013{n:04d}","4008001234","from-trunk","","SIP/trunk-{n:04d}","","Dial","",'
            f'"2026-11-30 10:{n % 60:02d}:00","2026-11-30 10:{n % 60:02d}:00","2026-11-30 10:{n % 60:02d}:30",'
            f'30,30,"{disposition}","DOCUMENTATION","1700000000.{n}",""\n')


def connector(ctx: MemoryContext) -> PhoneConnector:
    return PhoneConnector(ctx)


def make_ctx(path, state=None) -> MemoryContext:
    ctx = MemoryContext(config={"accounts": {"pbx1": {"source": "asterisk", "cdr_path": str(path)}}}, channel="phone")
    if state is not None:
        ctx.state = state
    return ctx


async def tail_once(ctx: MemoryContext) -> None:
    c = connector(ctx)
    await c.tail("pbx1", c.cfg.accounts["pbx1"], once=True)


async def test_partial_last_line_waits_until_complete(tmp_path):
    path = tmp_path / "Master.csv"
    full = row(1) + row(2)
    path.write_text(row(1) + row(2)[:40])
    ctx = make_ctx(path)
    await tail_once(ctx)
    assert [e.raw.decode() for e in ctx.journal] == [row(1)]
    with open(path, "a") as fh:
        fh.write(row(2)[40:])
    await tail_once(ctx)
    assert [e.raw.decode() for e in ctx.journal] == [row(1), row(2)]
    assert [e.meta["line"] for e in ctx.journal] == [1, 2]
    assert '"offset": %d' % len(full.encode()) in ctx.state["tail:pbx1"]


async def test_restart_neither_loses_nor_repeats(tmp_path):
    path = tmp_path / "Master.csv"
    path.write_text(row(1) + row(2))
    ctx = make_ctx(path)
    await tail_once(ctx)
    with open(path, "a") as fh:
        fh.write(row(3))
    restarted = make_ctx(path, state=dict(ctx.state))  # a new process with the stored offset
    restarted.journal = list(ctx.journal)
    await tail_once(restarted)
    assert [e.meta["line"] for e in restarted.calls] == [3]  # only the new row was read
    assert len(restarted.journal) == 3


async def test_crash_between_journal_and_offset_redelivers_the_same_keys(tmp_path):
    path = tmp_path / "Master.csv"
    path.write_text(row(1) + row(2))
    ctx = make_ctx(path)
    await tail_once(ctx)
    ctx.state.clear()  # the offset write was lost
    await tail_once(ctx)
    assert len(ctx.calls) == 4 and len(ctx.journal) == 2  # read again, journaled once


async def test_rotation_starts_the_new_file_from_its_beginning(tmp_path):
    path = tmp_path / "Master.csv"
    path.write_text(row(1) + row(2))
    ctx = make_ctx(path)
    await tail_once(ctx)
    os.rename(path, tmp_path / "Master.csv.1")
    path.write_text(row(3))
    await tail_once(ctx)
    assert [e.meta["line"] for e in ctx.journal] == [1, 2, 1]
    assert ctx.journal[-1].raw.decode() == row(3)


def test_complete_prefix_respects_quoted_newlines():
    assert complete_prefix(b'a,b\nc,"d\ne"\nf') == b'a,b\nc,"d\ne"\n'
    assert complete_prefix(b'a,"b\n') == b""
    assert complete_prefix(b"") == b""


async def test_a_broken_row_does_not_stop_the_tail(tmp_path):
    """buggy.csv's unterminated quote, then good rows: the broken line is
    journaled alone (it fails in the pipeline with its line), the rest flows."""
    path = tmp_path / "Master.csv"
    broken = row(1)[:-3] + '"\n'  # the last field opens a quote that never closes
    path.write_text(broken + "".join(row(n) for n in range(2, 30)))
    ctx = make_ctx(path)
    await tail_once(ctx)
    assert len(ctx.journal) == 29
    assert ctx.journal[0].raw.decode() == broken and ctx.journal[1].meta["line"] == 2


def test_complete_prefix_takes_a_broken_row_alone_once_enough_lines_follow():
    broken = b'a,"open\n'
    assert complete_prefix(broken + b"b,c\n" * 3) == b""  # could still be a quoted newline
    data = broken + b"b,c\n" * 25
    assert complete_prefix(data) == data


async def test_a_freeswitch_mod_cdr_csv_file_is_tailed_in_its_template(tmp_path):
    from connectors.phone.parse import parse

    path = tmp_path / "Master.csv"
    fixtures = Path(__file__).resolve().parents[2] / "fixtures" / "phone"
    path.write_bytes((fixtures / "synthetic_freeswitch_custom_template.csv").read_bytes())
    template = json.loads((fixtures / "synthetic_freeswitch_custom_template.context.json").read_text())["csv_template"]
    ctx = MemoryContext(config={"accounts": {"fs": {"source": "freeswitch", "upload_token": "t", "cdr_path": str(path),
                                                    "csv_template": template}}}, channel="phone")
    c = PhoneConnector(ctx)
    await c.tail("fs", c.cfg.accounts["fs"], once=True)
    assert [e.account for e in ctx.journal] == ["freeswitch:fs", "freeswitch:fs"]
    calls = [parse(e.raw, {**e.meta, "account": e.account})[0] for e in ctx.journal]  # as the pipeline parses them
    assert [c.call.disposition for c in calls] == ["missed", "answered"]


async def test_start_at_end_skips_the_history_once(tmp_path):
    path = tmp_path / "Master.csv"
    path.write_text(row(1) + row(2) + row(3)[:20])  # history, and a row being written
    ctx = MemoryContext(config={"accounts": {"pbx1": {"source": "asterisk", "cdr_path": str(path),
                                                      "start_at": "end"}}}, channel="phone")
    c = PhoneConnector(ctx)
    await c.tail("pbx1", c.cfg.accounts["pbx1"], once=True)
    assert ctx.journal == []
    with open(path, "a") as fh:
        fh.write(row(3)[20:] + row(4))
    await c.tail("pbx1", c.cfg.accounts["pbx1"], once=True)  # the stored offset now rules, not start_at
    assert [e.meta["line"] for e in ctx.journal] == [3, 4]
    assert ctx.journal[0].raw.decode() == row(3)
