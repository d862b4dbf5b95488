"""``bms models ...``: train, evaluate and manage the registered models."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
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
    # Packs `bms models data` built join the health model's training (nothing is solved here).
    plan = TrainingPlan(**{**plan.__dict__, "electrochem_dir": settings.data_dir / "electrochem"})
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


def _eval_error(option: str, message: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{option}'")


def _electrochem_dir(settings: Settings, cache: Path | None) -> Path:
    return cache if cache is not None else settings.data_dir / "electrochem"


SetsOpt = Annotated[Optional[list[str]], typer.Option("--set", help="A PyBaMM parameter set (repeat; default: all)")]  # noqa: UP045
CacheOpt = Annotated[Optional[Path], typer.Option("--cache", help="Where packs are cached (default <data_dir>/electrochem)")]  # noqa: UP045
HoursOpt = Annotated[float, typer.Option("--hours", help="Hours of rides, parks and charges per pack")]


def _health_packs(sets: Sequence[str] | None, hours: float, cache: Path) -> Any:
    import time

    from models.telemetry_data import build_health_packs, health_pack_specs
    from sim.electrochem import PARAMETER_SETS

    try:
        specs = health_pack_specs(sets or tuple(PARAMETER_SETS), hours=hours)
    except ValueError as err:
        raise _eval_error("--set", str(err)) from err
    started = time.perf_counter()

    def progress(k: int, n: int, spec: Any) -> None:
        typer.echo(f"pack {k + 1}/{n}: {spec.parameter_set} at SOH {spec.soh:g} ({time.perf_counter() - started:.0f} s)", err=True)

    return build_health_packs(specs, cache, progress)


@models_app.command("data")
def build_data(
    sets: SetsOpt = None, hours: HoursOpt = 6.0, cache: CacheOpt = None, config: ConfigOpt = None
) -> None:
    """Build the electrochemical pack set (PyBaMM) the telemetry models are judged on.

    Every parameter set at SOH 100 % to 75 %, each a 13S pack of about 15 Ah riding,
    parking and charging for HOURS; solved once and cached per pack (seconds per
    pack-hour each), so a second run reads the cache.
    """
    import time

    logging.basicConfig(level=logging.WARNING)
    settings = load_settings(config)
    started = time.perf_counter()
    directory = _electrochem_dir(settings, cache)
    packs = _health_packs(sets, hours, directory)
    from models.telemetry_data import write_health_rows

    write_health_rows(packs, directory / "health_rows.json", f"bms models data --hours {hours:g}")
    sys.stdout.write(json.dumps({
        "packs": len(packs.runs), "parameter_sets": sorted(set(packs.group.tolist())),
        "cache_dir": str(directory), "seconds": round(time.perf_counter() - started, 1),
    }) + "\n")  # fmt: skip


@models_app.command("eval-telemetry")
def evaluate_telemetry(
    sets: SetsOpt = None, hours: HoursOpt = 6.0, cache: CacheOpt = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Training seeds 0..N-1 (mean and sd over them)")] = 3,
    write_thresholds: Annotated[Optional[Path], typer.Option("--write-thresholds", help="Also write the detectors' thresholds, calibrated on every set, here (models/data/pack_watch_thresholds.json is the shipped file)")] = None,  # noqa: UP045
    config: ConfigOpt = None,
) -> None:  # fmt: skip
    """The health model on telemetry the simulator did not make, each cell left out in turn.

    Builds (or reads) the electrochemical packs as `bms models data` does, then trains the
    health model as in production plus the packs of every other cell, and compares its SOH
    on the left-out cell's packs with the twin's coulomb-counted estimate and with the
    first model's plain regression. Then replays every pack, and each set's SOH-90 % pack
    with every fault, through the twins, and judges their own evidence with thresholds
    calibrated on the other sets, and a simulated fleet with the simulator's own faults with
    the thresholds of all sets. The last line is one JSON object.
    """
    import datetime

    from models.telemetry_eval import evaluate_health

    logging.basicConfig(level=logging.WARNING)
    if seeds < 1:
        raise _eval_error("--seeds", f"expected N >= 1 seeds, got {seeds}.")
    settings = load_settings(config)
    directory = _electrochem_dir(settings, cache)
    packs = _health_packs(sets, hours, directory)
    try:
        health = evaluate_health(packs, seeds=list(range(seeds)), log=lambda line: typer.echo(line, err=True))
    except ValueError as err:
        raise _eval_error("--set", str(err)) from err
    detectors = _evaluate_detectors(packs, directory, write_thresholds)
    result = {"date": datetime.date.today().isoformat(), "hours_per_pack": hours, "health": health, "detectors": detectors}
    sys.stdout.write(json.dumps(result) + "\n")


def _evaluate_detectors(packs: Any, directory: Path, thresholds_out: Path | None) -> dict[str, Any]:
    """The twins' own evidence with thresholds from the other sets' healthy packs, on the
    healthy packs and on each set's SOH-90 % pack with every fault."""
    from models.anomaly import PackEvidenceParams
    from models.telemetry_data import build_packs, fault_pack_specs
    from models.telemetry_eval import evaluate_detectors, evaluate_fleet
    from models.training import write_pack_thresholds

    base = [r.spec for r in packs.runs if abs(r.spec.soh - 0.9) < 1e-9]
    faulty = build_packs(fault_pack_specs(base), directory)
    typer.echo(f"replaying {len(packs.runs)} healthy and {len(faulty)} faulty packs through the twins", err=True)
    result = evaluate_detectors(packs.runs, faulty)
    if thresholds_out is not None:
        write_pack_thresholds(thresholds_out, result)
    # The simulator's own fleet, judged with the thresholds the packs gave (it had no part in them).
    typer.echo("replaying a simulated fleet through the twins", err=True)
    result["simulator_fleet"] = evaluate_fleet(PackEvidenceParams(tuple(result["production_thresholds"].items())))
    return result


@models_app.command("eval-simulated")
def evaluate_simulated(
    packs: Annotated[int, typer.Option("--packs", help="Fresh simulated packs to forecast")] = 80,
    seeds: Annotated[int, typer.Option("--seeds", help="Training seeds 0..N-1 (mean and sd over them)")] = 1,
    eol_fraction: Annotated[float, typer.Option("--eol-fraction", help="End of life as a fraction of rated capacity")] = 0.8,
    train_steps: Annotated[Optional[int], typer.Option("--train-steps", help="Training steps (default: the live plan's)")] = None,  # noqa: UP045
) -> None:
    """The live degradation model checked on simulated packs it never saw.

    Trains as `bms models train` does (every lab cell under ../shared/data/battery plus
    simulated packs), then forecasts PACKS packs of another simulator seed from a quarter
    and half of their life, against the simulated truth and the three baselines.
    """
    logging.basicConfig(level=logging.WARNING)
    import dataclasses

    from models.cell_eval import CellEvalParams, evaluate_held_out
    from models.degradation_lstm import DegradationParams
    from models.training import TrainingPlan, degradation_training_cells, simulated_pack_cells

    if packs < 2:
        raise _eval_error("--packs", f"expected at least 2 packs, got {packs}.")
    if seeds < 1:
        raise _eval_error("--seeds", f"expected N >= 1 seeds, got {seeds}.")
    if not 0 < eol_fraction < 1:
        raise _eval_error("--eol-fraction", f"expected a fraction in (0, 1), got {eol_fraction}.")
    plan = TrainingPlan()
    params = DegradationParams(train_steps=train_steps or plan.degradation_steps)
    # Seed 1000 + k: no simulator seed the training plan uses.
    held_out = simulated_pack_cells(packs, seed=1000 + plan.seed)
    result = evaluate_held_out(
        held_out, degradation_training_cells(plan), dataclasses.replace(params), 0,
        lambda line: typer.echo(line, err=True),
        eval_params=CellEvalParams(eol_fraction=eol_fraction), seeds=list(range(seeds)),
    )  # fmt: skip
    sys.stdout.write(json.dumps(result) + "\n")


@models_app.command("eval")
def evaluate(
    cells: Annotated[Path, typer.Option("--cells", exists=True, file_okay=False, help="Directory of per-cycle CSV files (with --leave-dataset-out: a folder of dataset folders)")],
    eol_fraction: Annotated[float, typer.Option("--eol-fraction", help="End of life as a fraction of the --eol-basis capacity, in (0, 1)")] = 0.7,
    eol_basis: Annotated[str, typer.Option("--eol-basis", help="nominal (rated capacity) or initial (median of the first three clean cycles)")] = "nominal",
    seeds: Annotated[Optional[int], typer.Option("--seeds", help="Run the evaluation with seeds 0..N-1 and report mean and sd over them")] = None,  # noqa: UP045
    seed: Annotated[Optional[int], typer.Option("--seed", help="One seed for every fold (default 0)")] = None,  # noqa: UP045
    folds: Annotated[Optional[int], typer.Option("--folds", help="K-fold over cells (K >= 2) instead of exact leave-one-cell-out")] = None,  # noqa: UP045
    only: Annotated[Optional[str], typer.Option("--only", help="Comma-separated cell ids to evaluate (all must exist)")] = None,  # noqa: UP045
    leave_dataset_out: Annotated[bool, typer.Option("--leave-dataset-out", help="Each subdirectory of --cells is a dataset; forecast each with a model trained on the others")] = False,
    max_train_cells: Annotated[Optional[int], typer.Option("--max-train-cells", help="Train each fold on at most N cells (evenly spaced by id)")] = None,  # noqa: UP045
    train_steps: Annotated[Optional[int], typer.Option("--train-steps", help="Training steps of each fold's model (default: the model's)")] = None,  # noqa: UP045
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also write forecast-vs-actual PNGs here")] = None,  # noqa: UP045
    plot_cells: Annotated[Optional[str], typer.Option("--plot-cells", help="Comma-separated cell ids to plot (default: every scored cell)")] = None,  # noqa: UP045
) -> None:
    """RUL evaluation of the degradation LSTM against three baselines.

    Leave one cell out (or K folds of cells) within a dataset, or leave one dataset out.
    Progress goes to stderr; the last line of stdout is the result as one JSON object.
    """
    logging.basicConfig(level=logging.WARNING)
    import dataclasses

    from models.cell_data import (
        EOL_BASES,
        CellHistory,
        load_cell_datasets,
        load_cell_histories,
        select_cells,
    )
    from models.cell_eval import (
        CellEvalParams,
        Forecaster,
        ModelHook,
        evaluate_datasets,
        evaluate_histories,
    )
    from models.degradation_lstm import DegradationParams

    if not 0 < eol_fraction < 1:
        raise _eval_error("--eol-fraction", f"expected a fraction in (0, 1), got {eol_fraction}.")
    if eol_basis not in EOL_BASES:
        raise _eval_error("--eol-basis", f"expected one of {', '.join(EOL_BASES)}, got {eol_basis!r}.")
    if seeds is not None and seed is not None:
        raise _eval_error("--seeds", f"give either --seeds N or --seed S, got --seeds {seeds} and --seed {seed}.")
    if seeds is not None and seeds < 1:
        raise _eval_error("--seeds", f"expected N >= 1 seeds, got {seeds}.")
    if folds is not None and folds < 2:
        raise _eval_error("--folds", f"expected K >= 2 folds, got {folds}.")
    if folds is not None and leave_dataset_out:
        raise _eval_error("--folds", "does not apply with --leave-dataset-out (the datasets are the folds).")
    if max_train_cells is not None and max_train_cells < 1:
        raise _eval_error("--max-train-cells", f"expected N >= 1, got {max_train_cells}.")
    if train_steps is not None and train_steps < 1:
        raise _eval_error("--train-steps", f"expected N >= 1, got {train_steps}.")
    if plot_cells is not None and plot is None:
        raise _eval_error("--plot-cells", "needs --plot DIR to write the pictures to.")
    ids = None if only is None else [i.strip() for i in only.split(",") if i.strip()]
    if ids is not None and not ids:
        raise _eval_error("--only", f"expected comma-separated cell ids, got {only!r}.")

    datasets: dict[str, list[CellHistory]] = {}
    try:
        datasets = load_cell_datasets(cells) if leave_dataset_out else {cells.name: load_cell_histories(cells)}
    except ValueError as exc:
        raise _eval_error("--cells", str(exc)) from None
    if ids is not None:
        try:
            wanted = {h.cell_id for h in select_cells([h for d in datasets.values() for h in d], ids)}
        except ValueError as exc:
            raise _eval_error("--only", str(exc)) from None
        datasets = {name: kept for name, d in datasets.items() if (kept := [h for h in d if h.cell_id in wanted])}
    if leave_dataset_out and len(datasets) < 2:
        raise _eval_error("--cells", f"expected at least 2 datasets (subdirectories with cell files) to leave out, got {sorted(datasets)}.")
    n_cells = sum(len(d) for d in datasets.values())
    if not leave_dataset_out and n_cells < 2:
        raise _eval_error("--only" if ids is not None else "--cells", f"expected at least 2 cells to leave one out, got {n_cells}.")

    params = DegradationParams()
    if train_steps is not None:
        params = dataclasses.replace(params, train_steps=train_steps)
    on_model: ModelHook | None = None
    if plot is not None:
        from models.forecast_plot import plot_cell

        plot_dir = plot

        plot_ids = None if plot_cells is None else {i.strip() for i in plot_cells.split(",") if i.strip()}

        def on_model(cell: CellHistory, model: Forecaster, training: Sequence[CellHistory]) -> None:
            if plot_ids is not None and cell.cell_id not in plot_ids:
                return
            path = plot_dir / f"degradation_forecast_{cell.cell_id}.png"
            plot_cell(cell, training, path, eol_fraction=eol_fraction, eol_basis=eol_basis, model=model)

    common: dict[str, Any] = {
        "eval_params": CellEvalParams(eol_fraction=eol_fraction, eol_basis=eol_basis),
        "max_train_cells": max_train_cells,
        "seeds": None if seeds is None else list(range(seeds)),
        "on_model": on_model,
    }

    def progress(line: str) -> None:
        typer.echo(line, err=True)

    seed = 0 if seed is None else seed
    if leave_dataset_out:
        result = evaluate_datasets(datasets, params, seed, progress, **common)
    else:
        result = evaluate_histories(next(iter(datasets.values())), params, seed, progress, folds=folds, **common)
    sys.stdout.write(json.dumps(result) + "\n")
