"""Identifiers: ULIDs as the ULID spec (and python-ulid, the oracle) write them."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from bspgate import ids
from bspgate.ids import new_id, ulid_text


@given(
    milliseconds=st.integers(min_value=0, max_value=2**48 - 1),
    randomness=st.binary(min_size=10, max_size=10),
)
def test_ulid_text_is_the_specs_encoding(milliseconds: int, randomness: bytes) -> None:
    oracle = ULID.from_bytes(milliseconds.to_bytes(6, "big") + randomness)
    assert ulid_text(milliseconds, randomness) == str(oracle)


@pytest.mark.parametrize("prefix", ["raw", "ct", "dlv", "req"])
def test_new_ids_parse_as_ulids_of_now(prefix: str) -> None:
    before = time.time()
    made = new_id(prefix)
    after = time.time()
    head, _, text = made.partition("_")
    assert head == prefix
    parsed = ULID.from_str(text)
    assert before - 0.002 <= parsed.timestamp <= after + 0.002


def test_new_ids_differ_and_sort_by_time() -> None:
    first = [new_id("raw") for _ in range(1000)]
    assert len(set(first)) == 1000
    time.sleep(0.002)
    later = new_id("raw")
    assert all(earlier < later for earlier in first)


def test_the_extremes_encode_like_the_oracle() -> None:
    for randomness in (bytes(10), b"\xff" * 10, os.urandom(10)):
        for milliseconds in (0, 2**48 - 1):
            expected = str(ULID.from_bytes(milliseconds.to_bytes(6, "big") + randomness))
            assert ulid_text(milliseconds, randomness) == expected


def test_random_bytes_never_hand_out_the_same_bytes_twice() -> None:
    # across several refills of the 4 KiB pool, and for a take larger than the pool
    taken = [ids.random_bytes(10) for _ in range(2_000)] + [ids.random_bytes(5_000)]
    assert all(len(chunk) == 10 for chunk in taken[:-1])
    assert len(taken[-1]) == 5_000
    assert len(set(taken)) == len(taken)


def test_random_bytes_are_safe_across_threads() -> None:
    def mint() -> list[bytes]:
        return [ids.random_bytes(10) for _ in range(5_000)]

    with ThreadPoolExecutor(4) as pool:
        chunks = [c for batch in pool.map(lambda _: mint(), range(4)) for c in batch]
    assert len(set(chunks)) == len(chunks) == 20_000


def test_a_forked_child_does_not_repeat_its_parents_bytes() -> None:
    ids.random_bytes(10)  # the pool is filled before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it mints next, to the parent
        os.write(write, ids.random_bytes(10))
        os._exit(0)
    os.close(write)
    child = os.read(read, 10)
    os.waitpid(pid, 0)
    assert child != ids.random_bytes(10)
