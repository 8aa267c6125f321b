"""Every test here leaves structlog as it found it (the CLI configures it on the captured
stderr, which is closed after the test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
