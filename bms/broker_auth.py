"""Vehicle identity on MQTT: per-vehicle credentials, and the broker files that enforce them.

Every vehicle logs in to the broker as itself and may publish only its own telemetry topic:

=================  ===========================================  ==============================
MQTT username      may                                          where its password comes from
=================  ===========================================  ==============================
``<vehicle_id>``   write ``fleet/<vehicle_id>/telemetry`` only;  derived from the provisioning
                   read nothing                                 key (below), or handed out
``bms-bridge``     read ``fleet/+/telemetry`` (also through     random, in
                   ``$share/<group>/fleet/+/telemetry``)        ``<data_dir>/mqtt/bms-bridge.password``
``bms-loadgen``    write ``fleet/+/telemetry``, read and write  random per run, in memory
                   ``bench/#``: the benchmark's load generator
                   and **only** on the benchmark's own broker
=================  ===========================================  ==============================

Vehicle passwords are derived, so the simulator (and a device factory) need not store
100,000 of them::

    password = base64url(HMAC-SHA256(key, vehicle_id.encode("utf-8")))   # no "=" padding

``key`` is the provisioning key: the bytes of ``<data_dir>/mqtt/provisioning.key`` (32 random
bytes, mode 0600, created on first use), or of the file that ``BMS_MQTT_PROVISIONING_KEY_FILE``
names. An operator who would rather hand devices random passwords can: the broker only ever
sees the hashes in the password file, and ``bms vehicles provision`` lists every password it
hashed in ``credentials.csv``.

The broker files are mosquitto's own formats: a password file of ``$7$`` hashes
(PBKDF2-HMAC-SHA512, 101 iterations, as ``mosquitto_passwd`` writes them) and an ACL file
whose ``pattern write fleet/%u/telemetry`` ties a vehicle's topic to its username. A
derived password carries 256 bits of entropy, so the small iteration count costs no safety
while a broker checks thousands of connects a second. The amqtt fallback broker gets the
equivalent in its own formats (argon2 hashes, explicit per-user topic lists).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import hmac
import io
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from contracts.telemetry import ID_PATTERN, TOPIC_FILTER

__all__ = [
    "BENCH_TOPIC_ROOT",
    "BRIDGE_USERNAME",
    "LOADGEN_USERNAME",
    "MOSQUITTO_PBKDF2_ITERATIONS",
    "PROVISIONING_KEY_ENV",
    "SERVICE_USERNAMES",
    "BrokerAuthError",
    "BrokerIdentities",
    "MqttLogin",
    "ProvisionedFiles",
    "VehicleCredentials",
    "amqtt_acl",
    "amqtt_password_hash",
    "bridge_login",
    "check_mosquitto_password",
    "check_vehicle_id",
    "load_provisioning_key",
    "loadgen_login",
    "mosquitto_acl_text",
    "mosquitto_conf_text",
    "mosquitto_passwd_text",
    "mosquitto_password_hash",
    "provisioning_key_path",
    "read_vehicle_ids",
    "vehicle_password",
    "write_provisioning",
    "write_secret_file",
]

log = logging.getLogger(__name__)

#: The ingest bridge's MQTT username.
BRIDGE_USERNAME = "bms-bridge"
#: The benchmark load generator's username: a test-harness identity that may publish for
#: every vehicle. Only the broker ``bms bench`` starts for itself knows it; it must never
#: appear in a production ACL.
LOADGEN_USERNAME = "bms-loadgen"
#: Usernames no vehicle may have (a vehicle named ``bms-bridge`` would read the whole fleet).
SERVICE_USERNAMES = frozenset({BRIDGE_USERNAME, LOADGEN_USERNAME})
#: Environment variable naming a provisioning key file to use instead of the data dir's.
PROVISIONING_KEY_ENV = "BMS_MQTT_PROVISIONING_KEY_FILE"
#: ``mosquitto_passwd``'s default for ``$7$`` (sha512-pbkdf2) hashes in mosquitto 2.0.
MOSQUITTO_PBKDF2_ITERATIONS = 101

_KEY_BYTES = 32
# A shorter key makes every derived password guessable from one leaked password file.
_MIN_KEY_BYTES = 16
_SALT_BYTES = 12  # what mosquitto_passwd uses
_PBKDF2_HASH_BYTES = 64
_ID_RE = re.compile(ID_PATTERN)
_KEY_FILE = "provisioning.key"
_BRIDGE_PASSWORD_FILE = f"{BRIDGE_USERNAME}.password"
#: Where the benchmark's own traffic goes (the bare-subscriber ceiling), away from fleet/.
BENCH_TOPIC_ROOT = "bench"


class BrokerAuthError(ValueError):
    """A vehicle id, key file or credential that cannot be used, with what was expected."""


@dataclass(frozen=True)
class MqttLogin:
    """A username and password for one MQTT client.

    Parameters
    ----------
    username
        The MQTT username.
    password
        A :class:`~pydantic.SecretStr`: it shows as ``**********`` in a repr, a log line or
        an f-string; ``password.get_secret_value()`` is the one way to the text.
    """

    username: str
    password: SecretStr


class VehicleCredentials:
    """``vehicle_id -> (username, password)`` for the simulator, derived from the key.

    The simulator's credentials seam (:func:`sim.publisher.run_fleet` takes any callable of
    this shape). The key never shows in the repr.

    Raises
    ------
    BrokerAuthError
        From a call, when the id is not a valid vehicle id.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < _MIN_KEY_BYTES:
            raise BrokerAuthError(
                f"Expected a provisioning key of at least {_MIN_KEY_BYTES} bytes, got {len(key)}."
            )
        self._key = key

    def __call__(self, vehicle_id: str) -> tuple[str, str]:
        return check_vehicle_id(vehicle_id), vehicle_password(self._key, vehicle_id)

    def login(self, vehicle_id: str) -> MqttLogin:
        """The same credentials as an :class:`MqttLogin`."""
        username, password = self(vehicle_id)
        return MqttLogin(username, SecretStr(password))

    def __repr__(self) -> str:
        return "VehicleCredentials(key=<hidden>)"


@dataclass(frozen=True)
class BrokerIdentities:
    """Who the clients of one broker log in as (``None``: connect without credentials).

    Parameters
    ----------
    bridge
        The ingest bridge (``bms-bridge`` on the embedded broker; ``BMS_MQTT_USERNAME`` /
        ``BMS_MQTT_PASSWORD`` on an external one).
    vehicles
        Each simulated vehicle's own credentials.
    loadgen
        The benchmark load generator; only on a broker started with it.
    """

    bridge: MqttLogin | None
    vehicles: VehicleCredentials | None
    loadgen: MqttLogin | None = None


# -- vehicle ids -------------------------------------------------------------------------


def check_vehicle_id(vehicle_id: str, *, where: str = "") -> str:
    """Return ``vehicle_id`` if it can be a vehicle's id and MQTT username.

    Parameters
    ----------
    where
        Prefix for the error (``"ids.txt line 3: "``).

    Raises
    ------
    BrokerAuthError
        Quoting the id, when it does not match the telemetry contract's id pattern or is a
        service username.
    """
    if not isinstance(vehicle_id, str) or not _ID_RE.fullmatch(vehicle_id):
        raise BrokerAuthError(
            f"{where}expected a vehicle id matching {ID_PATTERN} (letters, digits, _ . : -; "
            f"1 to 64 characters), got {vehicle_id!r}."
        )
    if vehicle_id in SERVICE_USERNAMES:
        raise BrokerAuthError(
            f"{where}expected a vehicle id other than the service usernames "
            f"{sorted(SERVICE_USERNAMES)}, got {vehicle_id!r}."
        )
    return vehicle_id


def read_vehicle_ids(path: Path) -> list[str]:
    """One vehicle id a line; blank lines and ``#`` comments are skipped.

    Raises
    ------
    BrokerAuthError
        Naming the file and line of the first bad or repeated id, or an empty file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BrokerAuthError(f"Expected a readable UTF-8 file of vehicle ids at {path}: {err}") from None
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        vid = line.strip()
        if not vid or vid.startswith("#"):
            continue
        check_vehicle_id(vid, where=f"{path} line {number}: ")
        if vid in seen:
            raise BrokerAuthError(
                f"{path} line {number}: expected each vehicle id once, got {vid!r} again "
                f"(first on line {seen[vid]})."
            )
        seen[vid] = number
    if not seen:
        raise BrokerAuthError(f"Expected at least one vehicle id in {path}, got none.")
    return list(seen)


# -- secrets on disk -----------------------------------------------------------------------


def write_secret_file(path: Path, data: bytes, *, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` with mode 0600 from the first byte on.

    The file appears whole (written aside, then renamed or linked into place), so a reader in
    another process never sees half a secret.

    Parameters
    ----------
    replace
        False keeps an existing file (two processes creating the same key agree on one).

    Returns
    -------
    bool
        Whether ``data`` was written (False: ``replace`` was false and the file existed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _read_secret(path: Path, what: str) -> bytes:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as err:
        raise BrokerAuthError(f"Expected a readable {what} at {path}: {err}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # A warning, not an error: secret mounts (Kubernetes, systemd credentials) are often
        # 0644 inside a container nobody else can enter.
        log.warning("%s %s is readable by group or others (mode %o); expected 0600", what, path, mode & 0o777)
    return data


def provisioning_key_path(data_dir: Path, env: Mapping[str, str] | None = None) -> Path:
    """``$BMS_MQTT_PROVISIONING_KEY_FILE`` when set, else ``<data_dir>/mqtt/provisioning.key``."""
    env = os.environ if env is None else env
    named = env.get(PROVISIONING_KEY_ENV)
    return Path(named) if named else data_dir / "mqtt" / _KEY_FILE


def load_provisioning_key(data_dir: Path, env: Mapping[str, str] | None = None) -> bytes:
    """The provisioning key; the data dir's is created (32 random bytes, 0600) on first use.

    A key file named by ``BMS_MQTT_PROVISIONING_KEY_FILE`` must exist: a mistyped path must
    not quietly mint a new key that no device's password matches.

    Raises
    ------
    BrokerAuthError
        When the named file is missing or unreadable, or the key is shorter than 16 bytes.
    """
    env = os.environ if env is None else env
    path = provisioning_key_path(data_dir, env)
    if env.get(PROVISIONING_KEY_ENV):
        if not path.exists():
            raise BrokerAuthError(
                f"Expected the provisioning key file that {PROVISIONING_KEY_ENV} names at "
                f"{path}; it does not exist. Create one with: "
                f"(umask 077; head -c {_KEY_BYTES} /dev/urandom > {path})"
            )
    elif write_secret_file(path, secrets.token_bytes(_KEY_BYTES), replace=False):
        log.info("created MQTT provisioning key %s", path)
    key = _read_secret(path, "provisioning key")
    if len(key) < _MIN_KEY_BYTES:
        raise BrokerAuthError(
            f"Expected a provisioning key of at least {_MIN_KEY_BYTES} bytes in {path}, "
            f"got {len(key)}."
        )
    return key


def bridge_login(data_dir: Path) -> MqttLogin:
    """``bms-bridge`` and its password, created (random, 0600) beside the key on first use."""
    path = data_dir / "mqtt" / _BRIDGE_PASSWORD_FILE
    if write_secret_file(path, secrets.token_urlsafe(32).encode(), replace=False):
        log.info("created MQTT password of %s in %s", BRIDGE_USERNAME, path)
    password = _read_secret(path, f"{BRIDGE_USERNAME} password").decode().strip()
    if not password:
        raise BrokerAuthError(f"Expected a password in {path}, got an empty file.")
    return MqttLogin(BRIDGE_USERNAME, SecretStr(password))


def loadgen_login() -> MqttLogin:
    """``bms-loadgen`` with a fresh random password: kept in memory, for one benchmark run."""
    return MqttLogin(LOADGEN_USERNAME, SecretStr(secrets.token_urlsafe(32)))


def vehicle_password(key: bytes, vehicle_id: str) -> str:
    """``base64url(HMAC-SHA256(key, vehicle_id))`` without padding (43 characters)."""
    digest = hmac.new(key, vehicle_id.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# -- mosquitto -----------------------------------------------------------------------------


def mosquitto_password_hash(
    password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_PBKDF2_ITERATIONS
) -> str:
    """``$7$<iterations>$<base64 salt>$<base64 hash>``: mosquitto's PBKDF2-HMAC-SHA512 format.

    The same text ``mosquitto_passwd -H sha512-pbkdf2`` writes: a 12-byte salt and a 64-byte
    hash, both in standard base64 with padding.
    """
    if iterations < 1:
        raise BrokerAuthError(f"Expected iterations >= 1, got {iterations}.")
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    dk = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, _PBKDF2_HASH_BYTES)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(dk).decode()}"


def check_mosquitto_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash (as mosquitto would check it).

    Raises
    ------
    BrokerAuthError
        When ``hashed`` is not a ``$7$`` hash.
    """
    parts = hashed.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7" or not parts[2].isdigit():
        raise BrokerAuthError(f"Expected a $7$<iterations>$<salt>$<hash> hash, got {hashed[:12]!r}...")
    salt, expected = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    dk = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, int(parts[2]), len(expected))
    return hmac.compare_digest(dk, expected)


def mosquitto_passwd_text(logins: Iterable[MqttLogin]) -> str:
    """A mosquitto password file: ``username:$7$...`` a line.

    Raises
    ------
    BrokerAuthError
        On a username mosquitto cannot read back (one with ``:`` or a line break) or a
        username given twice.
    """
    lines: list[str] = []
    seen: set[str] = set()
    for login in logins:
        name = login.username
        if not name or ":" in name or "\n" in name or "\r" in name:
            raise BrokerAuthError(f"Expected a username without ':' or line breaks, got {name!r}.")
        if name in seen:
            raise BrokerAuthError(f"Expected each username once in a password file, got {name!r} again.")
        seen.add(name)
        lines.append(f"{name}:{mosquitto_password_hash(login.password.get_secret_value())}")
    return "\n".join(lines) + "\n"


def mosquitto_acl_text(*, loadgen: bool = False) -> str:
    """The mosquitto ACL file: vehicles write their own topic, the bridge reads them all.

    Parameters
    ----------
    loadgen
        Add the ``bms-loadgen`` block. Only for the benchmark's own broker.
    """
    topic = TOPIC_FILTER.replace("+", "%u")
    lines = [
        "# Mosquitto ACL for the battery fleet (bms/broker_auth.py). What is not granted here is",
        "# denied. See docs/security.md, 'Vehicle identity on MQTT'.",
        "",
        "# Every vehicle: its MQTT username is its vehicle id; it may publish its own telemetry and",
        "# nothing else, and read nothing. (A pattern applies to every user, the services too.)",
        f"pattern write {topic}",
        "",
        "# The ingest bridge reads every vehicle's telemetry. Mosquitto 2.0 checks what it delivers",
        "# through a shared subscription ($share/<group>/fleet/+/telemetry) against the message's",
        "# own topic, so this line covers the bridge's shared subscriptions too.",
        f"user {BRIDGE_USERNAME}",
        f"topic read {TOPIC_FILTER}",
    ]
    if loadgen:
        lines += [
            "",
            "# TEST HARNESS ONLY: the benchmark load generator publishes for every vehicle. Never put",
            "# this identity into a production ACL: it defeats per-vehicle identity.",
            f"user {LOADGEN_USERNAME}",
            f"topic write {TOPIC_FILTER}",
            f"topic readwrite {BENCH_TOPIC_ROOT}/#",
        ]
    return "\n".join(lines) + "\n"


def mosquitto_conf_text(passwd_path: Path, acl_path: Path, *, port: int = 1883) -> str:
    """A mosquitto.conf snippet: an authenticated listener, and a TLS one to uncomment."""
    return "\n".join([
        "# Vehicle identity on MQTT (written by `bms vehicles provision`; see docs/security.md).",
        "# Authentication and ACLs apply to every listener below.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {passwd_path}",
        f"acl_file {acl_path}",
        "",
        "# Plain TCP, for services on this host (the bridge). Passwords cross it in clear text:",
        "# vehicles connect over TLS (below).",
        f"listener {port} 127.0.0.1",
        "",
        "# TLS for vehicles: each device presents a client certificate whose CN is its vehicle id,",
        "# and mosquitto takes that CN as the username (the password is then not needed).",
        "#listener 8883",
        "#cafile /etc/mosquitto/certs/fleet-ca.crt",
        "#certfile /etc/mosquitto/certs/broker.crt",
        "#keyfile /etc/mosquitto/certs/broker.key",
        "#require_certificate true",
        "#use_identity_as_username true",
        "",
        "# Nothing lost while the bridge is slow, restarting, or the broker restarts",
        "# (docs/reliability.md): a deep queue for the bridge's persistent session (the default",
        "# of 1000 messages drops the rest silently) and sessions kept on disk. (A finite depth:",
        "# mosquitto 2.0.11 with 0, unlimited, dropped a client whose publish the ACL denied.)",
        "max_queued_messages 10000000",
        "persistence true",
        "#persistence_location /var/lib/mosquitto/",
        "autosave_interval 30",
        "",
    ])  # fmt: skip


# -- amqtt (the embedded fallback broker) ----------------------------------------------------


def amqtt_password_hash(password: str) -> str:
    """An argon2id hash for amqtt's password file (amqtt 0.12 verifies argon2 and bcrypt).

    Deliberately cheap (1 pass, 1 MiB): the passwords are random 256-bit values, so hash
    cost buys no safety, and the broker checks one hash per connect.
    """
    # amqtt's FileAuthPlugin verifies with pwdlib, which depends on argon2-cffi: present
    # wherever the amqtt fallback can run, so it is imported only here.
    from argon2 import PasswordHasher

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    hashed: str = hasher.hash(password)
    return hashed


def amqtt_acl(vehicle_ids: Sequence[str], *, loadgen: bool = False) -> dict[str, dict[str, list[str]]]:
    """amqtt's ``TopicAccessControlListPlugin`` config equal to :func:`mosquitto_acl_text`.

    amqtt has no ``%u`` patterns, so each vehicle gets its own publish entry. ``acl`` is
    amqtt's name for the subscribe list; a user missing from a list may do nothing there.
    """
    publish: dict[str, list[str]] = {vid: [TOPIC_FILTER.replace("+", vid)] for vid in vehicle_ids}
    subscribe: dict[str, list[str]] = {BRIDGE_USERNAME: [TOPIC_FILTER]}
    if loadgen:
        publish[LOADGEN_USERNAME] = [TOPIC_FILTER, f"{BENCH_TOPIC_ROOT}/#"]
        subscribe[LOADGEN_USERNAME] = [f"{BENCH_TOPIC_ROOT}/#"]
    return {"publish_acl": publish, "acl": subscribe}


# -- provisioning output ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProvisionedFiles:
    """What :func:`write_provisioning` wrote (``passwd`` and ``credentials_csv`` are 0600)."""

    passwd: Path
    acl: Path
    mosquitto_conf: Path
    credentials_csv: Path


def write_provisioning(
    out_dir: Path, vehicle_ids: Sequence[str], key: bytes, bridge: MqttLogin, *, port: int = 1883
) -> ProvisionedFiles:
    """Broker files for ``vehicle_ids`` and the bridge, and the devices' credentials.

    Writes ``passwd`` (mosquitto ``$7$`` hashes of every vehicle and ``bms-bridge``), ``acl``,
    ``mosquitto.conf`` (a snippet naming both, with a TLS listener to uncomment) and
    ``credentials.csv`` (``vehicle_id,username,password``, one row a vehicle, for flashing
    devices). The load generator is never included.

    Raises
    ------
    BrokerAuthError
        On an invalid or repeated vehicle id (nothing is written then).
    """
    seen: set[str] = set()
    for vid in vehicle_ids:
        check_vehicle_id(vid)
        if vid in seen:
            raise BrokerAuthError(f"Expected each vehicle id once, got {vid!r} again.")
        seen.add(vid)
    if not vehicle_ids:
        raise BrokerAuthError("Expected at least one vehicle id, got none.")
    credentials = VehicleCredentials(key)
    logins = [credentials.login(v) for v in vehicle_ids]
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ProvisionedFiles(
        passwd=out_dir / "passwd", acl=out_dir / "acl",
        mosquitto_conf=out_dir / "mosquitto.conf", credentials_csv=out_dir / "credentials.csv",
    )  # fmt: skip
    write_secret_file(files.passwd, mosquitto_passwd_text([*logins, bridge]).encode())
    files.acl.write_text(mosquitto_acl_text(loadgen=False))
    files.mosquitto_conf.write_text(
        mosquitto_conf_text(files.passwd.resolve(), files.acl.resolve(), port=port)
    )
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["vehicle_id", "username", "password"])
    writer.writerows([x.username, x.username, x.password.get_secret_value()] for x in logins)
    write_secret_file(files.credentials_csv, rows.getvalue().encode())
    return files
