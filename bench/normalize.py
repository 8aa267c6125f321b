"""Normalization: microseconds per event for each provider's inbound text message.

For every mapping under `mappings/` with a `tests/fixtures/<provider>/inbound_text.json`, two
figures: the mapping engine alone (`apply_mapping` on the parsed payload) and the whole
normalization (`Normalizer.normalize`: mapping, identity rules over the in-memory store, canonical
schema validation, event assembly). Baselines on the same Cloud API payload, measured in the same
run: hand-written dict access of the same fields, and pywa's typed parse
(`pywa.types.Message.from_update`; `pip install -e '.[bench]'`). Target: the Cloud API mapping
<= pywa's parse time. Best of 5 repeats (timeit), so background load inflates nothing it can avoid.

    python -m bench.normalize [--number 20000]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per timing repeat")
    args = parser.parse_args(argv)
    number = args.number
    received = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"normalization: µs per event, best of 5 x {number:,} calls")
    print(
        "reproduce: python -m bench.normalize" + " ".join(f" {a}" for a in (argv or sys.argv[1:]))
    )

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
