"""Tests for :mod:`models.weather`: the simulated source, the factory and the Open-Meteo client.

The Open-Meteo client talks to a real HTTP server on a free local port, run in a thread
by the ``meteo`` fixture, whose answers each test sets.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest

from models.weather import (
    OpenMeteoWeatherSource,
    SimWeatherSource,
    WeatherError,
    WeatherSource,
    weather_source_from_url,
)
from sim.weather import SimWeather

# 2024-03-10 00:00 UTC.
DAY0_S = 1_710_028_800
HOUR_S = 3600
BERLIN = (52.52, 13.41)


def _day_start(date: str) -> int:
    return int(datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())


def _hourly_answer(start_date: str, end_date: str) -> dict[str, Any]:
    """What Open-Meteo sends for whole UTC days: temperature = hour index / 2, rain = / 10."""
    first, last = _day_start(start_date), _day_start(end_date) + 23 * HOUR_S
    times = list(range(first, last + 1, HOUR_S))
    k = [(t - DAY0_S) // HOUR_S for t in times]
    return {
        "latitude": 52.52,
        "longitude": 13.419998,
        "generationtime_ms": 0.2,
        "utc_offset_seconds": 0,
        "timezone": "GMT",
        "timezone_abbreviation": "GMT",
        "elevation": 38.0,
        "hourly_units": {"time": "unixtime", "temperature_2m": "°C", "precipitation": "mm"},
        "hourly": {
            "time": times,
            "temperature_2m": [i / 2 for i in k],
            "precipitation": [i / 10 for i in k],
        },
    }


class _MeteoStub(BaseHTTPRequestHandler):
    """Plays Open-Meteo: records each request and answers as the test configured."""

    status: ClassVar[int] = 200
    body: ClassVar[bytes | None] = None  # None: a well-formed answer for the asked dates
    edit: ClassVar[Any] = None  # optional function that alters the well-formed answer
    delay_s: ClassVar[float] = 0.0
    requests: ClassVar[list[tuple[str, dict[str, list[str]]]]] = []

    def do_GET(self) -> None:
        stub = type(self)
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        stub.requests.append((url.path, query))
        time.sleep(stub.delay_s)
        if stub.body is None:
            answer = _hourly_answer(query["start_date"][0], query["end_date"][0])
            if stub.edit is not None:
                stub.edit(answer)
            body = json.dumps(answer).encode()
        else:
            body = stub.body
        self.send_response(stub.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Keep test output clean (the default handler logs every request to stderr)."""


@pytest.fixture
def meteo() -> Iterator[tuple[str, type[_MeteoStub]]]:
    """A local HTTP server playing Open-Meteo, in a thread, for one test."""
    handler = type("Stub", (_MeteoStub,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval: shutdown() waits up to one interval (0.5 s by default).
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_open_meteo_reads_the_hours_asked_for(meteo: tuple[str, type[_MeteoStub]]) -> None:
    """The client sends the documented query, drops surplus hours and aligns precipitation.

    Open-Meteo files the rain of an hour under the hour's end, so the hour starting at t
    gets the value reported at t + 1 h, and the request reaches into the next day.
    """
    url, stub = meteo
    start = DAY0_S + 20 * HOUR_S + 1500  # inside 20:00, so the first hour is 20:00
    hours = await OpenMeteoWeatherSource(url + "/").hourly(*BERLIN, start, 4)
    np.testing.assert_array_equal(hours.ts, DAY0_S + HOUR_S * np.arange(20, 24))
    np.testing.assert_allclose(hours.temp_c, [10.0, 10.5, 11.0, 11.5])
    np.testing.assert_allclose(hours.precipitation_mm, [2.1, 2.2, 2.3, 2.4])
    ((path, query),) = stub.requests
    assert path == "/v1/forecast"
    assert query == {
        "latitude": ["52.52000"],
        "longitude": ["13.41000"],
        "hourly": ["temperature_2m,precipitation"],
        "timeformat": ["unixtime"],
        "timezone": ["GMT"],
        "start_date": ["2024-03-10"],
        "end_date": ["2024-03-11"],
    }


async def test_open_meteo_uses_a_given_client(meteo: tuple[str, type[_MeteoStub]]) -> None:
    """A caller's AsyncClient is used for the request and left open for reuse."""
    url, stub = meteo
    async with httpx.AsyncClient() as client:
        source = OpenMeteoWeatherSource(url, client=client)
        first = await source.hourly(*BERLIN, DAY0_S, 2)
        second = await source.hourly(*BERLIN, DAY0_S + 2 * HOUR_S, 2)
        assert not client.is_closed
    np.testing.assert_allclose([*first.temp_c, *second.temp_c], [0.0, 0.5, 1.0, 1.5])
    assert len(stub.requests) == 2


async def test_open_meteo_http_500_is_a_weather_error(meteo: tuple[str, type[_MeteoStub]]) -> None:
    """A server error names the status and quotes the body."""
    url, stub = meteo
    stub.status, stub.body = 500, b"upstream model store unavailable"
    with pytest.raises(
        WeatherError,
        match=r"Expected HTTP 200 from Open-Meteo at http://127\.0\.0\.1:\d+, got 500: "
        r"upstream model store unavailable",
    ):
        await OpenMeteoWeatherSource(url).hourly(*BERLIN, DAY0_S, 24)


async def test_open_meteo_error_reason_is_quoted(meteo: tuple[str, type[_MeteoStub]]) -> None:
    """Open-Meteo's own error body ({"error": true, "reason": ...}) gives the message."""
    url, stub = meteo
    stub.status = 400
    stub.body = json.dumps(
        {"error": True, "reason": "Parameter 'start_date' is out of range"}
    ).encode()
    with pytest.raises(WeatherError, match="got 400: Parameter 'start_date' is out of range"):
        await OpenMeteoWeatherSource(url).hourly(*BERLIN, DAY0_S, 24)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>Bad gateway</html>", r"Malformed Open-Meteo answer from .*: body: Invalid JSON"),
        (b"{}", r"Malformed Open-Meteo answer from .*: hourly: Field required"),
        (
            json.dumps({"hourly": {"time": [DAY0_S], "temperature_2m": [1.0]}}).encode(),
            r"hourly\.precipitation: Field required",
        ),
        (
            json.dumps(
                {"hourly": {"time": [DAY0_S], "temperature_2m": ["warm"], "precipitation": [0]}}
            ).encode(),
            r"hourly\.temperature_2m\.0",
        ),
        (
            json.dumps(
                {"hourly": {"time": [DAY0_S], "temperature_2m": [1.0], "precipitation": [-2.0]}}
            ).encode(),
            r"hourly\.precipitation\.0.*greater than or equal to 0",
        ),
    ],
)
async def test_open_meteo_malformed_body_is_a_weather_error(
    meteo: tuple[str, type[_MeteoStub]], body: bytes, message: str
) -> None:
    """Bodies that are not JSON, lack a field or hold impossible values name the problem."""
    url, stub = meteo
    stub.body = body
    with pytest.raises(WeatherError, match=message):
        await OpenMeteoWeatherSource(url).hourly(*BERLIN, DAY0_S, 24)


async def test_open_meteo_length_mismatch_is_a_weather_error(
    meteo: tuple[str, type[_MeteoStub]],
) -> None:
    """Hourly arrays of different lengths are rejected with every length."""
    url, stub = meteo

    def drop_last_temperature(answer: dict[str, Any]) -> None:
        answer["hourly"]["temperature_2m"].pop()

    stub.edit = drop_last_temperature
    with pytest.raises(
        WeatherError,
        match=r"Expected hourly arrays of equal length, got \{'time': 48, "
        r"'temperature_2m': 47, 'precipitation': 48\}",
    ):
        await OpenMeteoWeatherSource(url).hourly(*BERLIN, DAY0_S, 24)


async def test_open_meteo_nulls_are_a_weather_error(meteo: tuple[str, type[_MeteoStub]]) -> None:
    """A null value in a requested hour is reported with its count and first hour."""
    url, stub = meteo

    def null_two_hours(answer: dict[str, Any]) -> None:
        answer["hourly"]["temperature_2m"][5] = None
        answer["hourly"]["temperature_2m"][9] = None
        answer["hourly"]["precipitation"][20] = None  # outside the hours asked for

    stub.edit = null_two_hours
    with pytest.raises(
        WeatherError,
        match=r"Expected a temperature_2m value for every hour, got null for 2 of 12 hours, "
        r"first at 2024-03-10T05:00Z",
    ):
        await OpenMeteoWeatherSource(url).hourly(*BERLIN, DAY0_S, 12)


async def test_open_meteo_missing_hours_are_a_weather_error(
    meteo: tuple[str, type[_MeteoStub]],
) -> None:
    """An answer that stops short of the requested hours says what it covers."""
    url, stub = meteo

    def keep_first_day(answer: dict[str, Any]) -> None:
        for key in ("time", "temperature_2m", "precipitation"):
            del answer["hourly"][key][24:]

    stub.edit = keep_first_day
    with pytest.raises(
        WeatherError,
        match=r"Expected hourly values from 2024-03-10T12:00Z to 2024-03-11T12:00Z, "
        r"Open-Meteo's answer lacks 13 of them \(first 2024-03-11T00:00Z\); "
        r"it covers 2024-03-10T00:00Z to 2024-03-10T23:00Z",
    ):
        await OpenMeteoWeatherSource(url).hourly(*BERLIN, DAY0_S + 12 * HOUR_S, 24)


async def test_open_meteo_timeout_is_a_weather_error(meteo: tuple[str, type[_MeteoStub]]) -> None:
    """A server slower than timeout_s gives a WeatherError naming the timeout."""
    url, stub = meteo
    stub.delay_s = 1.0
    with pytest.raises(WeatherError, match=r"did not answer within 0\.2 s \(ReadTimeout\)"):
        await OpenMeteoWeatherSource(url, timeout_s=0.2).hourly(*BERLIN, DAY0_S, 24)


async def test_open_meteo_unreachable_is_a_weather_error() -> None:
    """A refused connection gives a WeatherError naming the URL."""
    with pytest.raises(WeatherError, match=r"request to http://127\.0\.0\.1:9/v1/forecast failed"):
        await OpenMeteoWeatherSource("http://127.0.0.1:9", timeout_s=1.0).hourly(*BERLIN, DAY0_S, 1)


def test_open_meteo_validates_its_config() -> None:
    """The base URL must be http(s) and the timeout positive."""
    with pytest.raises(
        ValueError, match=r"Expected an http\(s\) base_url, got 'api.open-meteo.com'"
    ):
        OpenMeteoWeatherSource("api.open-meteo.com")
    with pytest.raises(ValueError, match="Expected timeout_s > 0, got 0"):
        OpenMeteoWeatherSource("https://api.open-meteo.com", timeout_s=0)


async def test_sim_source_answers_from_the_simulator() -> None:
    """The simulated source returns SimWeather.hourly, at any place."""
    weather = SimWeather(seed=4)
    hours = await SimWeatherSource(weather).hourly(*BERLIN, DAY0_S + 10.0, 30)
    expected = weather.hourly(DAY0_S, 30)
    np.testing.assert_array_equal(hours.ts, expected.ts)
    np.testing.assert_array_equal(hours.temp_c, expected.temp_c)
    np.testing.assert_array_equal(hours.precipitation_mm, expected.precipitation_mm)


async def test_queries_are_validated() -> None:
    """Out-of-range coordinates and hour counts are rejected before any work."""
    source = SimWeatherSource()
    with pytest.raises(ValueError, match=r"Expected lat in \[-90, 90\], got 91.0"):
        await source.hourly(91.0, 0.0, DAY0_S, 1)
    with pytest.raises(ValueError, match=r"Expected lon in \[-180, 180\], got nan"):
        await source.hourly(0.0, float("nan"), DAY0_S, 1)
    with pytest.raises(ValueError, match=r"Expected hours in \[1, 2592\], got 0"):
        await OpenMeteoWeatherSource("http://127.0.0.1:9").hourly(*BERLIN, DAY0_S, 0)


def test_factory_picks_the_source() -> None:
    """No URL gives the simulator; a URL gives the HTTP client; both are WeatherSources."""
    assert isinstance(weather_source_from_url(None), SimWeatherSource)
    assert isinstance(weather_source_from_url(""), SimWeatherSource)
    remote = weather_source_from_url("https://api.open-meteo.com", timeout_s=3.0)
    assert isinstance(remote, OpenMeteoWeatherSource)
    assert (remote.base_url, remote.timeout_s) == ("https://api.open-meteo.com", 3.0)
    assert isinstance(remote, WeatherSource)
    assert isinstance(SimWeatherSource(), WeatherSource)
