"""Tests for :mod:`bms.settings`: TOML sections with defaults, strict keys, env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from bms.settings import (
    BridgeSettings,
    RayClusterSettings,
    ServeSettings,
    Settings,
    SettingsError,
    SimSettings,
    TwinSettings,
)

FULL_TOML = """\
[alerts]
enabled = false
interval_s = 5.0
ops_interval_s = 60.0
pack_temp_critical_c = 55.0
cell_imbalance_critical_v = 0.25
cell_sag_v = 2.6
series_cells = 10
rul_horizon_cycles = 80.0
health_drop_per_day = 3.0
silent_after_s = 600.0
dead_letters_per_min = 50.0
ingest_lag_p99_s = 20.0
webhook_allow_cidrs = ["10.0.0.0/8"]
webhook_allow_http = true

[twins]
window_samples = 128
shard_size = 500
checkpoint_interval_s = 30.0
redis_flush_interval_s = 0.5
lstm_hidden_size = 16
rated_capacity_ah = 20.0
hot_threshold_c = 50.0
zone_cell_km = 2.0
shard_resource = "bms_twin_shard"
fleet_size = 250000

[bridge]
workers = 4
share_group = "west_1"
batch_max_messages = 500
batch_max_wait_ms = 5.0
max_inflight_batches = 8
receive_maximum = 2000
max_payload_bytes = 65536
max_future_skew_s = 30.0
max_age_s = 3600.0
session_expiry_s = 60
max_batch_attempts = 3

[serve]
http_host = "0.0.0.0"
http_port = 8080
proxy_location = "HeadOnly"

[ray]
address = "ray://head:10001"
num_cpus = 8
object_store_memory_mb = 1024
dashboard_port = 8266
namespace = "bms-test"

[sim]
vehicles = 50
report_interval_s = 2.0
samples_per_message = 10
center_lat = 48.1
center_lon = 11.6
radius_km = 3.0
seed = 11
time_scale = 60.0
fault_rate_per_vehicle_day = 0.01
initial_faults = 0
initial_fault_after_s = 600.0
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bms.toml"
    path.write_text(text)
    return path


def test_no_file_and_no_env_gives_defaults() -> None:
    """Without a config file or BMS_* variables every section takes its defaults."""
    s = Settings.load(env={})
    assert s == Settings()
    assert (s.postgres_url, s.redis_url, s.mqtt_url) == (None, None, None)
    assert s.data_dir == Path(".bms-data")
    assert s.twins == TwinSettings() and s.twins.window_samples == 64
    assert s.bridge == BridgeSettings() and s.bridge.workers == 1
    assert s.serve == ServeSettings() and s.serve.http_port == 8000
    assert s.ray == RayClusterSettings() and s.ray.address is None
    assert s.sim == SimSettings() and s.sim.seed == 7


def test_empty_config_file_gives_defaults(tmp_path: Path) -> None:
    """An empty TOML file is valid and equals the defaults."""
    assert Settings.load(_write(tmp_path, ""), env={}) == Settings()


def test_missing_section_falls_back_to_defaults(tmp_path: Path) -> None:
    """A file with one section and one key leaves every other value at its default."""
    s = Settings.load(_write(tmp_path, "[sim]\nvehicles = 3\n"), env={})
    assert s.sim.vehicles == 3
    assert s.sim.seed == SimSettings().seed
    assert (s.twins, s.bridge, s.serve, s.ray) == (
        TwinSettings(), BridgeSettings(), ServeSettings(), RayClusterSettings(),
    )  # fmt: skip


def test_full_config_sets_every_section(tmp_path: Path) -> None:
    """Every key of every section in the file is taken over."""
    s = Settings.load(_write(tmp_path, FULL_TOML), env={})
    assert s.twins == TwinSettings(
        window_samples=128, shard_size=500, checkpoint_interval_s=30.0, redis_flush_interval_s=0.5,
        lstm_hidden_size=16, rated_capacity_ah=20.0, hot_threshold_c=50.0, zone_cell_km=2.0,
        shard_resource="bms_twin_shard", fleet_size=250_000,
    )  # fmt: skip
    assert s.bridge == BridgeSettings(
        workers=4, share_group="west_1", batch_max_messages=500, batch_max_wait_ms=5.0,
        max_inflight_batches=8, receive_maximum=2000, max_payload_bytes=65536,
        max_future_skew_s=30.0, max_age_s=3600.0, session_expiry_s=60, max_batch_attempts=3,
    )  # fmt: skip
    assert s.serve == ServeSettings(http_host="0.0.0.0", http_port=8080, proxy_location="HeadOnly")
    assert s.ray == RayClusterSettings(
        address="ray://head:10001", num_cpus=8, object_store_memory_mb=1024,
        dashboard_port=8266, namespace="bms-test",
    )  # fmt: skip
    assert s.sim == SimSettings(
        vehicles=50, report_interval_s=2.0, samples_per_message=10, center_lat=48.1,
        center_lon=11.6, radius_km=3.0, seed=11, time_scale=60.0,
        fault_rate_per_vehicle_day=0.01, initial_faults=0, initial_fault_after_s=600.0,
    )  # fmt: skip
    assert s.alerts.series_cells == 10 and s.alerts.webhook_allow_cidrs == ["10.0.0.0/8"]
    # Every field of every section differs from its default, so nothing was silently dropped.
    for name in ("twins", "bridge", "serve", "ray", "sim", "alerts"):
        section = getattr(s, name)
        default = type(section)()
        same = [f for f in type(section).model_fields if getattr(section, f) == getattr(default, f)]
        assert same == [], (name, same)


def test_settings_are_frozen() -> None:
    """Loaded settings cannot be changed afterwards."""
    s = Settings.load(env={})
    with pytest.raises(ValueError, match="frozen"):
        s.twins.window_samples = 8


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[twins]\nwindow_sample = 128\n", "twins.window_sample"),
        ("[bridge]\nworker = 2\n", "bridge.worker"),
        ("[twinz]\nwindow_samples = 128\n", "twinz"),
        ("postgres = 'postgresql://x'\n", "postgres"),
    ],
)
def test_unknown_key_or_section_is_rejected(tmp_path: Path, text: str, key: str) -> None:
    """A misspelt key or section is an error naming the file and the key, not ignored."""
    path = _write(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        Settings.load(path, env={})
    msg = str(info.value)
    assert f"Invalid settings in config file {path}" in msg
    assert f"  {key}: Extra inputs are not permitted" in msg


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "[twins]\nwindow_samples = 2\n",
            "twins.window_samples: Input should be greater than or equal to 4 (got 2)",
        ),
        (
            "[bridge]\nworkers = 0\n",
            "bridge.workers: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            "[serve]\nhttp_port = 70000\n",
            "serve.http_port: Input should be less than or equal to 65535 (got 70000)",
        ),
        (
            "[sim]\ncenter_lat = 91.0\n",
            "sim.center_lat: Input should be less than or equal to 90 (got 91.0)",
        ),
        ("[sim]\ntime_scale = 0\n", "sim.time_scale: Input should be greater than 0 (got 0)"),
        ("[alerts]\nwebhook_allow_cidrs = ['10.0.0.0/33']\n", "alerts.webhook_allow_cidrs: Value error, Expected networks"),
        ("[bridge]\nshare_group = 'a/b'\n", "bridge.share_group: String should match pattern"),
        (
            "[bridge]\nmax_batch_attempts = 0\n",
            "bridge.max_batch_attempts: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            "[bridge]\nmax_batch_attempts = 101\n",
            "bridge.max_batch_attempts: Input should be less than or equal to 100 (got 101)",
        ),
        ("[ray]\nnum_cpus = 'many'\n", "ray.num_cpus: Input should be a valid integer"),
        (
            "[planner]\nmax_jobs_per_round = 0\n",
            "planner.max_jobs_per_round: Input should be greater than or equal to 1 (got 0)",
        ),
        ("[models]\nnum_gpus = -0.5\n", "models.num_gpus: Input should be greater than or equal to 0 (got -0.5)"),
        (
            "[models]\nnum_gpus = 2\n",
            "models.num_gpus: Value error, Expected num_gpus in [0, 1] (an LSTM replica runs on one GPU; "
            "a fraction shares one) (got 2)",
        ),
        (
            "[models]\nlstm_dtype = 'float16'\n",
            "models.lstm_dtype: Input should be 'float32' or 'bfloat16' (got 'float16')",
        ),
    ],
)
def test_bad_value_is_rejected_with_expected_and_got(
    tmp_path: Path, text: str, fragment: str
) -> None:
    """An out-of-range or mistyped value names the key, the bound and the value that arrived."""
    with pytest.raises(SettingsError) as info:
        Settings.load(_write(tmp_path, text), env={})
    assert fragment in str(info.value)


def test_lstm_gpu_settings_default_to_the_cpu_in_float32(tmp_path: Path) -> None:
    """[models] num_gpus and lstm_dtype: 0 and float32 when absent; a GPU share and bfloat16
    when given."""
    assert (Settings().models.num_gpus, Settings().models.lstm_dtype) == (0.0, "float32")
    s = Settings.load(_write(tmp_path, "[models]\nnum_gpus = 1\nlstm_dtype = 'bfloat16'\n"), env={})
    assert (s.models.num_gpus, s.models.lstm_dtype) == (1.0, "bfloat16")


def test_every_bad_key_is_listed(tmp_path: Path) -> None:
    """Several errors in one file are all reported, one line each."""
    path = _write(tmp_path, "[twins]\nwindow_samples = 2\nshard_size = 0\n[sim]\nbogus = 1\n")
    with pytest.raises(SettingsError) as info:
        Settings.load(path, env={})
    lines = str(info.value).splitlines()
    assert len(lines) == 4
    assert {line.split(":")[0].strip() for line in lines[1:]} == {
        "twins.window_samples", "twins.shard_size", "sim.bogus",
    }  # fmt: skip


def test_environment_sets_hosts_and_data_dir() -> None:
    """BMS_POSTGRES_URL, BMS_REDIS_URL, BMS_MQTT_URL and BMS_DATA_DIR fill the top-level values."""
    s = Settings.load(
        env={
            "BMS_POSTGRES_URL": "postgresql://u:p@db:5432/bms",
            "BMS_REDIS_URL": "redis://cache:6379/0",
            "BMS_MQTT_URL": "mqtt://broker:1883",
            "BMS_DATA_DIR": "/var/lib/bms",
        }
    )
    assert s.postgres_url == "postgresql://u:p@db:5432/bms"
    assert s.redis_url == "redis://cache:6379/0"
    assert s.mqtt_url == "mqtt://broker:1883"
    assert s.data_dir == Path("/var/lib/bms")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """A BMS_* variable wins over the same key in the config file; empty variables are ignored."""
    path = _write(tmp_path, "redis_url = 'redis://file:1'\nmqtt_url = 'tcp://file:1883'\n")
    s = Settings.load(path, env={"BMS_REDIS_URL": "redis://env:2", "BMS_MQTT_URL": ""})
    assert s.redis_url == "redis://env:2"
    assert s.mqtt_url == "tcp://file:1883"


def test_os_environ_is_read_when_env_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without env=, load() reads the process environment."""
    monkeypatch.delenv("BMS_CONFIG", raising=False)
    for name in ("BMS_POSTGRES_URL", "BMS_MQTT_URL", "BMS_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BMS_REDIS_URL", "redis://from-os:6379")
    assert Settings.load().redis_url == "redis://from-os:6379"


def test_bms_config_points_at_the_file(tmp_path: Path) -> None:
    """BMS_CONFIG names the config file when no path is passed."""
    path = _write(tmp_path, "[serve]\nhttp_port = 9000\n")
    assert Settings.load(env={"BMS_CONFIG": str(path)}).serve.http_port == 9000


def test_explicit_path_wins_over_bms_config(tmp_path: Path) -> None:
    """A path passed to load() is used even when BMS_CONFIG names another file."""
    path = _write(tmp_path, "[serve]\nhttp_port = 9000\n")
    other = tmp_path / "other.toml"
    other.write_text("[serve]\nhttp_port = 9001\n")
    assert Settings.load(path, env={"BMS_CONFIG": str(other)}).serve.http_port == 9000


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    """A config file that does not exist is a SettingsError naming it, also via BMS_CONFIG."""
    path = tmp_path / "nope.toml"
    with pytest.raises(SettingsError, match=f"Config file {path} does not exist"):
        Settings.load(path, env={})
    with pytest.raises(SettingsError, match=f"Config file {path} does not exist"):
        Settings.load(env={"BMS_CONFIG": str(path)})


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    """A file that is not TOML is a SettingsError naming the file and the parse error."""
    path = _write(tmp_path, "[twins\nwindow_samples = 8\n")
    with pytest.raises(SettingsError) as info:
        Settings.load(path, env={})
    assert f"Config file {path} is not valid TOML" in str(info.value)
    assert "line 1" in str(info.value)


@pytest.mark.parametrize("url", ["mqtt://broker:1883", "tcp://broker:1883"])
def test_mqtt_url_schemes_accepted(url: str) -> None:
    """mqtt:// and tcp:// broker URLs are accepted."""
    assert Settings.load(env={"BMS_MQTT_URL": url}).mqtt_url == url


@pytest.mark.parametrize("url", ["http://broker:1883", "broker:1883", "mqtts://broker:8883"])
def test_bad_mqtt_url_scheme_is_rejected(url: str) -> None:
    """Any other scheme is an error that says what was expected and what arrived."""
    with pytest.raises(SettingsError) as info:
        Settings.load(env={"BMS_MQTT_URL": url})
    msg = str(info.value)
    assert msg.startswith("Invalid settings in environment:")
    assert f"Expected an mqtt://host:port URL, got {url!r}" in msg


def test_bad_env_value_is_blamed_on_the_variable_not_the_file(tmp_path: Path) -> None:
    """With a config file given, a bad BMS_MQTT_URL is still reported as coming from the env."""
    path = _write(tmp_path, "[serve]\nhttp_port = 9000\n")
    with pytest.raises(SettingsError) as info:
        Settings.load(path, env={"BMS_MQTT_URL": "http://broker"})
    assert "mqtt_url:" in str(info.value)
    assert "from BMS_MQTT_URL" in str(info.value)


def test_bad_file_value_is_not_blamed_on_the_environment(tmp_path: Path) -> None:
    """A bad mqtt_url written in the file names no environment variable."""
    path = _write(tmp_path, "mqtt_url = 'http://broker'\n")
    with pytest.raises(SettingsError) as info:
        Settings.load(path, env={})
    assert "mqtt_url:" in str(info.value)
    assert "BMS_" not in str(info.value)


def test_environment_sets_the_bridge_broker_login_and_hides_the_password() -> None:
    """BMS_MQTT_USERNAME / BMS_MQTT_PASSWORD: the bridge's login on an external broker; the
    password is a SecretStr, so the settings' repr does not show it."""
    s = Settings.load(env={"BMS_MQTT_USERNAME": "bms-bridge", "BMS_MQTT_PASSWORD": "hunter2"})
    assert s.mqtt_username == "bms-bridge"
    assert s.mqtt_password is not None and s.mqtt_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s)
    assert Settings.load(env={}).mqtt_password is None


def test_urls_with_passwords_never_show_in_reprs_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password in a server URL stays out of the settings' repr and of the error for a
    bad value; the MQTT password too."""
    from bms.services import ServiceUrls

    url = "postgresql://bms:hunter2@db.internal:5432/bms"
    s = Settings(postgres_url=url, redis_url="redis://:hunter2@cache:6379/0")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    urls = ServiceUrls(url, "redis://:hunter2@cache:6379/0", "mqtt://broker:1883")
    assert "hunter2" not in repr(urls) and "bms:***@db.internal" in repr(urls)
    monkeypatch.setenv("BMS_MQTT_URL", "http://u:hunter2@broker")
    monkeypatch.setenv("BMS_MQTT_PASSWORD", "hunter2")
    monkeypatch.setenv("BMS_MQTT_USERNAME", "")
    with pytest.raises(SettingsError) as err:
        Settings.load(None)
    assert "hunter2" not in str(err.value) and "u:***@broker" in str(err.value)
