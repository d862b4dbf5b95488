"""Solomon-style VRPTW instances of any size, for measuring the routing engines beyond 100 customers.

Solomon's classes, generated the way his (and Gehring and Homberger's) were described:

* ``R``: customers uniformly random over the square;
* ``C``: customers in clusters (a few centres, normally scattered around them);
* ``RC``: half of each.

The square's side grows with the square root of the customer count (100 customers on a side
of 100, as Solomon's), so the density, and with it a route's length in customers, stays
that of the originals. The depot is at the centre, open for ``horizon``. Demands are 10-50
(a vehicle carries 200); service takes 10 (``R``, ``RC``) or 90 (``C``). Each customer's
window is centred on a time a vehicle could serve it, going out directly from the depot and
still getting back, half-width 15-60 (R1/C1/RC1's tight windows); so every instance is
feasible with one vehicle per customer, and the fleet is ``ceil(n / 4)``.

Seeded: one ``(n, kind, seed)`` is always the same file. Written in Solomon's text format, so
:func:`planners.solomon.read_solomon`, ``bms bench route`` and ``bms.bench.route_table`` read
them as they read Solomon's::

    .venv/bin/python -m bms.bench.vrptw_instances --out tests/data/vrptw --sizes 200 400 1000
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["KINDS", "generate", "instance_name", "main"]

KINDS = ("C", "R", "RC")
_CAPACITY = 200
_HORIZON = 1000
_SIDE_PER_SQRT_100 = 100.0


def instance_name(n: int, kind: str, seed: int) -> str:
    """``gen_rc1000_s0``: what the file of ``generate(n, kind, seed)`` is called."""
    return f"gen_{kind.lower()}{n}_s{seed}"


def generate(n: int, kind: str, seed: int = 0) -> str:
    """The Solomon-format text of one instance of ``n`` customers of class ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"Expected kind among {KINDS}, got {kind!r}.")
    if not 1 <= n <= 100_000:
        raise ValueError(f"Expected 1 <= n <= 100000 customers, got {n}.")
    rng = np.random.default_rng([seed, n, KINDS.index(kind)])
    side = _SIDE_PER_SQRT_100 * math.sqrt(n / 100.0)
    depot = np.array([side / 2, side / 2])
    n_clustered = {"C": n, "R": 0, "RC": n // 2}[kind]
    centres = rng.uniform(0.1 * side, 0.9 * side, size=(max(1, round(math.sqrt(n))), 2))
    around = centres[rng.integers(0, len(centres), n_clustered)] + rng.normal(0.0, side / 40, (n_clustered, 2))
    xy = np.vstack([around, rng.uniform(0.0, side, (n - n_clustered, 2))])
    xy = np.clip(np.rint(xy), 0, round(side))
    rng.shuffle(xy)
    demand = rng.integers(10, 51, n)
    service = 90 if kind == "C" else 10
    # Scale time with the square as well, so a route covers a similar share of it.
    horizon = round(_HORIZON * math.sqrt(n / 100.0))
    direct = np.hypot(*(xy - depot).T)
    earliest = np.ceil(direct)
    latest = np.floor(horizon - direct - service)
    centre = rng.uniform(earliest, np.maximum(latest, earliest))
    half = rng.uniform(15, 60, n)
    ready = np.maximum(0, np.floor(centre - half)).astype(int)
    due = np.maximum(ready, np.minimum(latest, np.ceil(centre + half))).astype(int)
    vehicles = math.ceil(n / 4)
    lines = [
        instance_name(n, kind, seed).upper(), "", "VEHICLE", "NUMBER     CAPACITY", f"{vehicles:>5} {_CAPACITY:>11}", "",
        "CUSTOMER", "CUST NO.  XCOORD.   YCOORD.    DEMAND   READY TIME  DUE DATE   SERVICE   TIME", " ",
        f"{0:>5} {int(depot[0]):>9} {int(depot[1]):>10} {0:>10} {0:>10} {horizon:>10} {0:>10}",
    ]  # fmt: skip
    for i in range(n):
        lines.append(
            f"{i + 1:>5} {int(xy[i, 0]):>9} {int(xy[i, 1]):>10} {int(demand[i]):>10} "
            f"{ready[i]:>10} {due[i]:>10} {service:>10}"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write one file per size and class."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the .txt files to")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 400, 1000], help="customer counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        for kind in KINDS:
            path = args.out / f"{instance_name(n, kind, args.seed)}.txt"
            path.write_text(generate(n, kind, args.seed))
            sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
