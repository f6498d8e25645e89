"""Online batching: requests that wait while the stage is busy go in together when it frees.

This is what raises throughput under load (Ray Serve's ``@serve.batch`` closes its batches on
arrival instead, so a busy stage kept receiving batches of one): the next call takes everything that
queued meanwhile, up to the maximum; errors reach exactly the batch's callers; a request whose client
went away is not run.
"""
from __future__ import annotations

import asyncio

import pytest

from corpusflow.serve_apps.gather import Gatherer


class SlowStage:
    """Doubles its inputs, taking ``seconds`` per call, and remembers each call's inputs."""

    def __init__(self, seconds: float, fail_on: int | None = None):
        self.seconds, self.fail_on, self.calls = seconds, fail_on, []

    async def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise ValueError(f"cannot take {self.fail_on}")
        return [2 * x for x in items]


async def _busy(gatherer: Gatherer) -> asyncio.Task:
    """Request 0, already running as a call of its own."""
    first = asyncio.create_task(gatherer.submit(0))
    await asyncio.sleep(0.03)
    return first


async def _submit_while_busy(gatherer: Gatherer, n: int) -> list:
    """One request starts a call; ``n`` more arrive while it runs; every result."""
    first = await _busy(gatherer)
    rest = [asyncio.create_task(gatherer.submit(i)) for i in range(1, n + 1)]
    return await asyncio.gather(first, *rest)


def test_requests_that_queue_behind_a_busy_stage_share_its_next_call():
    stage = SlowStage(0.3)

    async def main():
        return await _submit_while_busy(Gatherer(stage, max_batch_size=8, batch_wait_timeout_s=0.01), 7)

    assert asyncio.run(main()) == [2 * i for i in range(8)]
    assert stage.calls == [[0], [1, 2, 3, 4, 5, 6, 7]]


def test_no_call_takes_more_than_the_maximum_and_order_is_kept():
    stage = SlowStage(0.2)

    async def main():
        return await _submit_while_busy(Gatherer(stage, max_batch_size=8, batch_wait_timeout_s=0.01), 19)

    assert asyncio.run(main()) == [2 * i for i in range(20)]
    assert [len(c) for c in stage.calls] == [1, 8, 8, 3]
    assert [x for c in stage.calls for x in c] == list(range(20))


def test_an_idle_stage_waits_briefly_for_company():
    stage = SlowStage(0.01)

    async def main():
        g = Gatherer(stage, max_batch_size=8, batch_wait_timeout_s=0.2)
        a = asyncio.create_task(g.submit(1))
        await asyncio.sleep(0.02)
        return await asyncio.gather(a, g.submit(2))

    assert asyncio.run(main()) == [2, 4]
    assert stage.calls == [[1, 2]]


def test_a_failed_call_fails_its_own_callers_only():
    stage = SlowStage(0.1, fail_on=3)

    async def main():
        g = Gatherer(stage, max_batch_size=2, batch_wait_timeout_s=0.0)
        first = await _busy(g)
        batch = [asyncio.create_task(g.submit(i)) for i in (3, 4)]  # one call of two, fails on 3
        later = [asyncio.create_task(g.submit(i)) for i in (5, 6)]
        return await asyncio.gather(first, *batch, *later, return_exceptions=True)

    first, three, four, five, six = asyncio.run(main())
    assert (first, five, six) == (0, 10, 12)
    assert isinstance(three, ValueError) and isinstance(four, ValueError) and "cannot take 3" in str(four)


def test_a_request_whose_client_left_is_not_run():
    stage = SlowStage(0.2)

    async def main():
        g = Gatherer(stage, max_batch_size=8, batch_wait_timeout_s=0.0)
        first = await _busy(g)
        gone, kept = asyncio.create_task(g.submit(1)), asyncio.create_task(g.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        return await asyncio.gather(first, kept)

    assert asyncio.run(main()) == [0, 4]
    assert stage.calls == [[0], [2]]


def test_nonsense_limits_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        Gatherer(SlowStage(0), max_batch_size=0, batch_wait_timeout_s=0.1)
