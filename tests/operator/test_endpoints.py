"""Where the operator's /metrics and /healthz listen: ports and addresses from the environment (the chart's
values) or flags, checked at startup; the real operator process bound to loopback only."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.main import parse_args, with_flags


def test_addresses_default_to_every_interface_and_come_from_the_environment() -> None:
    assert (OperatorConfig.from_env({}).metrics_address, OperatorConfig.from_env({}).health_address) == ("0.0.0.0",) * 2
    config = OperatorConfig.from_env({"MODELFLEET_METRICS_ADDRESS": "127.0.0.1", "MODELFLEET_HEALTH_ADDRESS": "::"})
    assert (config.metrics_address, config.health_address) == ("127.0.0.1", "::")


@pytest.mark.parametrize("value", ["localhost", "0.0.0.0:8080", "10.0.0.256", ""])
def test_an_address_that_is_not_an_ip_is_a_startup_error_naming_the_setting(value: str) -> None:
    with pytest.raises(ValueError, match=f"MODELFLEET_HEALTH_ADDRESS: must be an IP address .*got '{value}'"):
        OperatorConfig.from_env({"MODELFLEET_HEALTH_ADDRESS": value})
    with pytest.raises(ValueError, match="--metrics-address: must be an IP address"):
        with_flags(OperatorConfig(), parse_args(["--metrics-address", value or " "]))


def test_flags_win_over_the_environment() -> None:
    env = OperatorConfig.from_env({"MODELFLEET_METRICS_ADDRESS": "127.0.0.1", "MODELFLEET_HEALTH_PORT": "9000"})
    config = with_flags(env, parse_args(["--metrics-address", "::1", "--health-address", "127.0.0.2"]))
    assert (config.metrics_address, config.health_address, config.health_port) == ("::1", "127.0.0.2", 9000)
    assert with_flags(env, parse_args(["--health-port", "9001"])).health_port == 9001
    assert with_flags(env, parse_args([])) == env


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.cluster
def test_the_operator_listens_only_on_the_address_it_was_given(operator) -> None:
    """tests/operator/conftest.py starts it with both addresses 127.0.0.1: served there, refused on 127.0.0.2
    (another loopback address, which a 0.0.0.0 listener would answer)."""
    assert operator.env["MODELFLEET_HEALTH_ADDRESS"] == operator.env["MODELFLEET_METRICS_ADDRESS"] == "127.0.0.1"
    with urllib.request.urlopen(operator.health_url, timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        assert b"# HELP" in response.read()
    assert refused("127.0.0.2", operator.health_port) and refused("127.0.0.2", operator.metrics_port)
