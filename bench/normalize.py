"""Normalization: microseconds per event for each provider's inbound text message.

For every mapping under `mappings/` with a `tests/fixtures/<provider>/inbound_text.json`, two
figures: the mapping engine alone (`apply_mapping` on the parsed payload) and the whole
normalization (`Normalizer.normalize`: mapping, identity rules over the in-memory store, canonical
schema validation, event assembly). Baselines on the same Cloud API payload, measured in the same
run: hand-written dict access of the same fields, and pywa's typed parse
(`pywa.types.Message.from_update`; `pip install -e '.[bench]'`). Target: the Cloud API mapping
<= pywa's parse time. Best of 5 repeats (timeit), so background load inflates nothing it can avoid.

`--callgrind` measures the same target in instructions instead of time (a shared machine's load
changes wall clock, not instruction counts): each side (bspgate's `apply_mapping` of the Cloud API
text message, pywa's `Message.from_update` of the same payload) runs under valgrind's callgrind
once with 1 call and once with 1 + N calls; (instructions(1 + N) - instructions(1)) / N is the
cost of one message, with interpreter start, imports, loading and first-call caches cancelled out.

    python -m bench.normalize [--number 20000]
    python -m bench.normalize --callgrind [--calls 1000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from bench.common import ROOT, verdict
from bspgate.ingress.parse import parse_payload
from bspgate.mapping.engine import apply_mapping
from bspgate.mapping.loader import load_mapping
from bspgate.normalize import Normalizer, demo_channel
from bspgate.store.memory import MemoryTx

FIXTURES = ROOT / "tests" / "fixtures"
# one callgrind run must end by itself: a stuck child is killed, never waited for forever
CALLGRIND_TIMEOUT_S = 900
SIDES = ("bspgate", "pywa")


def per_call_us(call: Callable[[], Any], number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def hand_written(payload: dict[str, Any]) -> dict[str, Any]:
    """What a developer writes for one Cloud API text message: 10 fields, no checks."""
    value = payload["entry"][0]["changes"][0]["value"]
    contact, message = value["contacts"][0], value["messages"][0]
    return {
        "id": message["id"],
        "type": message["type"],
        "timestamp": message["timestamp"],
        "text": message["text"]["body"],
        "bsuid": message.get("from_user_id"),
        "parent_bsuid": message.get("from_parent_user_id"),
        "phone": message.get("from"),
        "name": contact["profile"].get("name"),
        "username": contact["profile"].get("username"),
        "phone_number_id": value["metadata"]["phone_number_id"],
    }


def pywa_parse(payload: dict[str, Any]) -> Callable[[], Any] | None:
    try:
        from pywa import WhatsApp
        from pywa.types import Message
    except ImportError:
        return None
    # no request is ever made: the client only gives the parser its context
    client = WhatsApp(phone_id="106540352242922", token="bench", server=None)  # noqa: S106
    return lambda: Message.from_update(client=client, update=payload)


def provider_payload(provider: str, parse: str) -> Any:
    raw = (FIXTURES / provider / "inbound_text.json").read_bytes()
    if parse == "form":  # fixtures of form providers are JSON objects of the posted fields
        fields = orjson.loads(raw)
        raw = urlencode(
            {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in fields.items()}
        ).encode()
    return parse_payload(raw, parse)


def measure_provider(provider: str, number: int, received: str) -> tuple[float, float, int]:
    """(mapping alone µs, whole normalization µs, events) for the provider's text message."""
    spec = load_mapping(ROOT / "mappings", provider)
    channel = demo_channel(provider)
    scope = channel.as_scope()
    payload = provider_payload(provider, spec.parse)
    mapped = apply_mapping(spec, payload, scope, received_at=received)
    assert mapped.drafts, (provider, mapped.issues)
    assert not mapped.issues, (provider, mapped.issues)
    mapping_us = per_call_us(
        lambda: apply_mapping(spec, payload, scope, received_at=received), number
    )
    normalizer = Normalizer(spec, channel)

    def normalize() -> Any:
        normalizer.tx = MemoryTx()  # a fresh store each call: every event is new, no duplicate
        return normalizer.normalize(payload, b"x")

    outcome = normalize()
    assert outcome.state == "processed", (provider, outcome.issues)
    full_us = per_call_us(normalize, max(1, number // 4))
    return mapping_us, full_us, len(outcome.events)


def callgrind_target(side: str) -> Callable[[], Any]:
    """One call of the measured side on the Cloud API text message (the `--callgrind` unit)."""
    if side == "pywa":
        pywa = pywa_parse(orjson.loads((FIXTURES / "cloudapi" / "inbound_text.json").read_bytes()))
        if pywa is None:
            raise SystemExit("pywa is not installed: pip install -e '.[bench]'")
        return pywa
    spec = load_mapping(ROOT / "mappings", "cloudapi")
    scope = demo_channel("cloudapi").as_scope()
    payload = provider_payload("cloudapi", spec.parse)
    received = "2026-01-01T00:00:00Z"  # fixed: the child's work must not depend on the clock
    mapped = apply_mapping(spec, payload, scope, received_at=received)
    assert mapped.drafts, mapped.issues
    assert not mapped.issues, mapped.issues
    return lambda: apply_mapping(spec, payload, scope, received_at=received)


def callgrind_child(side: str, calls: int) -> int:
    """The process callgrind runs: `calls` calls of one side, nothing else after setup."""
    call = callgrind_target(side)  # builds and checks everything, but calls nothing yet
    for _ in range(calls):
        call()
    return 0


def callgrind_instructions(side: str, calls: int) -> int:
    """Instructions (Ir) of a whole child process making `calls` calls of `side`."""
    with tempfile.TemporaryDirectory(prefix="bspgate-callgrind-") as folder:
        out = Path(folder) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--dump-instr=no",
            "--compress-strings=no",
            sys.executable,
            "-m",
            "bench.normalize",
            "--callgrind-child",
            side,
            "--calls",
            str(calls),
        ]
        # a fixed hash seed: set and dict layouts (and so instruction counts) repeat run to run
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        subprocess.run(  # our own interpreter and module, no shell
            command,
            cwd=ROOT,
            env=env,
            check=True,
            timeout=CALLGRIND_TIMEOUT_S,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        text = out.read_text(encoding="utf-8", errors="replace")
    found = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no instruction total in callgrind's output for {side}")
    return int(found.group(1))


def callgrind_main(calls: int) -> int:
    """Instructions per message of each side and their ratio (target bspgate <= 1.0x pywa)."""
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)")
        return 2
    print(
        "normalization: instructions per message under callgrind, "
        f"(1 + {calls:,} calls - 1 call) / {calls:,}"
    )
    print(f"reproduce: python -m bench.normalize --callgrind --calls {calls}")
    per_message: dict[str, float] = {}
    for side in SIDES:
        once = callgrind_instructions(side, 1)
        many = callgrind_instructions(side, 1 + calls)
        per_message[side] = (many - once) / calls
        print(f"  {side:<10} {per_message[side]:12,.0f} instructions per message")
    ratio = per_message["bspgate"] / per_message["pywa"]
    print(
        f"\n  cloudapi apply_mapping = {ratio:.2f}x pywa's Message.from_update "
        f"(target <= 1.0x: {verdict(ratio, 1.0, higher_is_better=False)})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per timing repeat")
    parser.add_argument(
        "--callgrind", action="store_true", help="instructions per message under valgrind"
    )
    parser.add_argument("--calls", type=int, default=1_000, help="N of the --callgrind difference")
    parser.add_argument("--callgrind-child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.callgrind_child:
        return callgrind_child(args.callgrind_child, args.calls)
    if args.callgrind:
        return callgrind_main(max(1, args.calls))
    number = args.number
    received = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"normalization: µs per event, best of 5 x {number:,} calls")
    print("reproduce: python -m bench.normalize" + "".join(f" {a}" for a in (argv or sys.argv[1:])))

    cloud = orjson.loads((FIXTURES / "cloudapi" / "inbound_text.json").read_bytes())
    baseline_hand = per_call_us(lambda: hand_written(cloud), number)
    pywa = pywa_parse(cloud)
    baseline_pywa = per_call_us(pywa, max(1, number // 4)) if pywa else None
    print(f"\n  {'hand-written dict access (10 fields)':<44} {baseline_hand:8.2f} µs")
    if baseline_pywa is None:
        print("  pywa is not installed: pip install -e '.[bench]'")
    else:
        print(f"  {'pywa Message.from_update':<44} {baseline_pywa:8.2f} µs")
    print(f"\n  {'provider':<12} {'mapping alone':>14} {'normalize':>12}   events")
    results: dict[str, tuple[float, float]] = {}
    for folder in sorted((ROOT / "mappings").iterdir()):
        provider = folder.name.removesuffix(".yaml")
        if not (FIXTURES / provider / "inbound_text.json").exists():
            continue
        mapping_us, full_us, events = measure_provider(provider, number, received)
        results[provider] = (mapping_us, full_us)
        print(f"  {provider:<12} {mapping_us:11.2f} µs {full_us:9.2f} µs   {events}")

    if baseline_pywa is not None and "cloudapi" in results:
        mapping_us, full_us = results["cloudapi"]
        ratio = mapping_us / baseline_pywa
        print(
            f"\n  cloudapi mapping {mapping_us:.2f} µs = {ratio:.2f}x pywa's parse "
            f"(target <= 1.0x: {verdict(ratio, 1.0, higher_is_better=False)}); "
            f"{mapping_us / baseline_hand:.1f}x hand-written dict access"
        )
        print(
            f"  cloudapi full normalization {full_us:.2f} µs = {full_us / baseline_pywa:.2f}x "
            "pywa's parse (adds identity rules, schema validation and the CloudEvent)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
