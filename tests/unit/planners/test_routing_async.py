"""Tests for :func:`planners.routing.solve_async`: solving never blocks the event loop."""

from __future__ import annotations

import asyncio
import itertools
import time

from planners import Job, RoutingParams, Vehicle, solve_async

from .factories import line_problem


async def test_solve_async_does_not_block_the_loop() -> None:
    """Another coroutine keeps ticking every 10 ms while a one-second search runs."""
    jobs = [Job(node=n, demand=1, earliest_s=30 * (n % 5)) for n in range(1, 31)]
    vans = [Vehicle(start_node=0, capacity=8) for _ in range(5)]
    problem = line_problem([0, *(n * 17 % 31 for n in range(1, 31))], vans, jobs)
    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    plan = await solve_async(problem, RoutingParams(time_limit_s=1.0))
    elapsed = time.perf_counter() - started
    done.set()
    await task

    assert plan.served == 30
    # The longest silence of the ticker is far shorter than the solve: the loop stayed free.
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert elapsed >= 1.0
    assert max(gaps) < 0.5, f"loop blocked for {max(gaps):.2f} s"
    assert len(ticks) > 20
