"""The Redis bench groups (``omnigate bench --only redis|redis_assign|redis_api_list``)
run end to end at toy sizes and give their figures, not an error.

Each broke unnoticed once, for nothing ran them but a whole ``omnigate
bench``: ``redis_assign`` unpacked a helper whose answer had grown two
fields, ``redis_api_list`` called ``asyncio.run`` inside the runner's loop
(both fail here without their fix), and ``redis`` waited out its deadline
for messages that shedding (on by default) had refused with a 503 its load
client does not retry — at the bench's own size only: these toy runs never
starve the pipeline, so they check that every message was taken, and the
bench now turns shedding off and names a refusal instead of timing out.
Each group starts its own redis-server, as the bench does."""

from __future__ import annotations

import pytest

from gateway.bench import assign_store, redis_api_list, redis_assign, redis_instances, runner
from tests.conftest import need
from tests.integration.redis import redis_binary


@pytest.fixture(autouse=True)
def _needs_redis_server() -> None:
    need("redis-server", redis_binary() is not None, "redis-server is not installed")


async def _run(group: str) -> dict:
    out = await runner.run(group, lambda _line: None)
    for name, fig in out.items():
        assert "error" not in fig, (name, fig)
    return out


async def test_the_instances_figures_take_every_message(monkeypatch):
    monkeypatch.setattr(redis_instances, "N", 150)
    out = await _run("redis")
    for name in ("redis_ingest", "redis_pipeline"):
        assert out[name]["value"] > 0 and out[name]["baseline"] > 0
        assert out[name]["detail"]["errors"] == 0


async def test_the_assignment_figure_decides_every_ticket(monkeypatch):
    monkeypatch.setattr(redis_assign, "TICKETS", 120)
    monkeypatch.setattr(assign_store, "BUDGET_S", 600.0)  # every ticket decided, however slow the machine
    fig = (await _run("redis_assign"))["redis_assign_next"]
    assert fig["detail"]["decided"] == 120 and fig["detail"]["over_capacity"] == 0
    assert fig["value"] > 0 and fig["baseline"] > 0


async def test_the_ticket_list_figure_reads_its_pages(monkeypatch):
    monkeypatch.setattr(redis_api_list, "N_TICKETS", 1_500)
    monkeypatch.setattr(redis_api_list, "ROUNDS", 2)
    fig = (await _run("redis_api_list"))["redis_api_ticket_list_100k"]
    assert fig["value"] > 0 and fig["detail"]["tickets"] == 1_500
