"""Tests for the read path's runtime adapters in :mod:`runtime.api_deps`, without Ray.

The shards' columns with one shard restarting, swaps reported through the planner client
reaching the read snapshot, and token lookups through the cache; each over a small fake of
what it calls (a fleet client, a planner actor handle, a connection pool and token store).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import runtime.api_deps as api_deps
from contracts.access import Principal, Role, TokenRejected
from contracts.work_orders import SwapRecord, WorkOrderState
from runtime.api_deps import PostgresStores, RayFleetReader, RayPlannerClient
from runtime.ingress import serve_controller_env
from serve.http.auth import TokenCache
from serve.http.errors import ServiceUnavailable
from twins.clock import ManualClock
from twins.twin_columns import TwinColumns
from twins.twin_table import TwinTable, TwinTableParams
from twins.zones import ZoneGrid

from ..twins.factories import T0_S, make_batch, message


def _columns(battery: str, as_of_s: float) -> TwinColumns:
    t = TwinTable(TwinTableParams(window_samples=8), ManualClock(T0_S))
    t.apply(make_batch(message(battery, 0, [T0_S])))
    return TwinColumns.from_table(t, ZoneGrid(), as_of_s)


class _Shards:
    """Stands in for FleetClient.columns: one answer (columns or exception) per shard."""

    def __init__(self) -> None:
        self.answers: list[TwinColumns | BaseException] = []

    async def columns(self) -> list[TwinColumns | BaseException]:
        return list(self.answers)


async def test_a_shard_that_does_not_answer_keeps_its_last_columns() -> None:
    """A shard failing after it answered once keeps its last columns (the snapshot is then
    as of their time); one that never answered makes the load fail as a 503."""
    reader = RayFleetReader("bms")
    shards = _Shards()
    reader._fleet = shards  # type: ignore[assignment]
    shards.answers = [_columns("b0", T0_S + 10), _columns("b1", T0_S + 11)]
    first = await reader.columns()
    assert first.battery_ids == ["b0", "b1"] and first.as_of_s == T0_S + 10
    shards.answers = [_columns("b0", T0_S + 20), RuntimeError("shard 1 restarting")]
    second = await reader.columns()
    assert second.battery_ids == ["b0", "b1"] and second.as_of_s == T0_S + 11
    shards.answers.append(RuntimeError("shard 2 starting"))
    with pytest.raises(ServiceUnavailable, match="shard 2"):
        await reader.columns()


class _Planner:
    """A planner actor handle whose report answers the order it is given."""

    class _Method:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        def remote(self, *args: Any) -> Any:
            self.calls.append(args)

            async def done() -> str:
                return "order"

            return done()

    def __init__(self) -> None:
        self.report = self._Method()


async def test_a_reported_swap_reaches_the_read_snapshot() -> None:
    """report() with a swap tells on_swap both batteries, after the planner answered; a
    report without a swap tells nothing."""
    heard: list[tuple[str, ...]] = []
    planner = RayPlannerClient("bms", on_swap=lambda ids: heard.append(tuple(ids)))
    actor = _Planner()
    planner._actor = lambda: actor  # type: ignore[assignment,method-assign,return-value]
    swap = SwapRecord(vehicle_id="v1", battery_out_id="b-out", battery_in_id="b-in")
    assert await planner.report(1, WorkOrderState.DONE, "tech", None, swap, None) == "order"
    await planner.report(2, WorkOrderState.EN_ROUTE, "tech", None, None, None)
    assert heard == [("b-out", "b-in")] and len(actor.report.calls) == 2


class _Pool:
    """A connection pool that counts the connections it hands out."""

    def __init__(self) -> None:
        self.connections = 0

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[object]:
        self.connections += 1
        yield object()


class _TokenStore:
    """The token store of one connection: two tokens, one of them revoked when told."""

    revoked: set[int] = set()

    def __init__(self, conn: object) -> None:
        self.conn = conn

    async def authenticate(self, token: str) -> Principal:
        token_id = {"tok-1": 1, "tok-2": 2}.get(token)
        if token_id is None or token_id in self.revoked:
            raise TokenRejected("unknown or revoked token")
        return Principal(token_id=token_id, role=Role.CUSTOMER, subject=f"rider-{token_id}")

    async def revoke(self, token_id: int) -> Any:
        self.revoked.add(token_id)
        return token_id


async def test_tokens_are_looked_up_once_per_ttl_and_revocation_here_is_immediate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A known token costs one store lookup (and one pooled connection) per TTL; a token
    revoked through this replica is refused on its next request; refusals are not cached."""
    monkeypatch.setattr(api_deps, "TokenStore", _TokenStore)
    _TokenStore.revoked = set()
    clock = ManualClock(0.0)
    pool = _Pool()
    stores = PostgresStores(pool, None, "bms:", TokenCache(ttl_s=5.0, clock=clock.now_s))  # type: ignore[arg-type]
    for _ in range(3):
        async with stores.tokens() as tokens:
            assert (await tokens.authenticate("tok-1")).subject == "rider-1"
    assert pool.connections == 1
    clock.advance(5.0)
    async with stores.tokens() as tokens:
        await tokens.authenticate("tok-1")
        await tokens.authenticate("tok-2")
        assert pool.connections == 3
        await tokens.revoke(1)
        with pytest.raises(TokenRejected):
            await tokens.authenticate("tok-1")
        for _ in range(2):
            with pytest.raises(TokenRejected):
                await tokens.authenticate("nope")
        assert (await tokens.authenticate("tok-2")).token_id == 2
    assert pool.connections == 3 + 1 + 1 + 2


def test_direct_ingress_is_opt_out() -> None:
    """The controller's environment turns on HAProxy and direct ingress, off HAProxy's
    per-request metrics log, with free stats and metrics ports; opting out is Serve's default."""
    env = serve_controller_env()
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] != "8404" and env["RAY_SERVE_HAPROXY_METRICS_PORT"] != "9101"
    assert serve_controller_env(direct_ingress=False) == {}


def test_without_haproxy_the_api_stays_on_serves_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HAProxy binary (ray[serve] bundles one on Linux only): Serve's own proxy."""
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/nonexistent/haproxy")
    assert serve_controller_env() == {}
