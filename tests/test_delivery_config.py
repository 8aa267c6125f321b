"""Subscriber delivery settings the config refuses at start, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bspgate.config import settings_from_dict
from bspgate.errors import ConfigError
from tests.conftest import base_config, make_settings
from tests.test_config import subscriber


@pytest.mark.parametrize("timeout", ["0s", "0ms", "0m", "000s"])
def test_a_zero_timeout_is_refused(tmp_path: Path, timeout: str) -> None:
    # aiohttp reads a total timeout of 0 as none: an attempt could wait forever
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, subscribers=[subscriber(), subscriber(id="bi", timeout=timeout)])
    assert caught.value.key == "subscribers[1].timeout"
    assert repr(timeout) in str(caught.value)


@pytest.mark.parametrize("timeout", ["1ms", "1s", "10s", "2m"])
def test_a_positive_timeout_is_taken(tmp_path: Path, timeout: str) -> None:
    settings = make_settings(tmp_path, subscribers=[subscriber(timeout=timeout)])
    assert settings.subscribers[0].timeout > 0


def test_max_in_flight_may_come_from_the_environment(tmp_path: Path) -> None:
    raw = base_config(tmp_path, subscribers=[subscriber(max_in_flight="${MIF:-8}")])
    settings = settings_from_dict(raw, env={}, base_dir=tmp_path)
    assert settings.subscribers[0].max_in_flight == 8
    with pytest.raises(ConfigError) as refused:
        settings_from_dict(raw, env={"MIF": "0"}, base_dir=tmp_path)
    assert refused.value.key == "subscribers[0].max_in_flight"
