"""The pipeline bench's timing wrapper passes the worker's keyword arguments
through (``Pipeline.process(entry, defer=…)``): a wrapper that dropped them
made every production bench run fail to drain."""

from __future__ import annotations

from gateway.bench.pipeline import _timed


async def test_the_timing_wrapper_passes_the_workers_keyword_arguments():
    class Pipe:
        async def process(self, entry, *, defer=False):
            return entry, defer

    pipe, latencies = Pipe(), []
    _timed(pipe, latencies)
    assert await pipe.process("e1", defer=True) == ("e1", True)
    assert await pipe.process("e2") == ("e2", False)
    assert len(latencies) == 2
