"""``bms models ...``: train, evaluate and manage the registered models."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from bms.cli_support import ConfigOpt, load_settings, on_postgres
from bms.settings import Settings

models_app = typer.Typer(help="Train, evaluate, promote and roll back the models.", no_args_is_help=True)

ActorOpt = Annotated[str, typer.Option("--actor", help="Who makes the change (audit trail)")]
T = TypeVar("T")


def _with_registry(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(registry)`` against the registry (BMS_POSTGRES_URL or the embedded server)."""
    from contracts.errors import RegistryError
    from models.registry import ModelRegistry
    from store.model_registry_store import ModelRegistryStore

    return on_postgres(
        settings,
        "bms-models-cli",
        lambda conn: fn(ModelRegistry(ModelRegistryStore(conn), settings.artifacts_dir())),
        refused=(RegistryError, ValueError),
    )


@models_app.command("train")
def train(
    config: ConfigOpt = None,
    quick: Annotated[bool, typer.Option("--quick", help="Small training sets (seconds, for trials)")] = False,
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Train only these models")] = None,  # noqa: UP045
    promote: Annotated[bool, typer.Option("--promote/--candidate", help="Put the new versions in production")] = False,
    seed: Annotated[int, typer.Option(help="Seed of every simulator and fit")] = 7,
    cells: Annotated[Optional[Path], typer.Option("--cells", help="Lab cells for the degradation model")] = None,  # noqa: UP045
    actor: ActorOpt = "bms-cli",
) -> None:
    """Build every training set, train every model, register each as a new version.

    A model with nothing in production yet is promoted whatever --candidate says, so a
    fresh system serves at once.
    """
    logging.basicConfig(level=logging.WARNING)
    from models.training import TrainingPlan, register_all, train_all

    settings = load_settings(config)
    plan = TrainingPlan.quick(seed) if quick else TrainingPlan(seed=seed)
    if cells is not None:
        plan = TrainingPlan(**{**plan.__dict__, "cells_dir": cells})
    with tempfile.TemporaryDirectory(prefix="bms-train-") as work:
        trained = train_all(plan, Path(work), only, progress=lambda m: typer.echo(m, err=True))

        async def register(registry: Any) -> list[dict[str, Any]]:
            done = await register_all(registry, trained, actor, promote)
            return [
                {"name": v.name, "version": v.version, "promoted": p, "metrics": dict(v.metrics)}
                for v, p in done
            ]

        result = _with_registry(settings, register)
    for row in result:
        typer.echo(f"registered {row['name']} v{row['version']}" + (" (production)" if row["promoted"] else " (candidate)"), err=True)
    sys.stdout.write(json.dumps({"models": result, "seconds": {t.name: round(t.seconds, 1) for t in trained}}) + "\n")


@models_app.command("list")
def list_models(config: ConfigOpt = None) -> None:
    """Every model: its versions, stages and what serves now."""

    async def show(registry: Any) -> list[dict[str, Any]]:
        out = []
        for name in await registry.store.names():
            serving = await registry.store.serving_or_none(name)
            out.append({
                "name": name,
                "production": None if serving is None else serving.production_version,
                "candidate": None if serving is None else serving.candidate_version,
                "candidate_fraction": 0.0 if serving is None else serving.candidate_fraction,
                "versions": [
                    {"version": v.version, "stage": str(v.stage), "metrics": dict(v.metrics)}
                    for v in await registry.store.versions(name)
                ],
            })
        return out

    sys.stdout.write(json.dumps({"models": _with_registry(load_settings(config), show)}) + "\n")


@models_app.command("promote")
def promote(name: str, version: int, actor: ActorOpt = "bms-cli", config: ConfigOpt = None) -> None:
    """Put VERSION of NAME in production (running replicas switch within seconds)."""
    cfg = _with_registry(load_settings(config), lambda r: r.store.promote(name, version, actor))
    typer.echo(f"{name}: production v{cfg.production_version}")


@models_app.command("rollback")
def rollback(name: str, actor: ActorOpt = "bms-cli", config: ConfigOpt = None) -> None:
    """Return NAME to the version that was in production before the current one."""
    cfg = _with_registry(load_settings(config), lambda r: r.store.rollback(name, actor))
    typer.echo(f"{name}: production v{cfg.production_version}")


@models_app.command("ab")
def ab(
    name: str,
    candidate_version: int,
    fraction: Annotated[float, typer.Argument(help="Share of batteries on the candidate, (0, 1]")],
    actor: ActorOpt = "bms-cli",
    config: ConfigOpt = None,
) -> None:
    """Split NAME's traffic: FRACTION of the batteries (by id hash) see CANDIDATE_VERSION."""
    cfg = _with_registry(load_settings(config), lambda r: r.store.start_ab(name, candidate_version, fraction, actor))
    typer.echo(f"{name}: v{cfg.candidate_version} on {cfg.candidate_fraction:.0%} of batteries")


@models_app.command("ab-stop")
def ab_stop(name: str, actor: ActorOpt = "bms-cli", config: ConfigOpt = None) -> None:
    """End NAME's A/B split."""
    cfg = _with_registry(load_settings(config), lambda r: r.store.stop_ab(name, actor))
    typer.echo(f"{name}: production v{cfg.production_version} only")


@models_app.command("eval")
def evaluate(
    cells: Annotated[Path, typer.Option("--cells", exists=True, file_okay=False, help="Directory of per-cycle CSV files")],
    seed: Annotated[int, typer.Option(help="Seed of every fold")] = 0,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also write forecast-vs-actual PNGs here")] = None,  # noqa: UP045
) -> None:
    """Leave-one-cell-out RUL evaluation of the degradation LSTM against two baselines."""
    logging.basicConfig(level=logging.WARNING)
    from models.cell_eval import evaluate_cells

    result = evaluate_cells(cells, seed=seed, progress=lambda m: typer.echo(m, err=True))
    if plot is not None:
        from models.forecast_plot import plot_cells

        plot_cells(cells, plot, seed=seed)
    sys.stdout.write(json.dumps(result) + "\n")
