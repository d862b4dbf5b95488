"""Solomon-style instances of any size (bms/bench/vrptw_instances.py), and the ones in tests/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bms.bench.route import main_route
from bms.bench.vrptw_instances import KINDS, generate, instance_name
from planners.solomon import parse_solomon

DATA = Path(__file__).resolve().parents[2] / "data" / "vrptw"


@pytest.mark.parametrize("kind", KINDS)
def test_an_instance_is_seeded_readable_and_every_customer_servable(kind: str) -> None:
    text = generate(200, kind, seed=3)
    assert text == generate(200, kind, seed=3) and text != generate(200, kind, seed=4)
    inst = parse_solomon(text)
    assert inst.num_customers == 200 and inst.num_vehicles == 50 and inst.capacity == 200
    direct = inst.euclidean()[0, 1:]
    ready, due, service = np.asarray(inst.ready[1:]), np.asarray(inst.due[1:]), np.asarray(inst.service[1:])
    # Out from the depot, served within the window, and back before the depot closes.
    assert (ready <= due).all() and (np.maximum(ready, direct) <= due).all()
    assert (np.maximum(ready, direct) + service + direct <= inst.due[0] + 1e-9).all()
    assert 10 <= min(inst.demand[1:]) and max(inst.demand[1:]) <= 50


def test_the_repositorys_instances_are_the_generators() -> None:
    files = sorted(DATA.glob("*.txt"))
    assert len(files) == 9
    for n in (200, 400, 1000):
        for kind in KINDS:
            assert (DATA / f"{instance_name(n, kind, 0)}.txt").read_text() == generate(n, kind, 0)
    with pytest.raises(ValueError, match="Expected kind among"):
        generate(100, "X")


@pytest.mark.parametrize("engine", ["ortools", "pyvrp"])
def test_both_engines_route_a_generated_instance_feasibly(engine: str) -> None:
    result = main_route(DATA / f"{instance_name(200, 'RC', 0)}.txt", 3.0, "distance", engine=engine)
    assert result["feasible"], result.get("violations")
    assert result["served"] == 200 and "gap_pct" not in result


def test_the_side_by_side_table_measures_each_engine_against_the_better() -> None:
    from bms.bench.route_table import engine_gap_table

    def row(name: str, engine: str, vehicles: int, distance: float, feasible: bool = True,
            objective: str = "hierarchical") -> dict[str, object]:
        return {"instance": name, "customers": 200, "engine": engine, "vehicles": vehicles,
                "distance": distance, "feasible": feasible, "objective": objective}  # fmt: skip

    table = engine_gap_table([
        row("A", "ortools", 10, 100.0), row("A", "pyvrp", 9, 110.0),
        row("B", "ortools", 10, 100.0), row("B", "pyvrp", 10, 95.0),
        row("C", "ortools", 10, 100.0, feasible=False), row("C", "pyvrp", 12, 120.0),
        # Under DIMACS's distance objective the vehicles are free: distance alone decides.
        row("D", "ortools", 8, 100.0, objective="distance"), row("D", "pyvrp", 9, 98.0, objective="distance"),
    ])  # fmt: skip
    lines = table.splitlines()
    assert lines[2] == "| A | 200 | 10 | 100.0 | -9.09 (+1 veh.) | 9 | 110.0 | 0.00 |"
    assert lines[3] == "| B | 200 | 10 | 100.0 | 5.26 | 10 | 95.0 | 0.00 |"
    assert lines[4] == "| C | 200 | 10 | 100.0 | infeasible | 12 | 120.0 | 0.00 |"
    assert lines[5] == "| D | 200 | 8 | 100.0 | 2.04 | 9 | 98.0 | 0.00 |"
    assert lines[6] == "| **mean gap** |  |  |  | -0.60 |  |  | 0.00 |"
