"""Tests for the pieces of ``bms bench api`` that run without a system: the load generator
(against a tiny HTTP/1.1 server in the test's event loop), the query points, the params."""

from __future__ import annotations

import asyncio
import math

import pytest

from bms.bench.api import ApiBenchParams, _availability_paths, _cpu_pct_by_role, run_load


async def _server(chunked_every: int) -> tuple[asyncio.Server, list[bytes]]:
    """Answers every GET on a keep-alive connection: 200 with a staleness body (chunked on
    every ``chunked_every``-th request), 404 for ``/missing``."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head)
                n += 1
                status = b"404 Not Found" if b"GET /missing" in head else b"200 OK"
                body = b'{"staleness_s":0.25,"x":1}'
                if n % chunked_every == 0:
                    writer.write(b"HTTP/1.1 " + status + b"\r\ntransfer-encoding: chunked\r\n\r\n"
                                 + b"%x\r\n" % 5 + body[:5] + b"\r\n" + b"%x\r\n" % (len(body) - 5)
                                 + body[5:] + b"\r\n0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), seen


async def test_the_load_generator_counts_what_the_clients_saw() -> None:
    """Closed-loop clients on keep-alive connections read both body framings, send the
    headers given, count non-200 answers as errors and sample staleness_s."""
    server, seen = await _server(chunked_every=3)
    port = server.sockets[0].getsockname()[1]
    async with server:
        res = await run_load(
            "127.0.0.1", port, ["/a", "/missing"], {"Authorization": "Bearer t"}, clients=4,
            seconds=0.3, warmup_s=0.05, staleness_every=2,
        )  # fmt: skip
    out = res.summary()
    assert len(res.latencies_s) > 20 and out["requests_per_s"] > 0
    assert 0 < out["errors"] < len(res.latencies_s) and set(res.errors) == {"404"}
    assert out["staleness_p50_s"] == 0.25 and out["p99_ms"] >= out["p50_ms"] > 0
    assert all(b"Authorization: Bearer t" in h for h in seen)


async def test_a_refused_connection_is_an_error_not_a_crash() -> None:
    """With nothing listening, every try is counted as a connection error."""
    server, _ = await _server(chunked_every=2)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    res = await run_load("127.0.0.1", port, ["/a"], {}, clients=2, seconds=0.1)
    assert res.latencies_s == [] and sum(res.errors.values()) > 0


def test_availability_points_lie_in_the_service_area() -> None:
    """The query points are inside the disc of the service area, and differ."""
    paths = _availability_paths(52.52, 13.40, 6.0, 1000, 500, seed=7)
    assert len(set(paths)) == 500
    for p in paths:
        q = dict(kv.split("=") for kv in p.split("?", 1)[1].split("&"))
        dy = (float(q["lat"]) - 52.52) * 111.32
        dx = (float(q["lon"]) - 13.40) * 111.32 * math.cos(math.radians(52.52))
        assert math.hypot(dx, dy) <= 6.0 + 1e-6 and q["radius_m"] == "1000"


def test_cpu_is_split_by_role_with_the_rest_of_the_machine() -> None:
    """% of one core per role between two samples; named pids override roles; processes
    seen once are left out; tiny shares are dropped; the total is their sum."""
    before = {0: ("not_ours", 10.0), 11: ("shards", 1.0), 12: ("shards", 2.0), 13: ("other", 5.0)}
    after = {0: ("not_ours", 10.5), 11: ("shards", 1.5), 12: ("shards", 2.5), 13: ("other", 5.001), 14: ("new", 9.0)}
    pct = _cpu_pct_by_role(before, after, 2.0, {13: "loadgen"})
    assert pct == {"total": 75.0, "shards": 50.0, "not_ours": 25.0}


@pytest.mark.parametrize(
    "bad", [{"clients": 0}, {"seconds": 0}, {"routes": ("nope",)}, {"routes": ()}, {"ingress_replicas": 0}, {"radius_m": 0}]
)
def test_bad_params_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="Expected"):
        ApiBenchParams(**bad)  # type: ignore[arg-type]
