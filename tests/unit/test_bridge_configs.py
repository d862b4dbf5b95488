"""Tests for :func:`bms.system.bridge_configs`: the ``[bridge]`` knobs reach every worker."""

from __future__ import annotations

from bms.services import ServiceUrls
from bms.settings import BridgeSettings, Settings
from bms.system import bridge_configs

_URLS = ServiceUrls(
    postgres_url="postgresql://pg/db", redis_url="redis://r:6379/0", mqtt_url="mqtt://broker:1884"
)


def test_max_batch_attempts_reaches_every_worker() -> None:
    """``[bridge] max_batch_attempts`` is the routing-attempt bound of each bridge worker."""
    settings = Settings.model_validate({"bridge": {"workers": 2, "max_batch_attempts": 7}})
    configs = bridge_configs(settings, _URLS, shared_subscriptions=True, mqtt_v5=True)
    assert [c.max_batch_attempts for c in configs] == [7, 7]


def test_default_max_batch_attempts_matches_the_bridge_default() -> None:
    """Without the key, workers get the settings default, which is also BridgeConfig's."""
    (config,) = bridge_configs(Settings(), _URLS, shared_subscriptions=False, mqtt_v5=False)
    assert config.max_batch_attempts == BridgeSettings().max_batch_attempts == 10


def test_every_worker_logs_in_as_the_services_bridge_login() -> None:
    """The broker login in ServiceUrls reaches every worker; without one, none is set."""
    from pydantic import SecretStr

    from bms.broker_auth import MqttLogin

    urls = ServiceUrls(
        postgres_url="postgresql://pg/db", redis_url="redis://r:6379/0", mqtt_url="mqtt://broker:1884",
        mqtt_login=MqttLogin("bms-bridge", SecretStr("s3cret")),
    )  # fmt: skip
    settings = Settings.model_validate({"bridge": {"workers": 2}})
    configs = bridge_configs(settings, urls, shared_subscriptions=True, mqtt_v5=True)
    assert [(c.username, c.password.get_secret_value() if c.password else None) for c in configs] == [
        ("bms-bridge", "s3cret"), ("bms-bridge", "s3cret"),
    ]  # fmt: skip
    assert "s3cret" not in repr(configs) and "s3cret" not in repr(urls)
    (anonymous,) = bridge_configs(Settings(), _URLS, shared_subscriptions=False, mqtt_v5=False)
    assert anonymous.username is None and anonymous.password is None
