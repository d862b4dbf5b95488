"""Tests for :mod:`planners.travel`: haversine matrices and the OSRM table client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import numpy as np
import pytest

from planners import (
    HaversineTravel,
    OsrmTravel,
    ProblemError,
    TravelMatrixError,
    TravelMatrixSource,
)

# Berlin Alexanderplatz and Brandenburger Tor: about 2.5 km apart as the crow flies.
ALEX = (52.521918, 13.413215)
TOR = (52.516275, 13.377704)


def test_haversine_matches_a_known_distance() -> None:
    """Straight-line Alexanderplatz to Brandenburger Tor is about 2.49 km."""
    m = HaversineTravel(detour_factor=1.0, speed_kmh=36.0).matrices([ALEX, TOR])
    assert m.distance_m.dtype == np.int64
    assert 2_470 <= m.distance_m[0, 1] <= 2_510
    assert m.distance_m[0, 0] == 0
    # 36 km/h is 10 m/s.
    assert abs(m.duration_s[0, 1] - m.distance_m[0, 1] / 10) <= 1


def test_haversine_applies_detour_and_speed() -> None:
    """Distances scale with the detour factor, durations with 1 / speed; matrices are symmetric."""
    points = [ALEX, TOR, (52.5, 13.4)]
    straight = HaversineTravel(detour_factor=1.0, speed_kmh=25.0).matrices(points)
    default = HaversineTravel().matrices(points)
    np.testing.assert_allclose(default.distance_m, 1.3 * straight.distance_m, atol=1)
    np.testing.assert_array_equal(default.distance_m, default.distance_m.T)
    np.testing.assert_allclose(default.duration_s, default.distance_m / (25 / 3.6), atol=1)


def test_haversine_validates() -> None:
    """Bad knobs and bad points are rejected with what was expected."""
    with pytest.raises(ProblemError, match=r"Expected detour_factor >= 1, got 0\.5"):
        HaversineTravel(detour_factor=0.5)
    with pytest.raises(ProblemError, match="Expected speed_kmh > 0, got 0"):
        HaversineTravel(speed_kmh=0)
    with pytest.raises(ProblemError, match="Expected an \\(n, 2\\) array"):
        HaversineTravel().matrices([1.0, 2.0])
    with pytest.raises(ProblemError, match="latitudes in \\[-90, 90\\]"):
        HaversineTravel().matrices([(95.0, 0.0)])


def test_sources_satisfy_the_protocol() -> None:
    """Both sources are TravelMatrixSource implementations."""
    assert isinstance(HaversineTravel(), TravelMatrixSource)
    assert isinstance(OsrmTravel("http://localhost:5000"), TravelMatrixSource)


class _OsrmStub(BaseHTTPRequestHandler):
    """Answers ``/table/v1/driving/...`` with a canned matrix and records the request path."""

    answer: ClassVar[dict[str, Any]] = {}
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        body = json.dumps(type(self).answer).encode()
        self.send_response(200 if type(self).answer.get("code") == "Ok" else 400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Keep test output clean (the default handler logs every request to stderr)."""


@pytest.fixture
def osrm() -> Iterator[tuple[str, type[_OsrmStub]]]:
    """A local HTTP server playing OSRM, in a thread, for one test."""
    handler = type("Stub", (_OsrmStub,), {"answer": {}, "paths": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_osrm_reads_the_table(osrm: tuple[str, type[_OsrmStub]]) -> None:
    """The client asks for lon,lat pairs with both annotations and rounds the answer."""
    url, stub = osrm
    stub.answer = {
        "code": "Ok",
        "durations": [[0, 412.6], [398.2, 0]],
        "distances": [[0, 3120.4], [3050.9, 0]],
    }
    m = OsrmTravel(url).matrices([ALEX, TOR])
    np.testing.assert_array_equal(m.duration_s, [[0, 413], [398, 0]])
    np.testing.assert_array_equal(m.distance_m, [[0, 3120], [3051, 0]])
    (path,) = stub.paths
    assert path.startswith("/table/v1/driving/13.413215,52.521918;13.377704,52.516275?")
    assert "annotations=duration%2Cdistance" in path


def test_osrm_errors_are_travel_matrix_errors(osrm: tuple[str, type[_OsrmStub]]) -> None:
    """An error answer, an unroutable pair and a dead server all raise TravelMatrixError."""
    url, stub = osrm
    stub.answer = {"code": "InvalidQuery", "message": "Query string malformed"}
    with pytest.raises(TravelMatrixError, match="Expected OSRM code 'Ok', got HTTP 400 'InvalidQuery'"):
        OsrmTravel(url).matrices([ALEX, TOR])
    stub.answer = {"code": "Ok", "durations": [[0, None], [1, 0]], "distances": [[0, 1], [1, 0]]}
    with pytest.raises(TravelMatrixError, match="cannot route from point 0 to point 1"):
        OsrmTravel(url).matrices([ALEX, TOR])
    with pytest.raises(TravelMatrixError, match="failed"):
        OsrmTravel("http://127.0.0.1:9", timeout_s=1.0).matrices([ALEX, TOR])


def test_osrm_validates() -> None:
    """The base URL must be http(s)."""
    with pytest.raises(ProblemError, match="Expected an http\\(s\\) base_url, got 'localhost:5000'"):
        OsrmTravel("localhost:5000")


class _RoutingOsrm(BaseHTTPRequestHandler):
    """An OSRM fake that computes its answers: for the coordinates in the path it answers
    the straight-line haversine matrix (metres, at 10 m/s), honouring ``sources`` and
    ``destinations`` and refusing more than ``limit`` coordinates as a real server does
    (code ``TooBig``)."""

    limit: ClassVar[int] = 100
    sizes: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(self.path)
        coords = [tuple(map(float, c.split(","))) for c in parts.path.rsplit("/", 1)[1].split(";")]
        query = parse_qs(parts.query)
        type(self).sizes.append(len(coords))
        if len(coords) > type(self).limit:
            answer: dict[str, Any] = {"code": "TooBig", "message": "Too many table coordinates"}
        else:
            latlon = [(lat, lon) for lon, lat in coords]
            metres = HaversineTravel(detour_factor=1.0, speed_kmh=36.0).matrices(latlon).distance_m.astype(float)
            src = [int(i) for i in query["sources"][0].split(";")] if "sources" in query else list(range(len(coords)))
            dst = [int(i) for i in query["destinations"][0].split(";")] if "destinations" in query else list(range(len(coords)))
            block = metres[np.ix_(src, dst)] + 0.4  # OSRM answers floats; the client rounds
            answer = {"code": "Ok", "distances": block.tolist(), "durations": (block / 10).tolist()}
        body = json.dumps(answer).encode()
        self.send_response(200 if answer["code"] == "Ok" else 400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Keep test output clean."""


def test_osrm_asks_for_blocks_within_the_servers_table_size() -> None:
    """23 points against a server that takes at most 8 coordinates: the client asks in blocks
    of 4 sources by 4 destinations and assembles exactly the matrix one big request gives."""
    handler = type("Fake", (_RoutingOsrm,), {"limit": 8, "sizes": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        rng = np.random.default_rng(5)
        points = np.column_stack([52.5 + rng.uniform(-0.05, 0.05, 23), 13.4 + rng.uniform(-0.08, 0.08, 23)])
        with pytest.raises(TravelMatrixError, match="TooBig"):
            OsrmTravel(url, max_table_size=100).matrices(points)
        blocked = OsrmTravel(url, max_table_size=8).matrices(points)
        assert max(handler.sizes[1:]) <= 8 and len(handler.sizes) == 1 + 6 * 6
        handler.limit = 100
        whole = OsrmTravel(url, max_table_size=100).matrices(points)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    np.testing.assert_array_equal(blocked.distance_m, whole.distance_m)
    np.testing.assert_array_equal(blocked.duration_s, whole.duration_s)
    straight = HaversineTravel(detour_factor=1.0, speed_kmh=36.0).matrices(points)
    # The URL carries 6 decimals of a degree (about 0.1 m): a metre of rounding at most.
    np.testing.assert_allclose(whole.distance_m, straight.distance_m, atol=1)
    assert not whole.distance_m.flags.writeable


def test_haversine_blocks_give_the_same_matrix_as_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """The row blocks that bound the memory change nothing in the result."""
    import planners.travel as travel

    rng = np.random.default_rng(2)
    points = np.column_stack([52.5 + rng.uniform(-0.1, 0.1, 300), 13.4 + rng.uniform(-0.1, 0.1, 300)])
    whole = HaversineTravel().matrices(points)
    monkeypatch.setattr(travel, "_BLOCK_CELLS", 300 * 7)  # 7 rows a block, the last one short
    blocked = HaversineTravel().matrices(points)
    np.testing.assert_array_equal(whole.distance_m, blocked.distance_m)
    np.testing.assert_array_equal(whole.duration_s, blocked.duration_s)
