"""A load generator at a steady rate, in its own process: what ``bms bench soak`` offers.

:class:`PacedLoad` starts a child process that publishes :class:`bms.bench.steady_load.SteadyLoad`
telemetry (batteries that behave like packs in service, so the models scoring them see a
fleet, not one anomaly per battery) through the broker with QoS 1: first one warm-up
message per battery (so every twin exists), then, once told to go, ``rate_sps`` samples
per second for ``seconds``, paced
in ticks (:class:`PaceSchedule`), round robin over the batteries, each message carrying
``samples_per_message`` samples spread over its battery's reporting interval (the newest
at the publish time). A sample counts as published once the broker acknowledged its
message (PUBACK). A publisher that falls behind its schedule catches up, but never
publishes past the end of the phase: the report says what it managed.

Its own process, because the benchmark's process also runs the Ray driver, and the
publisher's JSON encoding must not take time from, nor be slowed by, anything else.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import queue
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bms.bench.ingest import publish_warm_up
from bms.bench.steady_load import SteadyLoad
from sim.publisher import FleetPublisher

__all__ = ["PaceSchedule", "PacedLoad", "PacedLoadParams", "PacedLoadReport"]


@dataclass(frozen=True)
class PaceSchedule:
    """Messages per tick for a steady rate.

    The first ``k`` ticks carry ``round(k * tick_s * rate_sps / samples_per_message)``
    messages in all, so the rate never drifts and no tick is more than one message off
    the mean.
    """

    rate_sps: float
    samples_per_message: int
    tick_s: float = 0.1

    def __post_init__(self) -> None:
        if not (self.rate_sps > 0 and self.samples_per_message >= 1 and self.tick_s > 0):
            raise ValueError(
                f"Expected rate_sps > 0, samples_per_message >= 1 and tick_s > 0, got {self.rate_sps}, "
                f"{self.samples_per_message} and {self.tick_s}."
            )

    @property
    def messages_per_s(self) -> float:
        return self.rate_sps / self.samples_per_message

    def messages_by(self, ticks: int) -> int:
        """Messages in the first ``ticks`` ticks."""
        return math.floor(ticks * self.tick_s * self.messages_per_s + 0.5)

    def messages_in_tick(self, tick: int) -> int:
        """Messages of tick ``tick`` (0-based)."""
        return self.messages_by(tick + 1) - self.messages_by(tick)

    def ticks_in(self, seconds: float) -> int:
        """Ticks that start within ``seconds``."""
        return math.ceil(seconds / self.tick_s - 1e-9)


@dataclass(frozen=True)
class PacedLoadParams:
    """Where and what the load generator publishes.

    Parameters
    ----------
    host, port, username, password
        The broker and the load generator's login (None: anonymous).
    run
        Names the batteries (:class:`~bms.bench.steady_load.SteadyLoad`).
    batteries, samples_per_message, rate_sps, seconds
        The load: each battery reports every ``batteries * samples_per_message / rate_sps`` s.
    tick_s
        The pacing tick.
    max_inflight_chunks
        Ticks' worth of messages published but not all acknowledged before the publisher
        waits (and falls behind).
    """

    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    run: str
    batteries: int
    samples_per_message: int
    rate_sps: float
    seconds: float
    tick_s: float = 0.1
    max_inflight_chunks: int = 50


@dataclass(frozen=True)
class PacedLoadReport:
    """What the load generator did: the warm-up, then the paced phase.

    ``scheduled_samples`` is what the schedule asked for in ``seconds``; ``published_samples``
    what the broker acknowledged of it; ``max_lag_s`` the latest a tick started.
    """

    warmup_samples: int
    published_samples: int
    scheduled_samples: int
    publish_s: float
    max_lag_s: float
    publish_errors: int = 0
    first_error: str | None = None


def _main(p: PacedLoadParams, out: Any, go: Any) -> None:
    """Child process: warm up, report, wait for ``go``, publish paced, report."""
    # Ray runs its workers at niceness 15: the load generator gets the same, so neither
    # side is favoured on the cores they share.
    os.nice(max(0, 15 - os.nice(0)))
    try:
        asyncio.run(_publish(p, out, go))
    except BaseException:
        out.put(("error", traceback.format_exc()))
        raise


async def _publish(p: PacedLoadParams, out: Any, go: Any) -> None:
    load = SteadyLoad(p.run, p.batteries, p.samples_per_message)
    schedule = PaceSchedule(p.rate_sps, p.samples_per_message, p.tick_s)
    # A message's samples are spread over its battery's reporting interval, the newest at
    # the publish time, so each message starts after the previous one of its battery.
    interval_s = p.batteries / schedule.messages_per_s
    span_s = interval_s * (p.samples_per_message - 1) / p.samples_per_message
    async with FleetPublisher(
        p.host, p.port, n_connections=2, client_id_prefix=f"paced{p.run}", username=p.username, password=p.password
    ) as pub:
        warm = await publish_warm_up(pub, load, age_s=interval_s)
        out.put(("warm", warm))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        acked_before = pub.samples_published
        errors: list[BaseException] = []
        inflight: set[asyncio.Task[int]] = set()

        def finished(task: asyncio.Task[int]) -> None:
            inflight.discard(task)
            err = None if task.cancelled() else task.exception()
            if err is not None:
                errors.append(err)

        t0 = time.time()
        t_end = t0 + p.seconds
        tick = cursor = 0
        max_lag_s = 0.0
        while t0 + tick * p.tick_s < t_end and time.time() < t_end:
            due_s = t0 + tick * p.tick_s
            await asyncio.sleep(max(0.0, due_s - time.time()))
            max_lag_s = max(max_lag_s, time.time() - due_s)
            n = schedule.messages_in_tick(tick)
            tick += 1
            if n == 0:
                continue
            while len(inflight) >= p.max_inflight_chunks:
                await asyncio.wait(set(inflight), return_when=asyncio.FIRST_COMPLETED)
            idx = (cursor + np.arange(n)) % p.batteries
            cursor = (cursor + n) % p.batteries
            msgs, _ = load.messages(idx, time.time(), span_s)
            task = asyncio.create_task(pub.publish(msgs))
            inflight.add(task)
            task.add_done_callback(finished)
        if inflight:
            await asyncio.wait(set(inflight))
        out.put(("done", PacedLoadReport(
            warmup_samples=warm,
            published_samples=pub.samples_published - acked_before,
            scheduled_samples=schedule.messages_by(schedule.ticks_in(p.seconds)) * p.samples_per_message,
            publish_s=time.time() - t0,
            max_lag_s=max_lag_s,
            publish_errors=len(errors),
            first_error=repr(errors[0]) if errors else None,
        )))  # fmt: skip


class PacedLoad:
    """The load generator's process, seen from the benchmark.

    Use as a context manager (the process is stopped on exit): :meth:`warmed_up`, then
    :meth:`go`, then :meth:`report` once :meth:`finished`.
    """

    def __init__(self, params: PacedLoadParams) -> None:
        ctx = mp.get_context("spawn")
        self._out = ctx.Queue()
        self._go = ctx.Event()
        self._proc = ctx.Process(target=_main, args=(params, self._out, self._go), daemon=True)

    def __enter__(self) -> PacedLoad:
        self._proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._go.set()  # a publisher still waiting for it finishes instead of hanging
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()

    @property
    def pid(self) -> int:
        """The load generator's process id (once started)."""
        return self._proc.pid or 0

    async def warmed_up(self, timeout_s: float) -> int:
        """Wait for the warm-up; returns its samples (acknowledged)."""
        warm: int = await self._next("warm", timeout_s)
        return warm

    def go(self) -> None:
        """Start the paced phase."""
        self._go.set()

    def finished(self) -> bool:
        """Whether the paced phase is over (or the process ended)."""
        return not self._proc.is_alive() or not self._out.empty()

    async def report(self, timeout_s: float) -> PacedLoadReport:
        """What the paced phase did (waits for its end)."""
        report: PacedLoadReport = await self._next("done", timeout_s)
        return report

    async def _next(self, kind: str, timeout_s: float) -> Any:
        """The process's next message, which must be ``kind``; fails if it died or is late."""
        deadline = time.time() + timeout_s
        while True:
            alive = self._proc.is_alive()  # before reading: what it sent before exiting is read
            try:
                # Without blocking the loop; a process that has exited flushed its queue.
                got, value = self._out.get_nowait() if alive else self._out.get(timeout=1.0)
            except queue.Empty:
                if not alive:
                    raise RuntimeError(
                        f"The load generator exited ({self._proc.exitcode}) before reporting {kind!r}."
                    ) from None
                if time.time() > deadline:
                    raise TimeoutError(f"Expected the load generator's {kind!r} within {timeout_s:.0f} s.") from None
                await asyncio.sleep(0.1)
                continue
            if got != kind:
                raise RuntimeError(f"Expected the load generator's {kind!r}, got {got!r}: {value}")
            return value
