"""`bms bench route`: route a Solomon-format VRPTW instance with the planner's routing model.

The instance goes through the same :func:`planners.routing.solve` that routes technicians;
the result is then re-checked by :func:`planners.solomon.check_feasibility`, which shares no
code with the model, and compared with the best-known solution when ``bks.csv`` lists it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from planners.routing import solve
from planners.routing_params import ENGINES, ITERATED_LOCAL_SEARCH, Objective, RoutingParams
from planners.solomon import (
    SCALE,
    BksEntry,
    check_feasibility,
    read_bks,
    read_solomon,
    routes_of,
    to_routing_problem,
    total_distance,
)

__all__ = ["DEFAULT_BKS", "SEARCH_BY_OBJECTIVE", "find_bks", "main_route"]

#: Where the repository keeps the Solomon best-known solutions (``../shared`` of the checkout).
DEFAULT_BKS = Path(__file__).resolve().parents[3] / "shared" / "data" / "solomon" / "bks.csv"


#: Search per objective, from 10 s runs with OR-Tools 9.15 (gap to the BKS of the objective).
#: Distance: iterated local search keeps improving where guided local search stalls
#: (R101 +0.0 % against +1.3 %, RC101 +1.7 to +2.3 % against +3.9 %, R201 +1.5 % against
#: +5.8 %, RC201 +1.1 % against +3.2 %; C101 and C201 optimal with both).
#: Hierarchical: guided local search removes vehicles better (RC201 4 vehicles against 5,
#: R201 and R101 the same vehicles at +0.2 % against +1.1 % distance).
SEARCH_BY_OBJECTIVE: dict[str, str] = {
    "distance": ITERATED_LOCAL_SEARCH,
    "hierarchical": "GUIDED_LOCAL_SEARCH",
}


def find_bks(instance: Path, bks_csv: Path | None = None) -> BksEntry | None:
    """The best-known solution of ``instance``, looked up by file stem, case-insensitively.

    Looks in ``bks_csv`` if given, else next to the instance (its folder and the folder
    above, as in ``solomon/txt/C101.txt`` with ``solomon/bks.csv``), else in
    :data:`DEFAULT_BKS`.
    """
    candidates = (
        [bks_csv]
        if bks_csv is not None
        else [instance.parent / "bks.csv", instance.parent.parent / "bks.csv", DEFAULT_BKS]
    )
    for path in candidates:
        if path.is_file():
            entry = read_bks(path).get(instance.stem.upper())
            if entry is not None:
                return entry
    return None


def main_route(
    instance: Path,
    time_limit_s: float,
    objective: str,
    *,
    local_search_metaheuristic: str | None = None,
    engine: str = "ortools",
) -> dict[str, Any]:
    """Solve one instance and report it as the fields of the benchmark's JSON line.

    Parameters
    ----------
    instance
        A Solomon or Gehring-Homberger format file.
    time_limit_s
        Search time limit (model building and checking come on top).
    objective
        ``"distance"`` (DIMACS: distances truncated to one decimal, every customer
        mandatory, no vehicle cost) or ``"hierarchical"`` (exact distances, vehicles
        first).
    local_search_metaheuristic
        As in :class:`~planners.routing_params.RoutingParams`; ``None`` picks the one that
        measured best for the objective (:data:`SEARCH_BY_OBJECTIVE`). OR-Tools only.
    engine
        ``"ortools"`` or ``"pyvrp"`` (:attr:`RoutingParams.engine`).

    Returns
    -------
    dict
        ``instance, objective, engine, search, customers, fleet, vehicles, distance, served,
        feasible, time_s`` and, when the instance has a best-known solution, ``bks_distance,
        bks_vehicles, gap_pct, excess_vehicles``; ``violations`` lists the first few problems found by the
        checker when the plan is infeasible.
    """
    if objective not in SCALE:
        raise ValueError(f"Expected objective in {sorted(SCALE)}, got {objective!r}.")
    obj: Objective = "distance" if objective == "distance" else "hierarchical"
    if engine not in ENGINES:
        raise ValueError(f"Expected engine in {list(ENGINES)}, got {engine!r}.")
    search = local_search_metaheuristic or SEARCH_BY_OBJECTIVE[obj]
    data = read_solomon(instance)
    problem = to_routing_problem(data, obj)
    params = RoutingParams(
        time_limit_s=time_limit_s, objective=obj, local_search_metaheuristic=search, engine=engine  # type: ignore[arg-type]
    )

    started = time.perf_counter()
    plan = solve(problem, params)
    elapsed = time.perf_counter() - started

    routes = routes_of(plan)
    dimacs = obj == "distance"
    violations = check_feasibility(data, routes, dimacs=dimacs)
    distance = total_distance(data, routes, dimacs=dimacs)
    result: dict[str, Any] = {
        "instance": data.name,
        "objective": obj,
        "engine": engine,
        "search": search if engine == "ortools" else "hybrid genetic search",
        "customers": data.num_customers,
        "fleet": data.num_vehicles,
        "vehicles": len(routes),
        "distance": round(distance, 2),
        "served": plan.served,
        "feasible": not violations,
        "time_s": round(elapsed, 2),
    }
    bks = find_bks(instance)
    if bks is not None:
        bks_vehicles, bks_distance = bks.for_objective(obj)
        result["bks_distance"] = bks_distance
        result["bks_vehicles"] = bks_vehicles
        result["gap_pct"] = round(100.0 * (distance - bks_distance) / bks_distance, 2) + 0.0
        # Under "hierarchical" a distance gap means little unless the vehicles match.
        result["excess_vehicles"] = len(routes) - bks_vehicles
    if violations:
        result["violations"] = violations[:5]
    return result
