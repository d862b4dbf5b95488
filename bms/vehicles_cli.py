"""``bms vehicles ...``: the vehicles' identities on the MQTT broker (see :mod:`bms.broker_auth`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bms.cli_support import ConfigOpt, load_settings
from sim.fleet_params import FleetParams

vehicles_app = typer.Typer(help="Vehicle identities on the MQTT broker.", no_args_is_help=True)


@vehicles_app.command("provision")
def provision(
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Directory for passwd, acl, mosquitto.conf, credentials.csv")],
    ids: Annotated[Optional[Path], typer.Option("--ids", exists=True, dir_okay=False, help="Vehicle ids, one a line (# comments)")] = None,  # noqa: UP045
    count: Annotated[Optional[int], typer.Option("--count", min=1, max=1_000_000, help="Vehicles <prefix>00000, <prefix>00001, ... as the simulator names them")] = None,  # noqa: UP045
    prefix: Annotated[str, typer.Option("--prefix", help="Id prefix for --count")] = FleetParams.vehicle_id_prefix,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port of the plain listener in mosquitto.conf")] = 1883,
    config: ConfigOpt = None,
) -> None:
    """Write a mosquitto password file and ACL for these vehicles (and the bridge), a
    mosquitto.conf snippet, and credentials.csv (vehicle_id,username,password; 0600) to hand
    to the devices. Passwords derive from the provisioning key in the data dir (or the file
    BMS_MQTT_PROVISIONING_KEY_FILE names), so `bms run` can simulate the same vehicles."""
    from bms.broker_auth import (
        BRIDGE_USERNAME,
        BrokerAuthError,
        bridge_login,
        load_provisioning_key,
        provisioning_key_path,
        read_vehicle_ids,
        write_provisioning,
    )
    from sim.fleet import fleet_ids

    if (ids is None) == (count is None):
        got = "both" if ids is not None else "neither"
        typer.echo(f"error: expected either --ids FILE or --count N, got {got}.", err=True)
        raise typer.Exit(2)
    settings = load_settings(config)
    try:
        vehicle_ids = read_vehicle_ids(ids) if ids is not None else fleet_ids(prefix, count or 0)
        key = load_provisioning_key(settings.data_dir)
        bridge = bridge_login(settings.data_dir)
        files = write_provisioning(out, vehicle_ids, key, bridge, port=port)
    except BrokerAuthError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    span = vehicle_ids[0] if len(vehicle_ids) == 1 else f"{vehicle_ids[0]} ... {vehicle_ids[-1]}"
    bridge_file = settings.data_dir / "mqtt" / f"{BRIDGE_USERNAME}.password"
    typer.echo(
        "\n".join([
            f"Provisioned {len(vehicle_ids)} vehicles ({span}) with the key {provisioning_key_path(settings.data_dir)}:",
            f"  {files.passwd}  mosquitto password file (0600): the vehicles and {BRIDGE_USERNAME}",
            f"  {files.acl}  ACL: each vehicle writes fleet/<its id>/telemetry only",
            f"  {files.mosquitto_conf}  mosquitto.conf snippet (include it; TLS listener commented out)",
            f"  {files.credentials_csv}  device credentials (0600): hand each device its row, then keep it safe",
            f"The bridge logs in as {BRIDGE_USERNAME}: BMS_MQTT_USERNAME={BRIDGE_USERNAME} "
            f"BMS_MQTT_PASSWORD=\"$(cat {bridge_file})\"",
        ])
    )
