"""The ``bms`` command line: run the system, benchmark it, manage its schema."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from bms.cli_support import ConfigOpt, load_settings
from bms.models_cli import models_app
from bms.settings import Settings
from bms.tokens_cli import tokens_app
from bms.vehicles_cli import vehicles_app
from bms.whatif_cli import whatif, whatif_snapshot

if TYPE_CHECKING:
    from runtime.system import FleetSystem
    from sim.publisher import VehicleCredentials

app = typer.Typer(help="Battery-fleet digital twin.", no_args_is_help=True, add_completion=False)
bench_app = typer.Typer(help="Benchmarks; each prints one JSON object as its last line.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(models_app, name="models")
app.add_typer(vehicles_app, name="vehicles")
app.add_typer(tokens_app, name="tokens")
app.command("whatif")(whatif)
app.command("whatif-snapshot")(whatif_snapshot)



def _redact_logs() -> None:
    """The catch-all: a URL with a password inside any log message is printed redacted."""
    from contracts.redaction import RedactingFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())


@app.command()
def run(
    config: ConfigOpt = None,
    vehicles: Annotated[Optional[int], typer.Option(help="Simulated vehicles (default from [sim])")] = None,  # noqa: UP045
    duration_s: Annotated[Optional[float], typer.Option(help="Stop after this many seconds")] = None,  # noqa: UP045
    no_sim: Annotated[bool, typer.Option("--no-sim", help="Do not start the simulated fleet")] = False,
) -> None:
    """Start servers (embedded unless BMS_*_URL are set), the twins, the bridge, the HTTP
    API and a simulated fleet publishing over MQTT. Ctrl-C stops everything."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _redact_logs()
    settings = load_settings(config)
    if vehicles is not None:
        settings = settings.model_copy(update={"sim": settings.sim.model_copy(update={"vehicles": vehicles})})

    from bms.services import EmbeddedServices
    from bms.system import FleetSystem, initial_shards, system_spec
    from runtime.system import shutdown_ray

    services = EmbeddedServices(settings)
    urls = services.start()
    shared = services.mqtt_supports_shared_subscriptions
    system = FleetSystem(system_spec(
        settings, urls, shared_subscriptions=shared, mqtt_v5=shared,
        initial_shards=initial_shards(settings),
    ))
    stop = asyncio.Event()
    try:
        system.start()
        s = settings.serve
        from bms.system import planner_spec
        from bms.tokens_cli import issue_demo_tokens
        from contracts.redaction import redact_url
        from runtime.metrics import prometheus_url

        demo = asyncio.run(issue_demo_tokens(urls.postgres_url, planner_spec(settings, urls).technicians[0].id))
        typer.echo(
            "\n".join([
                "",
                "Battery fleet twin is running.",
                f"  Dashboard      http://{s.http_host}:{s.http_port}/",
                f"  API docs       http://{s.http_host}:{s.http_port}/docs",
                f"  Fleet summary  http://{s.http_host}:{s.http_port}/api/v1/fleet/summary",
                f"  Ray dashboard  http://127.0.0.1:{settings.ray.dashboard_port}/",
                f"  Metrics        {prometheus_url() or 'off (this Ray node collects no metrics)'}",
                f"  MQTT broker    {redact_url(urls.mqtt_url)}  (topic fleet/<vehicle_id>/telemetry)",
                f"  Simulated fleet: {0 if no_sim else settings.sim.vehicles} vehicles. Ctrl-C stops.",
                "",
                "Demo API tokens (12 h; the next run revokes them; paste one into the dashboard,",
                "or send 'Authorization: Bearer <token>'; 'bms tokens create' makes real ones):",
                *(f"  {role.value:<14} {token}" for role, token in demo.items()),
                "",
            ])
        )
        asyncio.run(_main_loop(settings, urls.mqtt_url, system, stop, duration_s, no_sim,
                               vehicle_credentials=services.mqtt_identities.vehicles))
    finally:
        system.stop()
        shutdown_ray()
        services.stop()


async def _main_loop(
    settings: Settings, mqtt_url: str, system: FleetSystem, stop: asyncio.Event, duration_s: float | None, no_sim: bool,
    *, vehicle_credentials: VehicleCredentials | None = None,
) -> None:
    """Publish the simulated fleet and keep the bridge workers alive until stopped.

    With ``vehicle_credentials`` each simulated vehicle connects as itself (the embedded
    broker admits no one else).
    """
    from bms.fleet_state import SNAPSHOT_INTERVAL_S, fleet_snapshot_path, load_fleet, resume_fleet
    from bms.sim_swaps import swap_recorder
    from bms.system import fleet_params
    from runtime.twins import FleetClient
    from sim.fleet_snapshot import write_snapshot_file
    from sim.publisher import run_fleet

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = []
    if not no_sim:
        # The fleet outlives the process, as the twins do: resume the saved one, which
        # stood still while the system was down, and save it as it runs.
        path = fleet_snapshot_path(settings.data_dir)
        sim = await asyncio.to_thread(load_fleet, path, fleet_params(settings.sim), seq_start=int(time.time()))
        # A sped-up clock needs a known duration (the run ends at "now"; see run_fleet).
        time_scale = resume_fleet(
            sim, now_s=time.time(), duration_s=duration_s,
            time_scale=settings.sim.time_scale if duration_s is not None else 1.0,
        )  # fmt: skip
        tasks.append(asyncio.create_task(
            run_fleet(sim, mqtt_url, duration_s, tick_s=1.0, stop=stop, time_scale=time_scale,
                      credentials=vehicle_credentials,
                      save_snapshot=functools.partial(write_snapshot_file, path),
                      snapshot_interval_s=SNAPSHOT_INTERVAL_S,
                      # The simulated team's swaps reach the twins as a technician's would.
                      on_swaps=swap_recorder(FleetClient(system.namespace)))
        ))
    deadline = None if duration_s is None else time.time() + duration_s
    # Restarted actors (a crashed bridge worker, planner, alert manager) get their loops
    # back within a second (FleetSystem.start_supervisor); system.stop() ends it.
    system.start_supervisor()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 10.0)
        if deadline is not None and time.time() >= deadline:
            stop.set()
    for t in tasks:
        await t


@bench_app.command("ingest")
def bench_ingest(
    batteries: Annotated[int, typer.Option(help="Batteries (one twin each)")] = 10_000,
    seconds: Annotated[float, typer.Option(help="Timed publishing phase")] = 20.0,
    shard_size: Annotated[Optional[int], typer.Option(help="Twins per TwinShard actor (default: [twins] shard_size)")] = None,  # noqa: UP045
    samples_per_message: Annotated[int, typer.Option(help="Samples per MQTT message")] = 50,
    report_interval_s: Annotated[Optional[float], typer.Option(help="Each battery reports every T s (default: as fast as possible)")] = None,  # noqa: UP045
    bridge_workers: Annotated[int, typer.Option(help="Bridge actors (shared subscription)")] = 1,
    config: ConfigOpt = None,
) -> None:
    """Publish through a real broker into the twins; print throughput, freshness, memory."""
    logging.basicConfig(level=logging.WARNING)
    from bms.bench.ingest import IngestBenchParams, run_ingest_bench

    settings = load_settings(config)
    params = IngestBenchParams(
        batteries=batteries, seconds=seconds,
        shard_size=settings.twins.shard_size if shard_size is None else shard_size,
        samples_per_message=samples_per_message, report_interval_s=report_interval_s,
        bridge_workers=bridge_workers,
    )
    result = run_ingest_bench(params, settings)
    sys.stdout.write(json.dumps(result) + "\n")


@bench_app.command("soak")
def bench_soak(
    minutes: Annotated[float, typer.Option(help="Paced publishing phase, minutes")] = 10.0,
    rate: Annotated[int, typer.Option(help="Samples per second offered")] = 50_000,
    batteries: Annotated[int, typer.Option(help="Batteries (one twin each), published round robin")] = 10_000,
    samples_per_message: Annotated[int, typer.Option(help="Samples per MQTT message")] = 50,
    sample_interval_s: Annotated[float, typer.Option(help="Memory, freshness, scoring and planning sampled this often")] = 5.0,
    score_interval_s: Annotated[Optional[float], typer.Option(help="Shard scoring tick (default: the config's models.score_interval_s)")] = None,  # noqa: UP045
    plan_interval_s: Annotated[float, typer.Option(help="Planner's scheduled re-plan period")] = 60.0,
    drain_timeout_s: Annotated[float, typer.Option(help="Longest wait for the bridge after publishing")] = 300.0,
    config: ConfigOpt = None,
) -> None:
    """The whole system (scoring and planner on) at a steady rate; print loss, freshness, memory growth."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bms.bench.soak").setLevel(logging.INFO)  # a progress line a minute
    from bms.bench.soak import SoakBenchParams, run_soak_bench

    settings = load_settings(config)
    params = SoakBenchParams(
        minutes=minutes, rate_sps=rate, batteries=batteries, samples_per_message=samples_per_message,
        sample_interval_s=sample_interval_s,
        score_interval_s=settings.models.score_interval_s if score_interval_s is None else score_interval_s,
        plan_interval_s=plan_interval_s, drain_timeout_s=drain_timeout_s,
    )
    result = run_soak_bench(params, settings)
    sys.stdout.write(json.dumps(result) + "\n")


@bench_app.command("shard-memory")
def bench_shard_memory(
    repeats: Annotated[int, typer.Option(min=1, help="Fresh processes per variant (median reported)")] = 3,
) -> None:
    """PSS of an idle shard process: models off, models on, and with the model code it once loaded."""
    logging.basicConfig(level=logging.WARNING)
    from bms.bench.shard_memory import run_shard_memory_bench

    sys.stdout.write(json.dumps(run_shard_memory_bench(repeats)) + "\n")


@bench_app.command("broker")
def bench_broker(
    messages: Annotated[int, typer.Option(min=1, help="One-sample telemetry messages per round")] = 200_000,
    repeats: Annotated[int, typer.Option(min=1, help="Rounds, each on a fresh broker (medians reported)")] = 3,
) -> None:
    """Mosquitto's own cost per QoS 1 message (C clients): messages per broker-core-second."""
    logging.basicConfig(level=logging.WARNING)
    from bms.bench.broker import run_broker_bench

    sys.stdout.write(json.dumps(run_broker_bench(messages, repeats)) + "\n")


@bench_app.command("route")
def bench_route(
    instance: Annotated[Path, typer.Option("--instance", exists=True, dir_okay=False, help="Solomon-format VRPTW file")],
    time_limit_s: Annotated[float, typer.Option("--time-limit", min=0.001, help="Search time limit, seconds")] = 30.0,
    objective: Annotated[str, typer.Option("--objective", help="distance (DIMACS: truncated to 0.1) or hierarchical (vehicles first, exact)")] = "distance",
    engine: Annotated[str, typer.Option("--engine", help="ortools, pyvrp, or both (one after the other, same instance)")] = "ortools",
) -> None:
    """Route a Solomon-format VRPTW instance with the planner's routing model; check it; compare with the BKS."""
    logging.basicConfig(level=logging.WARNING)
    from bms.bench.route import main_route

    if objective not in ("distance", "hierarchical"):
        typer.echo(f"Expected --objective distance or hierarchical, got {objective!r}.", err=True)
        raise typer.Exit(2)
    if engine not in ("ortools", "pyvrp", "both"):
        typer.echo(f"Expected --engine ortools, pyvrp or both, got {engine!r}.", err=True)
        raise typer.Exit(2)
    if engine != "both":
        sys.stdout.write(json.dumps(main_route(instance, time_limit_s, objective, engine=engine)) + "\n")
        return
    rows = {e: main_route(instance, time_limit_s, objective, engine=e) for e in ("ortools", "pyvrp")}
    for row in rows.values():
        sys.stdout.write(json.dumps(row) + "\n")
    # The last line: both side by side.
    sys.stdout.write(json.dumps({"benchmark": "route", "instance": rows["ortools"]["instance"], "engines": rows}) + "\n")


@bench_app.command("plan")
def bench_plan(
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Candidate jobs (80 % swaps, 10 % replacements, 10 % inspections)")] = 1000,
    technicians: Annotated[int, typer.Option("--technicians", min=1, help="Technicians (8-hour shifts from 07:00 or 09:00)")] = 20,
    van_capacity: Annotated[int, typer.Option("--van-capacity", min=0, help="Charged batteries per van")] = 30,
    time_limit_s: Annotated[float, typer.Option("--time-limit", min=0.001, help="Search time limit, seconds")] = 60.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated day")] = 7,
    engine: Annotated[str, typer.Option("--engine", help="ortools, pyvrp, or both (the same day, one after the other)")] = "both",
    depots: Annotated[Optional[int], typer.Option("--depots", min=1, help="Depots (default: one per 10 technicians, at least 2)")] = None,  # noqa: UP045
    radius_km: Annotated[Optional[float], typer.Option("--radius-km", min=0.1, help="City radius (default: 6 km x sqrt(jobs / 1000))")] = None,  # noqa: UP045
) -> None:
    """Plan a seeded technician day in Berlin with the routing model and a greedy; check and compare them."""
    logging.basicConfig(level=logging.WARNING)
    from bms.bench.plan import main_plan

    if engine not in ("ortools", "pyvrp", "both"):
        typer.echo(f"Expected --engine ortools, pyvrp or both, got {engine!r}.", err=True)
        raise typer.Exit(2)
    engines = ("ortools", "pyvrp") if engine == "both" else (engine,)
    result = main_plan(
        jobs, technicians, van_capacity, time_limit_s, seed, engines,
        depots=depots, radius_m=None if radius_km is None else radius_km * 1000,
    )  # fmt: skip
    sys.stdout.write(json.dumps(result) + "\n")


@bench_app.command("replan")
def bench_replan(
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Candidate jobs of the live day (1,600 give about 1,000 planned)")] = 1600,
    technicians: Annotated[int, typer.Option("--technicians", min=1, help="Technicians")] = 32,
    engine: Annotated[str, typer.Option("--engine", help="ortools, pyvrp, or both")] = "both",
    live_time_limit_s: Annotated[float, typer.Option("--live-time-limit", min=0.001, help="Search time of the live plan, seconds")] = 60.0,
    events: Annotated[int, typer.Option("--events", min=1, help="Urgent jobs, each against the live plan")] = 20,
    improve: Annotated[str, typer.Option("--improve", help="Comma-separated improvement budgets after insertion, seconds")] = "0,1",
    budgets: Annotated[str, typer.Option("--budgets", help="Comma-separated full re-plan budgets, seconds")] = "5,20,60",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated day")] = 7,
) -> None:
    """Urgent insertion latency on a live plan of about 1,000 jobs, and full re-plan value against time."""
    logging.basicConfig(level=logging.WARNING)
    from bms.bench.replan import main_replan

    if engine not in ("ortools", "pyvrp", "both"):
        typer.echo(f"Expected --engine ortools, pyvrp or both, got {engine!r}.", err=True)
        raise typer.Exit(2)
    try:
        improve_s = [float(x) for x in improve.split(",") if x.strip()]
        budgets_s = [float(x) for x in budgets.split(",") if x.strip()]
    except ValueError:
        typer.echo(f"Expected comma-separated seconds for --improve and --budgets, got {improve!r} and {budgets!r}.", err=True)
        raise typer.Exit(2) from None
    engines = ("ortools", "pyvrp") if engine == "both" else (engine,)
    result = main_replan(
        jobs, technicians, engines=engines, live_time_limit_s=live_time_limit_s, events=events,
        improve_s=improve_s, replan_budgets_s=budgets_s, seed=seed,
    )  # fmt: skip
    sys.stdout.write(json.dumps(result) + "\n")


@bench_app.command("serve")
def bench_serve(
    models: Annotated[Optional[list[str]], typer.Option("--model", help="Model families (default: all)")] = None,  # noqa: UP045
    rows: Annotated[int, typer.Option(min=1, help="Rows per request (a shard's tick)")] = 10_000,
    seconds: Annotated[float, typer.Option(min=0.1, help="Timed phase per measurement")] = 10.0,
    callers: Annotated[int, typer.Option(min=1, help="Concurrent callers (shards)")] = 4,
    config: ConfigOpt = None,
) -> None:
    """Model throughput through Ray Serve next to the bare in-process model, same run."""
    logging.basicConfig(level=logging.WARNING)
    from bms.bench.serve_models import run_serve_bench
    from models.predictors import PREDICTORS

    result = run_serve_bench(list(models or PREDICTORS), rows, seconds, callers, load_settings(config))
    sys.stdout.write(json.dumps(result) + "\n")


@bench_app.command("lstm-step")
def bench_lstm_step(
    twins: Annotated[str, typer.Option("--twins", help="Comma-separated twin counts, one batched step each")] = "1000000",
    devices: Annotated[str, typer.Option("--devices", help="cpu and/or cuda, comma-separated (default: cpu, plus cuda when torch sees one)")] = "",
    dtypes: Annotated[str, typer.Option("--dtypes", help="float32 and/or bfloat16, comma-separated")] = "float32,bfloat16",
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per measurement (median, min, max reported)")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs before them")] = 1,
    accuracy_twins: Annotated[int, typer.Option(min=1, help="Twins whose remaining life is compared, and chained")] = 100_000,
    chain_steps: Annotated[int, typer.Option(min=0, help="Steps chained for the compounded error (0: none)")] = 30,
    seed: Annotated[int, typer.Option(help="Seeds the inputs, the weights and the training")] = 0,
    model_dir: Annotated[Optional[Path], typer.Option("--model-dir", exists=True, file_okay=False, help="A saved degradation model (default: trained from scratch, quick plan)")] = None,  # noqa: UP045
) -> None:
    """A batched LSTM step of the degradation model over N twin states, per device and float type, with bfloat16's error."""
    logging.basicConfig(level=logging.WARNING)
    from bms.bench.lstm_step import LstmStepBenchParams, run_lstm_step_bench

    try:
        counts = tuple(int(v.strip().replace("_", "")) for v in twins.split(",") if v.strip())
    except ValueError:
        typer.echo(f"Expected --twins as comma-separated counts like 1000000,10000000, got {twins!r}.", err=True)
        raise typer.Exit(2) from None
    try:
        params = LstmStepBenchParams(
            twins=counts, devices=tuple(d.strip() for d in devices.split(",") if d.strip()),
            dtypes=tuple(d.strip() for d in dtypes.split(",") if d.strip()),
            repeats=repeats, warmup=warmup, accuracy_twins=accuracy_twins, chain_steps=chain_steps, seed=seed,
            model_dir=model_dir,
        )
    except ValueError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    sys.stdout.write(json.dumps(run_lstm_step_bench(params)) + "\n")


@bench_app.command("api")
def bench_api(
    vehicles: Annotated[int, typer.Option(min=1, help="Simulated vehicles")] = 1000,
    clients: Annotated[int, typer.Option(min=1, help="Concurrent closed-loop clients per route")] = 32,
    seconds: Annotated[float, typer.Option(min=1, help="Measured seconds per route")] = 20.0,
    route: Annotated[Optional[list[str]], typer.Option("--route", help="battery, availability, summary, bare_serve (default: all)")] = None,  # noqa: UP045
    models: Annotated[bool, typer.Option("--models/--no-models", help="Deploy the models, as bms run does")] = True,
    direct_ingress: Annotated[bool, typer.Option("--direct-ingress/--serve-proxy", help="HAProxy to the replicas, or Serve's Python proxy")] = True,
    ingress_replicas: Annotated[int, typer.Option(min=1, help="Replicas of the API ingress")] = 1,
    config: ConfigOpt = None,
) -> None:
    """Start the system with the simulated fleet; HTTP reads per second and latency per route."""
    logging.basicConfig(level=logging.WARNING)
    from bms.bench.api import ROUTES, ApiBenchParams, run_api_bench

    params = ApiBenchParams(
        vehicles=vehicles, clients=clients, seconds=seconds, routes=tuple(route or ROUTES),
        models=models, direct_ingress=direct_ingress, ingress_replicas=ingress_replicas,
    )
    sys.stdout.write(json.dumps(run_api_bench(params, load_settings(config))) + "\n")


@bench_app.command("alerts")
def bench_alerts(
    vehicles: Annotated[int, typer.Option(min=1, help="Simulated vehicles running meanwhile")] = 1000,
    events: Annotated[int, typer.Option(min=1, help="Hot packs published, one at a time")] = 20,
    spacing_s: Annotated[float, typer.Option(min=0, help="Seconds between two hot packs")] = 3.0,
    config: ConfigOpt = None,
) -> None:
    """Start the system with the simulated fleet; publish hot packs; time publish → alert → webhook."""
    logging.basicConfig(level=logging.WARNING)
    from bms.bench.alerts import AlertBenchParams, run_alert_bench

    params = AlertBenchParams(vehicles=vehicles, events=events, spacing_s=spacing_s)
    sys.stdout.write(json.dumps(run_alert_bench(params, load_settings(config))) + "\n")


@bench_app.command("sim")
def bench_sim(
    vehicles: Annotated[int, typer.Option(help="Simulated vehicles")] = 10_000,
    days: Annotated[int, typer.Option(help="Simulated days")] = 1,
    technicians: Annotated[Optional[int], typer.Option(help="Technicians (default: 3 per 1,000 vehicles)")] = None,  # noqa: UP045
    seed: Annotated[int, typer.Option(help="Seed of the run")] = 1,
    config: ConfigOpt = None,
) -> None:
    """A what-if run of the baseline scaled to --vehicles, twins, models and planner in the loop."""
    from bms.bench.sim import run_sim_bench

    logging.basicConfig(level=logging.WARNING)
    typer.echo(json.dumps(run_sim_bench(vehicles, days, technicians, seed, load_settings(config))))


@bench_app.command("dashboard")
def bench_dashboard(
    vehicles: Annotated[int, typer.Option(min=1, help="Simulated vehicles")] = 10_000,
    repeats: Annotated[int, typer.Option(min=1, help="Cold page loads measured")] = 3,
    screenshots: Annotated[Optional[Path], typer.Option(help="Save screenshots of the main pages here")] = None,  # noqa: UP045
    models: Annotated[bool, typer.Option("--models/--no-models", help="Deploy the models (and so the planner)")] = True,
    wait_s: Annotated[float, typer.Option(min=1, help="Longest wait for every vehicle's twin")] = 900.0,
    chromium: Annotated[str, typer.Option(envvar="BMS_CHROMIUM", help="Chromium binary")] = "/usr/bin/chromium",
    settle_s: Annotated[float, typer.Option(min=0, help="Let the fleet run this long before loading the pages")] = 0.0,
    config: ConfigOpt = None,
) -> None:
    """Start the system with a simulated fleet; time the dashboard's map and alerts in Chromium."""
    logging.basicConfig(level=logging.WARNING)
    from bms.bench.dashboard import DashboardBenchParams, run_dashboard_bench

    params = DashboardBenchParams(
        vehicles=vehicles, repeats=repeats, screenshots=screenshots, models=models, wait_s=wait_s,
        chromium=chromium, settle_s=settle_s,
    )
    sys.stdout.write(json.dumps(run_dashboard_bench(params, load_settings(config))) + "\n")


@app.command()
def schema(
    write: Annotated[bool, typer.Option("--write", help="Rewrite contracts/schemas/*.json")] = False,
    check: Annotated[bool, typer.Option("--check", help="Fail if the committed schemas differ")] = False,
) -> None:
    """Print (or write, or check) the JSON Schema of every telemetry version."""
    from contracts.telemetry import json_schemas

    root = Path(__file__).resolve().parent.parent / "contracts" / "schemas"
    bad = []
    for version, doc in json_schemas().items():
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        path = root / f"telemetry-v{version}.json"
        if write:
            root.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        elif check:
            if not path.exists() or path.read_text() != text:
                bad.append(path.name)
        else:
            typer.echo(text)
    if bad:
        typer.echo(f"Out of date: {', '.join(bad)}; run 'bms schema --write'.", err=True)
        raise typer.Exit(1)


@app.command()
def migrate(config: ConfigOpt = None) -> None:
    """Apply pending PostgreSQL migrations (BMS_POSTGRES_URL, or the embedded server)."""
    import psycopg

    from bms.services import EmbeddedServices
    from bms.system import run_migrations

    settings = load_settings(config)
    with EmbeddedServices(settings) as services:
        try:
            applied = asyncio.run(run_migrations(services.urls.postgres_url))
        except psycopg.Error as err:
            typer.echo(f"Migrations failed: {err}".strip(), err=True)
            raise typer.Exit(1) from None
    typer.echo(f"applied: {applied or 'nothing (up to date)'}")


if __name__ == "__main__":
    app()
