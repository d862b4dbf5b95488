"""Tests for ``bms vehicles provision``: the files it writes, their modes, and its errors."""

from __future__ import annotations

import csv
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bms.broker_auth import check_mosquitto_password, load_provisioning_key, vehicle_password
from bms.cli import app


def _invoke(tmp_path: Path, *args: str) -> tuple[int, str]:
    env = {"BMS_DATA_DIR": str(tmp_path / "data"), "BMS_CONFIG": "", "BMS_MQTT_PROVISIONING_KEY_FILE": ""}
    result = CliRunner().invoke(app, ["vehicles", "provision", *args], env=env)
    return result.exit_code, result.output


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_provision_count_writes_broker_files_and_0600_secrets(tmp_path: Path) -> None:
    """--count 3 --prefix v- gives the simulator's ids v-00000..v-00002: passwd (0600) with
    their hashes and bms-bridge's, the ACL, the conf snippet naming both, credentials.csv
    (0600) with the derived passwords; nothing on stdout is a password."""
    out = tmp_path / "out"
    code, output = _invoke(tmp_path, "--count", "3", "--prefix", "v-", "--out", str(out))
    assert code == 0, output
    key = load_provisioning_key(tmp_path / "data", env={})
    rows = list(csv.reader((out / "credentials.csv").open()))
    assert rows[0] == ["vehicle_id", "username", "password"]
    assert rows[1:] == [[v, v, vehicle_password(key, v)] for v in ("v-00000", "v-00001", "v-00002")]
    hashes = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    assert list(hashes) == ["v-00000", "v-00001", "v-00002", "bms-bridge"]
    assert check_mosquitto_password(rows[2][2], hashes["v-00001"])
    assert _mode(out / "passwd") == _mode(out / "credentials.csv") == 0o600
    assert "pattern write fleet/%u/telemetry" in (out / "acl").read_text()
    conf = (out / "mosquitto.conf").read_text()
    assert f"password_file {(out / 'passwd').resolve()}" in conf
    assert f"acl_file {(out / 'acl').resolve()}" in conf
    assert "allow_anonymous false" in conf
    bridge_password = (tmp_path / "data" / "mqtt" / "bms-bridge.password").read_text()
    for secret in [bridge_password, key.hex(), *(r[2] for r in rows[1:])]:
        assert secret not in output
    assert "Provisioned 3 vehicles (v-00000 ... v-00002)" in output


def test_provision_ids_file_and_the_same_key_next_time(tmp_path: Path) -> None:
    """--ids FILE provisions exactly those ids; a second run with the same data dir derives
    the same passwords (the key is created once)."""
    ids = tmp_path / "ids.txt"
    ids.write_text("# depot north\ncar-7\ncar-8\n")
    _invoke(tmp_path, "--ids", str(ids), "--out", str(tmp_path / "a"))
    code, output = _invoke(tmp_path, "--ids", str(ids), "--out", str(tmp_path / "b"))
    assert code == 0, output
    a = (tmp_path / "a" / "credentials.csv").read_text()
    assert a == (tmp_path / "b" / "credentials.csv").read_text()
    assert [r[0] for r in csv.reader(a.splitlines())][1:] == ["car-7", "car-8"]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("car-7\ncar 8\n", "line 2: expected a vehicle id matching"),
        ("car-7\ncar-7\n", "line 2: expected each vehicle id once, got 'car-7' again"),
        ("bms-bridge\n", "other than the service usernames"),
    ],
)
def test_provision_refuses_bad_ids_saying_what_arrived(tmp_path: Path, lines: str, expected: str) -> None:
    """A bad, repeated or reserved id fails with exit code 2, its line, and writes nothing."""
    ids = tmp_path / "ids.txt"
    ids.write_text(lines)
    code, output = _invoke(tmp_path, "--ids", str(ids), "--out", str(tmp_path / "out"))
    assert code == 2 and expected in output, output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [[], ["--count", "2", "--ids", "IDS"]])
def test_provision_needs_exactly_one_source_of_ids(tmp_path: Path, args: list[str]) -> None:
    """Neither or both of --ids and --count is a usage error naming both options."""
    ids = tmp_path / "ids.txt"
    ids.write_text("car-7\n")
    code, output = _invoke(tmp_path, *[str(ids) if a == "IDS" else a for a in args], "--out", str(tmp_path / "o"))
    assert code == 2 and "expected either --ids FILE or --count N" in output, output


def test_provision_with_a_prefix_that_makes_invalid_ids(tmp_path: Path) -> None:
    """--prefix 'v/' would put a slash in the topic: refused, quoting the first id."""
    code, output = _invoke(tmp_path, "--count", "1", "--prefix", "v/", "--out", str(tmp_path / "o"))
    assert code == 2 and "got 'v/00000'" in output, output
