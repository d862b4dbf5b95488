"""One caller's calls to one shard, applied in the order they were submitted, across crashes.

A twin applies a battery's samples in time order: a sample older than the newest one it
holds is *late* (kept in history, never applied). So the batches of one bridge worker must
reach a shard in the order the worker submitted them, also when the shard restarts in the
middle. Ray keeps one caller's calls in order, but not when it retries calls after an actor
restart ("the task execution order is not guaranteed when task retries occur"), and a shard
that fails a write fails every call queued behind it, which the caller then resends.

:class:`OrderedLane` pipelines calls while they succeed and, when one fails for a reason
that passes (``transient``: the shard died, its database is down), stops sending, waits for
every call in flight to come back, and resends the failed and held ones in submission
order, until they go through. Callers see a slow call, never a reordered one: that is the
backpressure. Any other error is retried the same way, in order, up to ``max_attempts``
sends of that call, and then goes to its caller: a caller that retried it itself would
send it behind newer calls, and the target would take it for a late one.

Pipelining means a call may already be on its way when an older one fails: Ray queues
calls for a restarting actor and delivers them to the new process first. So every call
carries a :class:`CallOrder` stamp, and the shard's :class:`LaneSequencer` refuses (with
:class:`OutOfOrder`, a transient error) a call that would overtake an older one still
outstanding; the lane then resends it in its turn.

Plain asyncio: :class:`runtime.twins.ShardRouter` gives it a Ray call per shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from contracts.errors import Unavailable

__all__ = ["CallOrder", "LaneSequencer", "OrderedLane", "OutOfOrder"]

log = logging.getLogger(__name__)

A = TypeVar("A")
R = TypeVar("R")

#: Longest wait between two resends of a lane whose shard is still out of reach.
_MAX_RESEND_DELAY_S = 2.0


@dataclass(frozen=True)
class CallOrder:
    """Where a call stands in its lane: the lane, its number, and the number of the oldest
    call of the lane not yet resolved when it was sent (itself, when nothing older is
    outstanding)."""

    lane_id: str
    call_no: int
    oldest_open_no: int


class OutOfOrder(Unavailable):
    """A call refused because an older call of its lane has not been applied yet; the lane
    resends it in its turn (transient, like the shard being out of reach)."""


class LaneSequencer:
    """The receiving side: which calls of each lane a shard may apply now.

    A call may be applied when it is the next of its lane (or a resend of one already
    applied, which deduplication makes harmless), or when its lane says nothing older is
    outstanding (a fresh process knows nothing of the lane). Otherwise it waits, up to
    ``wait_s``, for the older calls to be applied: Ray does not promise an async actor runs
    one caller's calls in the order sent (a call whose argument is fetched from the object
    store sooner may start first), and after a restart it may deliver queued newer calls
    before the lane resends the older ones. A call still not in turn is refused with
    :class:`OutOfOrder` and the lane resends it in its turn.

    :meth:`applied` and :meth:`committed` record progress; :meth:`rewind` forgets what was
    applied but not committed, for a shard that rebuilt its table from history.
    """

    def __init__(self, wait_s: float = 5.0) -> None:
        self.wait_s = wait_s
        self._applied: dict[str, int] = {}
        self._committed: dict[str, int] = {}
        self._progress = asyncio.Event()
        self.waits = 0

    def in_turn(self, order: CallOrder) -> bool:
        last = self._applied.get(order.lane_id)
        return order.oldest_open_no == order.call_no or (last is not None and order.call_no <= last + 1)

    async def wait_turn(self, order: CallOrder) -> None:
        """Return when ``order``'s call may be applied; :class:`OutOfOrder` after ``wait_s``."""
        if self.in_turn(order):
            return
        self.waits += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while not self.in_turn(order):
            progress = self._progress
            remaining = deadline - loop.time()
            if remaining <= 0:
                last = self._applied.get(order.lane_id)
                expected = "the lane's oldest open call" if last is None else f"call {last + 1} or older"
                raise OutOfOrder(
                    f"Expected {expected} of lane {order.lane_id}, got call {order.call_no} "
                    f"(oldest open when sent: {order.oldest_open_no}); the older calls did not "
                    f"arrive within {self.wait_s:g} s"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), remaining)

    def applied(self, order: CallOrder) -> None:
        last = self._applied.get(order.lane_id, order.call_no)
        self._applied[order.lane_id] = max(last, order.call_no)
        # Wake every waiting call to check whether it is its turn now.
        self._progress.set()
        self._progress = asyncio.Event()

    def committed(self, order: CallOrder) -> None:
        last = self._committed.get(order.lane_id, order.call_no)
        self._committed[order.lane_id] = max(last, order.call_no)

    def rewind(self) -> None:
        """After a rebuild from history: only committed calls count as applied."""
        self._applied = dict(self._committed)


@dataclass(eq=False)
class _Call(Generic[A, R]):
    arg: A
    no: int
    result: asyncio.Future[R]
    task: asyncio.Task[None] | None = None
    failed: BaseException | None = field(default=None, repr=False)
    errors: int = 0  # sends that failed for a reason that does not pass (not ``transient``)


class OrderedLane(Generic[A, R]):
    """Calls ``call(arg)`` in submission order, resending in order after transient failures.

    Parameters
    ----------
    call
        Sends one call with its :class:`CallOrder`; its awaitable gives the result. Calls
        made one after another on a healthy target must run in that order (Ray's
        guarantee for one caller); the target checks the stamp with a
        :class:`LaneSequencer`.
    transient
        Whether an error means "out of reach for now": the call is resent, in order.
    name
        For the log.
    max_attempts
        Sends of one call that fail for another reason before its caller gets the error.
    """

    def __init__(
        self, call: Callable[[A, CallOrder], Awaitable[R]], transient: Callable[[BaseException], bool],
        name: str = "lane", max_attempts: int = 3,
    ) -> None:  # fmt: skip
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"Expected max_attempts to be an int >= 1, got {max_attempts!r}.")
        self.max_attempts = max_attempts
        self.lane_id = uuid.uuid4().hex
        self._next_no = 0
        self._call = call
        self._transient = transient
        self._name = name
        self._queue: deque[_Call[A, R]] = deque()  # submitted, not resolved; in order
        self._repair: asyncio.Task[None] | None = None
        self.resends = 0

    def submit(self, arg: A) -> asyncio.Future[R]:
        """Queue ``arg``; sent at once unless the lane is being repaired."""
        c: _Call[A, R] = _Call(arg, self._next_no, asyncio.get_running_loop().create_future())
        self._next_no += 1
        self._queue.append(c)
        if self._repair is None:
            self._send(c)
        return c.result

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _send(self, c: _Call[A, R]) -> None:
        c.failed = None
        # Stamped at each send: the oldest open call now, not when it was first sent.
        order = CallOrder(self.lane_id, c.no, self._queue[0].no)
        c.task = asyncio.get_running_loop().create_task(self._run(c, order))

    async def _run(self, c: _Call[A, R], order: CallOrder) -> None:
        try:
            result = await self._call(c.arg, order)
        except asyncio.CancelledError:
            raise
        except BaseException as err:
            if not self._transient(err):
                c.errors += 1
                if c.errors >= self.max_attempts or not isinstance(err, Exception):
                    log.error("%s: a call failed %d times; giving up on it: %s", self._name, c.errors, err)
                    self._resolve(c, error=err)
                    return
            c.failed = err
            if self._repair is None:
                log.warning("%s: a call failed (%s); resending in order", self._name, err)
                self._repair = asyncio.get_running_loop().create_task(self._repair_lane())
            return
        self._resolve(c, result=result)

    def _resolve(self, c: _Call[A, R], *, result: R | None = None, error: BaseException | None = None) -> None:
        with contextlib.suppress(ValueError):
            self._queue.remove(c)
        if c.result.done():
            return
        if error is not None:
            c.result.set_exception(error)
        else:
            c.result.set_result(result)  # type: ignore[arg-type]

    async def _settle(self) -> None:
        """Until no call is in flight (sending is held meanwhile)."""
        while in_flight := [c.task for c in self._queue if c.task is not None and not c.task.done()]:
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _repair_lane(self) -> None:
        delay_s = 0.1
        try:
            while True:
                # Everything sent before the failure comes back first: a call still in
                # flight to the old process must not land after a resend of an older one.
                await self._settle()
                if not any(c.failed is not None for c in self._queue):
                    break
                await asyncio.sleep(delay_s)
                delay_s = min(2 * delay_s, _MAX_RESEND_DELAY_S)
                # Probe with the oldest call alone: pipelined resends to a target that comes
                # back between two of them would run the newer one first.
                head = self._queue[0]
                self.resends += 1
                self._send(head)
                await self._settle()
                if head.failed is not None:
                    continue  # still out of reach
                # The target took the oldest: the rest follow, pipelined, in order.
                delay_s = 0.1
                for c in list(self._queue):
                    if c.task is None or c.failed is not None:
                        self.resends += c.failed is not None
                        self._send(c)
        finally:
            self._repair = None
        # Calls submitted during the repair were held: send them now, in order (nothing can
        # overtake them: no await since the loop ended).
        for c in self._queue:
            if c.task is None:
                self._send(c)
