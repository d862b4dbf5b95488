"""Tests for the bridge's broker login: BridgeConfig's username/password and _make_client."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import SecretStr

from serve.mqtt_bridge import BridgeConfig, MqttBridge


class _Unused:
    async def submit(self, batch: Any) -> Any:
        raise AssertionError("not called")

    async def record(self, letters: Any) -> None:
        raise AssertionError("not called")


def _config(**kw: Any) -> BridgeConfig:
    return BridgeConfig(host="127.0.0.1", port=1, **kw)


def test_password_never_shows_in_the_config_repr() -> None:
    """A BridgeConfig in a log line or Ray's dashboard shows the username, not the password."""
    config = _config(username="bms-bridge", password=SecretStr("hunter2"))
    assert "hunter2" not in repr(config) and "hunter2" not in str(dataclasses.asdict(config))
    assert "bms-bridge" in repr(config)


@pytest.mark.parametrize(
    ("kw", "only"), [({"username": "bms-bridge"}, "username"), ({"password": SecretStr("x")}, "password")]
)
def test_username_and_password_come_together(kw: dict[str, Any], only: str) -> None:
    """One without the other is refused, saying which one arrived."""
    with pytest.raises(ValueError, match=f"Expected a username and a password together, got only a {only}"):
        _config(**kw)


@pytest.mark.parametrize("v5", [True, False])
async def test_client_logs_in_with_the_configured_credentials(v5: bool) -> None:
    """_make_client hands the username and password to the MQTT client (both protocols);
    without them it connects anonymously."""
    bridge = MqttBridge(_config(username="bms-bridge", password=SecretStr("s3cret"), mqtt_v5=v5), _Unused(), _Unused())
    paho = bridge._make_client()._client
    assert (paho._username, paho._password) == (b"bms-bridge", b"s3cret")
    anonymous = MqttBridge(_config(mqtt_v5=v5), _Unused(), _Unused())._make_client()._client
    assert anonymous._username is None and anonymous._password is None
