"""Subscriber delivery settings the config refuses at start, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bspgate.errors import ConfigError
from tests.conftest import make_settings
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
