"""Tests for :mod:`bms.broker_auth`: derived passwords, mosquitto's hash format, the ACL,
vehicle-id validation and secrets on disk. No broker is involved (see
tests/integration/test_broker_acl.py for the real one)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from bms.broker_auth import (
    BRIDGE_USERNAME,
    LOADGEN_USERNAME,
    PROVISIONING_KEY_ENV,
    BrokerAuthError,
    MqttLogin,
    VehicleCredentials,
    amqtt_acl,
    amqtt_password_hash,
    bridge_login,
    check_mosquitto_password,
    check_vehicle_id,
    load_provisioning_key,
    mosquitto_acl_text,
    mosquitto_conf_text,
    mosquitto_passwd_text,
    mosquitto_password_hash,
    read_vehicle_ids,
    vehicle_password,
    write_secret_file,
)
from contracts.telemetry import ID_PATTERN

_KEY = bytes(range(32))
# Written by mosquitto_passwd 2.0.11 (-b pw alice secret): the format is mosquitto's own.
_MOSQUITTO_PASSWD_HASH = (
    "$7$101$P9gfVYfW4uL9rinS$6tg3dwQrbk2DgfblTfGlFw/FCIXYurc5gXWNBpTyQIQ7gxfsCWf7xC3FhxVq"
    "TnMSYj8Ima7wk7euZGSmWRmQcA=="
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_vehicle_password_is_unpadded_base64url_of_hmac_sha256() -> None:
    """The documented derivation, pinned: base64url(HMAC-SHA256(key, id)) without '='."""
    assert vehicle_password(_KEY, "v-00001") == "--cCaFIVBWpi0ra7Llg6N80nAvckhjai60_OS5CznVw"
    assert vehicle_password(_KEY, "v-00002") != vehicle_password(_KEY, "v-00001")
    assert vehicle_password(b"another key ....", "v-00001") != vehicle_password(_KEY, "v-00001")


def test_vehicle_credentials_use_the_id_as_username_and_hide_the_key() -> None:
    """A call gives (vehicle id, derived password); the repr shows no key bytes."""
    creds = VehicleCredentials(_KEY)
    assert creds("v-00001") == ("v-00001", vehicle_password(_KEY, "v-00001"))
    assert creds.login("v-00001") == MqttLogin("v-00001", SecretStr(vehicle_password(_KEY, "v-00001")))
    assert repr(creds) == "VehicleCredentials(key=<hidden>)"
    with pytest.raises(BrokerAuthError, match="expected a vehicle id"):
        creds("fleet/#")
    with pytest.raises(BrokerAuthError, match="at least 16 bytes, got 4"):
        VehicleCredentials(b"abcd")


def test_mqtt_login_repr_hides_the_password() -> None:
    """An MqttLogin in a log line or an f-string shows stars, not the password."""
    login = MqttLogin("bms-bridge", SecretStr("hunter2"))
    assert "hunter2" not in repr(login) and "hunter2" not in f"{login}"


def test_mosquitto_hash_matches_mosquitto_passwd_format() -> None:
    """$7$, 101 iterations, 12-byte salt and 64-byte PBKDF2-SHA512 hash in padded base64;
    a hash written by mosquitto_passwd itself checks out, and ours with its salt is equal."""
    hashed = mosquitto_password_hash("secret")
    assert re.fullmatch(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==", hashed), hashed
    assert check_mosquitto_password("secret", hashed)
    assert not check_mosquitto_password("Secret", hashed)
    assert hashed != mosquitto_password_hash("secret")  # a fresh salt each time
    assert check_mosquitto_password("secret", _MOSQUITTO_PASSWD_HASH)
    import base64

    salt = base64.b64decode(_MOSQUITTO_PASSWD_HASH.split("$")[3])
    assert mosquitto_password_hash("secret", salt=salt) == _MOSQUITTO_PASSWD_HASH
    with pytest.raises(BrokerAuthError, match=r"Expected a \$7\$"):
        check_mosquitto_password("secret", "$6$rounds=5000$abc$def")


def test_password_file_has_one_line_per_login_and_refuses_bad_usernames() -> None:
    """username:$7$... a line; a ':' in a username or a repeated one is an error."""
    text = mosquitto_passwd_text([MqttLogin("v-1", SecretStr("a")), MqttLogin("bms-bridge", SecretStr("b"))])
    lines = text.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["v-1", "bms-bridge"]
    assert check_mosquitto_password("b", lines[1].split(":", 1)[1])
    with pytest.raises(BrokerAuthError, match="without ':'"):
        mosquitto_passwd_text([MqttLogin("a:b", SecretStr("x"))])
    with pytest.raises(BrokerAuthError, match="'v-1' again"):
        mosquitto_passwd_text([MqttLogin("v-1", SecretStr("a"))] * 2)


def _rules(acl: str) -> list[str]:
    return [line for line in acl.splitlines() if line and not line.startswith("#")]


def test_acl_lets_vehicles_write_their_own_topic_and_the_bridge_read() -> None:
    """The production ACL: one pattern for all vehicles, read for the bridge, no loadgen."""
    assert _rules(mosquitto_acl_text()) == [
        "pattern write fleet/%u/telemetry",
        f"user {BRIDGE_USERNAME}",
        "topic read fleet/+/telemetry",
    ]
    assert LOADGEN_USERNAME not in mosquitto_acl_text()


def test_acl_with_loadgen_adds_the_test_harness_block_marked_as_such() -> None:
    """Only with loadgen=True: bms-loadgen writes every vehicle's topic and uses bench/#."""
    acl = mosquitto_acl_text(loadgen=True)
    assert _rules(acl)[3:] == [
        f"user {LOADGEN_USERNAME}", "topic write fleet/+/telemetry", "topic readwrite bench/#",
    ]  # fmt: skip
    assert "TEST HARNESS ONLY" in acl and "Never put" in acl


def test_amqtt_acl_is_the_same_policy_per_user() -> None:
    """amqtt has no %u: each vehicle its own publish entry, the bridge its subscribe entry."""
    assert amqtt_acl(["v-1", "v-2"]) == {
        "publish_acl": {"v-1": ["fleet/v-1/telemetry"], "v-2": ["fleet/v-2/telemetry"]},
        "acl": {BRIDGE_USERNAME: ["fleet/+/telemetry"]},
    }
    assert amqtt_acl(["v-1"], loadgen=True)["publish_acl"][LOADGEN_USERNAME] == ["fleet/+/telemetry", "bench/#"]


def test_amqtt_hash_is_argon2_that_verifies() -> None:
    """amqtt 0.12 verifies argon2: the hash is argon2id and checks out."""
    from argon2 import PasswordHasher

    hashed = amqtt_password_hash("pw")
    assert hashed.startswith("$argon2id$")
    assert PasswordHasher().verify(hashed, "pw")


def test_conf_snippet_disallows_anonymous_and_comments_out_tls() -> None:
    """The snippet names both files, refuses anonymous clients, carries a TLS listener with
    client certificates as usernames, commented out, and keeps the bridge's queue whole
    (unlimited queue, sessions on disk: docs/reliability.md)."""
    conf = mosquitto_conf_text(Path("/x/passwd"), Path("/x/acl"), port=1884)
    active = _rules(conf)
    assert active == [
        "per_listener_settings false", "allow_anonymous false", "password_file /x/passwd",
        "acl_file /x/acl", "listener 1884 127.0.0.1", "max_queued_messages 10000000",
        "persistence true", "autosave_interval 30",
    ]  # fmt: skip
    for line in ("#listener 8883", "#require_certificate true", "#use_identity_as_username true",
                 "#cafile ", "#certfile ", "#keyfile "):  # fmt: skip
        assert line in conf


@pytest.mark.parametrize("vid", ["v-00001", "V_1.a:b-c", "x" * 64, "9"])
def test_valid_vehicle_ids_pass(vid: str) -> None:
    """Ids of the telemetry contract's pattern are valid vehicle ids."""
    assert check_vehicle_id(vid) == vid


@pytest.mark.parametrize(
    "vid", ["", "v 1", "v/1", "v+", "v#", "-v", "x" * 65, "v1\n", "ü", "%u"]
)  # fmt: skip
def test_invalid_vehicle_ids_are_refused_with_the_pattern_and_the_id(vid: str) -> None:
    """Anything else is refused, the error quoting the expected pattern and what arrived."""
    with pytest.raises(BrokerAuthError) as err:
        check_vehicle_id(vid, where="ids.txt line 3: ")
    assert str(err.value).startswith("ids.txt line 3: expected a vehicle id matching")
    assert ID_PATTERN in str(err.value) and repr(vid) in str(err.value)


@pytest.mark.parametrize("vid", [BRIDGE_USERNAME, LOADGEN_USERNAME])
def test_service_usernames_are_not_vehicle_ids(vid: str) -> None:
    """A vehicle called bms-bridge would read the whole fleet: refused."""
    with pytest.raises(BrokerAuthError, match=f"other than the service usernames.*got '{vid}'"):
        check_vehicle_id(vid)


def test_read_vehicle_ids_skips_comments_and_names_the_bad_line(tmp_path: Path) -> None:
    """One id a line, blank lines and # comments skipped; a bad or repeated id names its
    file and line; an empty file is an error."""
    ids = tmp_path / "ids.txt"
    ids.write_text("# fleet A\nv-1\n\n  v-2  \n")
    assert read_vehicle_ids(ids) == ["v-1", "v-2"]
    ids.write_text("v-1\nv 2\n")
    with pytest.raises(BrokerAuthError, match=rf"{re.escape(str(ids))} line 2: expected .* got 'v 2'"):
        read_vehicle_ids(ids)
    ids.write_text("v-1\nv-2\nv-1\n")
    with pytest.raises(BrokerAuthError, match=r"line 3: expected each vehicle id once, got 'v-1' again \(first on line 1\)"):
        read_vehicle_ids(ids)
    ids.write_text("# nothing\n\n")
    with pytest.raises(BrokerAuthError, match="at least one vehicle id"):
        read_vehicle_ids(ids)


def test_provisioning_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    """32 random bytes in <data_dir>/mqtt/provisioning.key, 0600, the same on every load."""
    key = load_provisioning_key(tmp_path, env={})
    path = tmp_path / "mqtt" / "provisioning.key"
    assert len(key) == 32 and path.read_bytes() == key
    assert _mode(path) == 0o600
    assert load_provisioning_key(tmp_path, env={}) == key


def test_provisioning_key_from_the_environment_must_exist_and_be_long_enough(tmp_path: Path) -> None:
    """BMS_MQTT_PROVISIONING_KEY_FILE: used as is; missing or short is an error saying so,
    and nothing is created in the data dir."""
    named = tmp_path / "operator.key"
    env = {PROVISIONING_KEY_ENV: str(named)}
    with pytest.raises(BrokerAuthError, match="does not exist"):
        load_provisioning_key(tmp_path / "data", env=env)
    write_secret_file(named, b"short")
    with pytest.raises(BrokerAuthError, match=r"at least 16 bytes .* got 5"):
        load_provisioning_key(tmp_path / "data", env=env)
    write_secret_file(named, b"k" * 40)
    assert load_provisioning_key(tmp_path / "data", env=env) == b"k" * 40
    assert not (tmp_path / "data").exists()


def test_bridge_password_is_random_stable_and_0600(tmp_path: Path) -> None:
    """bms-bridge's password is created beside the key (0600) and reused."""
    first = bridge_login(tmp_path)
    path = tmp_path / "mqtt" / "bms-bridge.password"
    assert first.username == BRIDGE_USERNAME and _mode(path) == 0o600
    assert len(first.password.get_secret_value()) >= 40
    assert bridge_login(tmp_path) == first
    assert bridge_login(tmp_path / "other") != first


def test_write_secret_file_keeps_an_existing_file_when_asked(tmp_path: Path) -> None:
    """replace=False leaves an existing secret alone (two processes agree on one key) and
    leaves no temporary file behind."""
    path = tmp_path / "s"
    assert write_secret_file(path, b"one", replace=False)
    assert not write_secret_file(path, b"two", replace=False)
    assert path.read_bytes() == b"one"
    assert write_secret_file(path, b"three")
    assert path.read_bytes() == b"three" and _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
