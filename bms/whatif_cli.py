"""``bms whatif``: run what-if scenarios on the production twins, models and planner.

Without a running system, the command starts what a what-if needs (PostgreSQL for the
model registry, embedded unless ``BMS_POSTGRES_URL`` is set; Ray; the model deployments,
trained with the quick plan if the registry has none) and stops it at the end. With
``--address``, it joins a running system's Ray cluster and uses that system's model
deployments instead, which is also how a scenario starts from the live twins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, TextIO

import typer

from bms.cli_support import ConfigOpt, load_settings
from bms.settings import Settings

if TYPE_CHECKING:
    from runtime.whatif import WhatIfProgress
    from sim.scenario import Scenario
    from sim.whatif_engine import FleetStart

__all__ = ["ProgressBar", "load_scenarios", "models_session", "whatif"]


class ProgressBar:
    """A one-line progress bar on stderr (no dependency; redraws at most 5 times a second)."""

    def __init__(self, width: int = 30, stream: TextIO | None = None) -> None:
        self.width = width
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._started = time.perf_counter()

    def __call__(self, p: WhatIfProgress) -> None:
        now = time.perf_counter()
        if now - self._last < 0.2 and p.overall < 1.0:
            return
        self._last = now
        filled = round(self.width * p.overall)
        elapsed = now - self._started
        eta = elapsed / p.overall - elapsed if p.overall > 0.01 else float("nan")
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {100 * p.overall:5.1f} %  run {p.run_index + 1}/{p.runs} "
            f"{p.scenario} seed {p.seed}  {elapsed:5.0f} s elapsed, ~{eta:4.0f} s left "
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def load_scenarios(paths: Sequence[Path], seeds: int | None) -> list[Scenario]:
    """Read every file (exit 2 naming the file and key if one is invalid); ``seeds``
    replaces each scenario's seeds with 1..N, so all runs pair by seed."""
    from sim.scenario import ScenarioError, load_scenario

    out = []
    for p in paths:
        try:
            sc = load_scenario(p)
        except ScenarioError as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(2) from None
        out.append(sc.with_seeds(list(range(1, seeds + 1))) if seeds else sc)
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        typer.echo(f"Expected scenarios with distinct names, got {names}.", err=True)
        raise typer.Exit(2)
    return out


@contextlib.contextmanager
def models_session(settings: Settings, address: str | None) -> Iterator[str]:
    """Ray and the model deployments for a what-if; yields the Serve app name to score with."""
    import ray

    from runtime.names import SERVE_APP_NAME
    from runtime.system import ensure_models, init_ray, run_migrations, shutdown_ray
    from runtime.whatif import WHATIF_APP_NAME, deploy_models

    if address is not None:
        ray.init(address=address, namespace=settings.ray.namespace, log_to_driver=False)
        try:
            yield SERVE_APP_NAME
        finally:
            ray.shutdown()
        return
    from bms.services import EmbeddedServices
    from bms.system import ray_options

    services = EmbeddedServices(settings)
    urls = services.start()
    try:
        init_ray(ray_options(settings, include_dashboard=False))
        asyncio.run(run_migrations(urls.postgres_url))
        root = settings.artifacts_dir().resolve()
        asyncio.run(ensure_models(urls.postgres_url, root))
        deploy_models(urls.postgres_url, str(root))
        yield WHATIF_APP_NAME
    finally:
        shutdown_ray()
        services.stop()


def _fleet_start(scenarios: Sequence[Scenario], namespace: str) -> FleetStart | None:
    from runtime.whatif import fleet_start_from_live
    from sim.whatif_engine import FleetStart

    sources = {(s.start.source, s.start.path) for s in scenarios if s.start.source != "generated"}
    if not sources:
        return None
    if len(sources) > 1:
        typer.echo(
            f"Expected one fleet start for all scenarios, got {sorted(map(str, sources))}.",
            err=True,
        )
        raise typer.Exit(2)
    source, path = sources.pop()
    if source == "file":
        assert path is not None
        return FleetStart.load(Path(path))
    return asyncio.run(fleet_start_from_live(namespace))


def whatif(
    scenarios: Annotated[
        list[Path],
        typer.Argument(
            help="Scenario YAML files; the first named 'baseline' (else the first) is compared against"
        ),
    ],
    seeds: Annotated[
        Optional[int],  # noqa: UP045  (typer reads the annotation at runtime)
        typer.Option(help="Run every scenario on seeds 1..N (default: each file's seeds)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="Report folder (KPI tables, plots, summary.md)")] = Path(
        "whatif-report"
    ),
    address: Annotated[
        Optional[str],  # noqa: UP045  (typer reads the annotation at runtime)
        typer.Option(
            help="Join this running system's Ray cluster (e.g. 'auto') and use its models"
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Run what-if scenarios through the production twins, models and planner, and write a
    comparison report (paired by seed, with 95 % confidence intervals)."""
    import logging

    import numpy as np

    from runtime.whatif import run_whatif
    from sim.report import write_report

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings(config)
    chosen = load_scenarios(scenarios, seeds)
    baseline = next((s.name for s in chosen if s.name == "baseline"), chosen[0].name)
    # The baseline runs (and reports) first, the others in the order given.
    chosen = sorted(chosen, key=lambda s: s.name != baseline)
    started = time.perf_counter()
    with models_session(settings, address) as app_name:
        start = _fleet_start(chosen, settings.ray.namespace)
        bar = ProgressBar()
        try:
            results = asyncio.run(run_whatif(chosen, app_name=app_name, progress=bar, start=start))
        finally:
            bar.close()
    summary = write_report(
        results, out, {s.name: s for s in chosen}, baseline if len(chosen) > 1 else None
    )
    typer.echo(f"Report: {summary}")
    typer.echo(json.dumps({
        "scenarios": [s.name for s in chosen], "runs": len(results), "baseline": baseline,
        "report": str(summary), "wall_s": round(time.perf_counter() - started, 1),
        "availability_pct": {
            s.name: round(float(np.mean([r.total["availability_pct"] for r in results if r.scenario == s.name])), 2)
            for s in chosen
        },
    }))  # fmt: skip


def whatif_snapshot(
    out: Annotated[Path, typer.Argument(help="File to write (.npz)")],
    address: Annotated[str, typer.Option(help="The running system's Ray address")] = "auto",
    config: ConfigOpt = None,
) -> None:
    """Save today's fleet from the running system's twins, for scenarios with
    ``start: {source: file, path: ...}``."""
    import ray

    from runtime.whatif import fleet_start_from_live

    settings = load_settings(config)
    ray.init(address=address, namespace=settings.ray.namespace, log_to_driver=False)
    try:
        start = asyncio.run(fleet_start_from_live(settings.ray.namespace))
    finally:
        ray.shutdown()
    start.save(out)
    typer.echo(f"Saved {len(start.vehicle_ids)} vehicles to {out}")
