"""Tests for :mod:`twins.zones`: the square grid that names fleet areas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twins.zones import ZoneGrid

KM_PER_DEG_LAT = 111.32


def test_zone_ids_are_pinned() -> None:
    """Zone names are stable: Berlin's centre is z5846_907 on the 1 km grid."""
    grid = ZoneGrid()
    assert grid.zone_id(52.52, 13.40) == "z5846_907"
    assert grid.zone_id(48.14, 11.58) == "z5358_860"


def test_cells_around_the_origin() -> None:
    """Row and column are floors: just north-east of (0, 0) is z0_0, just south-west z-1_-1."""
    grid = ZoneGrid()
    assert grid.zone_id(0.005, 0.005) == "z0_0"
    assert grid.zone_id(-0.005, -0.005) == "z-1_-1"


def test_rows_are_cell_km_bands_of_latitude() -> None:
    """A row is cell_km of latitude: 0.999 km north is row 0, 1.001 km north is row 1."""
    grid = ZoneGrid()
    rows, _ = grid.rows_cols(np.array([0.999, 1.001, 2.5]) / KM_PER_DEG_LAT, np.zeros(3))
    np.testing.assert_array_equal(rows, [0, 1, 2])
    assert rows.dtype == np.int64


def test_cell_size_scales_the_grid() -> None:
    """On a 2 km grid the same point falls in row 5846 // 2."""
    assert ZoneGrid(cell_km=2.0).zone_id(52.52, 13.40).startswith("z2923_")


def test_cells_stay_square_at_high_latitude() -> None:
    """At 60° N a column is 1 km of longitude there (not at the equator): ±0.4 km stays in
    the cell, ±0.6 km moves one column either way."""
    grid = ZoneGrid()
    lat = 6679.5 / KM_PER_DEG_LAT  # centre of row 6679, about 60.003° N
    km_per_deg_lon = KM_PER_DEG_LAT * math.cos(math.radians(60.0))
    centre_lon = 556.5 / km_per_deg_lon
    cols = [
        grid.rows_cols(np.array([lat]), np.array([centre_lon + dx / km_per_deg_lon]))[1][0]
        for dx in (-0.6, -0.4, 0.0, 0.4, 0.6)
    ]
    assert cols == [555, 556, 556, 556, 557]


def test_columns_have_straight_edges_within_a_row() -> None:
    """All of a row shares one column width (taken at the row's centre), so points at the
    bottom and top of a row with the same longitude always share a column."""
    grid = ZoneGrid()
    bottom, top = 6679.01 / KM_PER_DEG_LAT, 6679.99 / KM_PER_DEG_LAT  # row 6679, about 60° N
    lon = np.linspace(10.0, 10.2, 2001)
    rows_b, cols_b = grid.rows_cols(np.full(lon.size, bottom), lon)
    rows_t, cols_t = grid.rows_cols(np.full(lon.size, top), lon)
    assert set(rows_b.tolist()) == set(rows_t.tolist()) == {6679}
    np.testing.assert_array_equal(cols_b, cols_t)


def test_unknown_position() -> None:
    """A NaN latitude or longitude has zone "unknown"; known positions beside it are unaffected."""
    grid = ZoneGrid()
    lat = np.array([np.nan, 52.52, 52.52, np.nan])
    lon = np.array([13.40, np.nan, 13.40, np.nan])
    assert grid.zone_ids(lat, lon) == ["unknown", "unknown", "z5846_907", "unknown"]


def test_zone_ids_agree_with_zone_id() -> None:
    """The vectorised zone_ids() names every point as zone_id() does (seeded points)."""
    rng = np.random.default_rng(0)
    lat = rng.uniform(-60.0, 60.0, 200)
    lon = rng.uniform(-180.0, 180.0, 200)
    grid = ZoneGrid(cell_km=0.5)
    assert grid.zone_ids(lat, lon) == [grid.zone_id(a, b) for a, b in zip(lat, lon, strict=True)]


@pytest.mark.parametrize("cell_km", [0.0, -1.0, math.nan])
def test_cell_size_must_be_positive(cell_km: float) -> None:
    """cell_km must be a positive number."""
    with pytest.raises(ValueError, match="Expected cell_km > 0"):
        ZoneGrid(cell_km=cell_km)


def test_centre_of_round_trips() -> None:
    """A zone's centre lies in that zone; names that are not zone ids have no centre."""
    grid = ZoneGrid(1.0)
    for lat, lon in [(52.52, 13.405), (-33.9, 18.4), (40.7, -74.0)]:
        zone = grid.zone_id(lat, lon)
        centre = grid.centre_of(zone)
        assert centre is not None and grid.zone_id(*centre) == zone
    assert grid.centre_of("unknown") is None and grid.centre_of("z1") is None
