"""`tune_gc`: what a long-running `serve` process (and its worker) does to the collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from bspgate.serving import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_freezes_what_exists_and_collects_young_objects_less_often() -> None:
    long_lived = [{"kept": i} for i in range(1000)]
    tune_gc()
    assert gc.get_freeze_count() >= len(long_lived)
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # Python's default


@pytest.mark.usefixtures("restored_gc")
def test_cycles_made_after_tune_gc_are_still_collected() -> None:
    tune_gc()

    class Node:
        def __init__(self) -> None:
            self.me = self

    Node()
    assert gc.collect() >= 1
