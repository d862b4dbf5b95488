"""Where the demand model gets its weather: one async interface, two sources.

:class:`SimWeatherSource` answers from the simulator's seeded weather (the default, and
what tests and the simulated fleet use). :class:`OpenMeteoWeatherSource` asks an
Open-Meteo-compatible forecast API over HTTP. :func:`weather_source_from_url` picks one
from configuration: no URL, the simulator; a URL, that server.

Errors::

    WeatherError     a source could not deliver the hours asked for (HTTP failure,
                     timeout, malformed or incomplete answer)
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Protocol, Self, runtime_checkable

import httpx
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contracts.weather import WeatherHours
from sim.weather import SimWeather

__all__ = [
    "OpenMeteoWeatherSource",
    "SimWeatherSource",
    "WeatherError",
    "WeatherSource",
    "weather_source_from_url",
]

FloatArray = npt.NDArray[np.float64]

_S_PER_HOUR = 3600
# Open-Meteo serves at most 16 forecast days plus up to 92 past days per request.
_MAX_HOURS = 24 * (92 + 16)


class WeatherError(Exception):
    """A weather source could not deliver the requested hours."""


@runtime_checkable
class WeatherSource(Protocol):
    """Anything that gives the hourly weather at a place."""

    async def hourly(self, lat: float, lon: float, start_ts: float, hours: int) -> WeatherHours:
        """Weather of ``hours`` consecutive hours, the first being the one containing ``start_ts``.

        Raises
        ------
        WeatherError
            If the source cannot deliver every requested hour.
        """
        ...


def _check_query(lat: float, lon: float, start_ts: float, hours: int) -> None:
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise ValueError(f"Expected lat in [-90, 90], got {lat}.")
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise ValueError(f"Expected lon in [-180, 180], got {lon}.")
    if not (math.isfinite(start_ts) and start_ts >= 0.0):
        raise ValueError(f"Expected a finite start_ts >= 0, got {start_ts}.")
    if not 1 <= hours <= _MAX_HOURS:
        raise ValueError(f"Expected hours in [1, {_MAX_HOURS}], got {hours}.")


@dataclass(frozen=True)
class SimWeatherSource:
    """The simulator's weather, the same at every place of the (one-city) simulation.

    Parameters
    ----------
    weather
        The seeded weather to answer from.
    """

    weather: SimWeather = field(default_factory=SimWeather)

    async def hourly(self, lat: float, lon: float, start_ts: float, hours: int) -> WeatherHours:
        """Weather of ``hours`` consecutive hours from the hour containing ``start_ts``."""
        _check_query(lat, lon, start_ts, hours)
        # A year of hours takes tens of milliseconds: off the event loop.
        return await asyncio.to_thread(self.weather.hourly, start_ts, hours)


_Temperature = Annotated[float, Field(ge=-90.0, le=60.0, allow_inf_nan=False)]
_Precipitation = Annotated[float, Field(ge=0.0, le=500.0, allow_inf_nan=False)]


class _OpenMeteoHourly(BaseModel):
    """The ``hourly`` block of an answer with ``timeformat=unixtime``.

    Open-Meteo sends ``null`` where a model has no value for an hour; those stay ``None``
    here and are rejected, with the hours they affect, by the caller.
    """

    # Open-Meteo may add variables and metadata; only these three matter to us.
    model_config = ConfigDict(extra="ignore", frozen=True)

    time: list[int] = Field(description="Hour starts, Unix seconds (UTC)")
    temperature_2m: list[_Temperature | None] = Field(description="Air temperature at 2 m, °C")
    precipitation: list[_Precipitation | None] = Field(
        description="Precipitation of the preceding hour, mm"
    )

    @model_validator(mode="after")
    def _equal_lengths(self) -> Self:
        lengths = {
            "time": len(self.time),
            "temperature_2m": len(self.temperature_2m),
            "precipitation": len(self.precipitation),
        }
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Expected hourly arrays of equal length, got {lengths}")
        return self


class _OpenMeteoAnswer(BaseModel):
    """An Open-Meteo forecast answer; unknown top-level keys (elevation, units…) ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    hourly: _OpenMeteoHourly


class _OpenMeteoError(BaseModel):
    """Open-Meteo's error body: ``{"error": true, "reason": "..."}``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    reason: str


def _utc_date(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d")


def _utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")


def _validation_summary(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    more = f" (and {err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return "; ".join(parts) + more


def _no_nulls(name: str, times: Sequence[int], values: Sequence[float | None]) -> FloatArray:
    missing = [t for t, v in zip(times, values, strict=True) if v is None]
    if missing:
        raise WeatherError(
            f"Expected a {name} value for every hour, got null for {len(missing)} of "
            f"{len(values)} hours, first at {_utc_iso(missing[0])}: the forecaster needs "
            "every hour, and filling gaps here would hide a data problem."
        )
    return np.asarray(values, dtype=np.float64)


class OpenMeteoWeatherSource:
    """Hourly temperature and precipitation from an Open-Meteo-compatible forecast API.

    Sends ``GET {base_url}/v1/forecast`` with ``latitude``, ``longitude``,
    ``hourly=temperature_2m,precipitation``, ``timeformat=unixtime``, ``timezone=GMT``
    and the UTC ``start_date``/``end_date`` covering the requested hours (Open-Meteo
    returns whole days; the surplus hours are dropped here).

    Parameters
    ----------
    base_url
        Server root, e.g. ``"https://api.open-meteo.com"`` (from configuration, not code).
    timeout_s
        Timeout of one request (connect, read, write and pool each).
    client
        An ``httpx.AsyncClient`` to reuse across calls; its owner closes it. Without one,
        each call opens and closes its own client.

    Notes
    -----
    Open-Meteo's ``precipitation`` at time ``t`` is the sum over the hour *before* ``t``,
    whereas :class:`~sim.weather.WeatherHours` files an hour's precipitation under the
    hour's start. The precipitation of the hour starting at ``t`` is therefore read at
    ``t + 1 h``, and the request reaches one hour past the last requested hour.
    """

    def __init__(
        self, base_url: str, timeout_s: float = 10.0, client: httpx.AsyncClient | None = None
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"Expected an http(s) base_url, got {base_url!r}.")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"Expected timeout_s > 0, got {timeout_s}.")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._client = client

    def __repr__(self) -> str:
        return f"OpenMeteoWeatherSource(base_url={self.base_url!r}, timeout_s={self.timeout_s})"

    async def hourly(self, lat: float, lon: float, start_ts: float, hours: int) -> WeatherHours:
        """Weather of ``hours`` consecutive hours from the hour containing ``start_ts``.

        Raises
        ------
        ValueError
            If the query itself is out of range.
        WeatherError
            If the server cannot be reached, times out, answers with an error status or
            with a body that lacks, nulls or mismatches the hourly values asked for.
        """
        _check_query(lat, lon, start_ts, hours)
        first_ts = math.floor(start_ts / _S_PER_HOUR) * _S_PER_HOUR
        last_ts = first_ts + (hours - 1) * _S_PER_HOUR
        params = {
            "latitude": f"{lat:.5f}",
            "longitude": f"{lon:.5f}",
            "hourly": "temperature_2m,precipitation",
            "timeformat": "unixtime",
            "timezone": "GMT",
            "start_date": _utc_date(first_ts),
            "end_date": _utc_date(last_ts + _S_PER_HOUR),
        }
        response = await self._get(params)
        if response.status_code != httpx.codes.OK:
            raise WeatherError(
                f"Expected HTTP 200 from Open-Meteo at {self.base_url}, got "
                f"{response.status_code}: {self._reason(response)}"
            )
        try:
            answer = _OpenMeteoAnswer.model_validate_json(response.content)
        except ValidationError as err:
            raise WeatherError(
                f"Malformed Open-Meteo answer from {self.base_url}: {_validation_summary(err)}"
            ) from err
        return self._select(answer.hourly, first_ts, hours)

    async def _get(self, params: dict[str, str]) -> httpx.Response:
        url = f"{self.base_url}/v1/forecast"
        try:
            if self._client is not None:
                return await self._client.get(url, params=params, timeout=self.timeout_s)
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                return await client.get(url, params=params)
        except httpx.TimeoutException as err:
            raise WeatherError(
                f"Open-Meteo at {self.base_url} did not answer within {self.timeout_s} s "
                f"({type(err).__name__})."
            ) from err
        except httpx.HTTPError as err:
            raise WeatherError(
                f"Open-Meteo request to {url} failed: {type(err).__name__}: {err}"
            ) from err

    @staticmethod
    def _reason(response: httpx.Response) -> str:
        try:
            return _OpenMeteoError.model_validate_json(response.content).reason
        except ValidationError:
            text = response.text.strip()
            return text[:200] if text else "(empty body)"

    def _select(self, hourly: _OpenMeteoHourly, first_ts: int, hours: int) -> WeatherHours:
        wanted = [first_ts + k * _S_PER_HOUR for k in range(hours)]
        # Precipitation of the hour starting at t is reported at t + 1 h (see Notes).
        wanted_rain = [t + _S_PER_HOUR for t in wanted]
        position = {t: i for i, t in enumerate(hourly.time)}
        absent = [t for t in sorted({*wanted, *wanted_rain}) if t not in position]
        if absent:
            covered = (
                f"{_utc_iso(min(hourly.time))} to {_utc_iso(max(hourly.time))}"
                if hourly.time
                else "no hours"
            )
            raise WeatherError(
                f"Expected hourly values from {_utc_iso(wanted[0])} to "
                f"{_utc_iso(wanted_rain[-1])}, Open-Meteo's answer lacks {len(absent)} of "
                f"them (first {_utc_iso(absent[0])}); it covers {covered}."
            )
        temp = [hourly.temperature_2m[position[t]] for t in wanted]
        rain = [hourly.precipitation[position[t]] for t in wanted_rain]
        return WeatherHours(
            ts=np.asarray(wanted, dtype=np.float64),
            temp_c=_no_nulls("temperature_2m", wanted, temp),
            precipitation_mm=_no_nulls("precipitation", wanted_rain, rain),
        )


def weather_source_from_url(url: str | None, *, timeout_s: float = 10.0) -> WeatherSource:
    """The weather source configured by ``url``.

    Parameters
    ----------
    url
        ``None`` (or empty) for the simulator's weather; otherwise the root of an
        Open-Meteo-compatible server, e.g. ``"https://api.open-meteo.com"``.
    timeout_s
        Request timeout of the HTTP source.
    """
    if not url:
        return SimWeatherSource()
    return OpenMeteoWeatherSource(url, timeout_s=timeout_s)
