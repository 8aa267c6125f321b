"""bspgate.wake: a processing process wakes the dispatcher of another one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bspgate.wake import WakeListener, WakeSender


@pytest.mark.anyio
async def test_a_sent_wake_up_calls_the_listener_once_per_batch(tmp_path: Path) -> None:
    woken = asyncio.Event()
    calls: list[int] = []

    def wake() -> None:
        calls.append(1)
        woken.set()

    listener = WakeListener(tmp_path / "wake.sock", wake)
    sender = WakeSender(tmp_path / "wake.sock")
    try:
        for _ in range(5):  # sent before the loop reads: one call drains them all
            sender()
        await asyncio.wait_for(woken.wait(), timeout=5)
        await asyncio.sleep(0.05)
        assert calls == [1]
    finally:
        sender.close()
        listener.close()
    assert not (tmp_path / "wake.sock").exists()


def test_a_wake_up_without_a_listener_is_dropped_quietly(tmp_path: Path) -> None:
    sender = WakeSender(tmp_path / "nobody.sock")
    sender()  # a dispatcher restarting: nothing raises, nothing blocks
    sender.close()


@pytest.mark.anyio
async def test_a_listener_takes_over_a_socket_left_by_a_dead_one(tmp_path: Path) -> None:
    (tmp_path / "wake.sock").write_bytes(b"")  # what a SIGKILLed listener leaves
    woken = asyncio.Event()
    listener = WakeListener(tmp_path / "wake.sock", woken.set)
    sender = WakeSender(tmp_path / "wake.sock")
    try:
        sender()
        await asyncio.wait_for(woken.wait(), timeout=5)
    finally:
        sender.close()
        listener.close()
