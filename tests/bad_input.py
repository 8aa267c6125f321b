"""A generated corpus of bad webhook input for every provider (tests/test_bad_input_corpus.py).

Deterministic (seeded by case name), built from data, not written by hand:
- every golden case input of every mapping (`mappings/*/cases`: each Meta shape variant of
  contract v1.1, each provider's batches, statuses, identity changes) mutated at sampled paths:
  the field removed, empty, null, or of a wrong type (number, list, object, boolean, a long string);
- hostile bodies per provider: deep nesting, huge arrays, long strings, invalid UTF-8, a UTF-16
  body, a byte-order mark, lone surrogates, NUL characters, huge numbers, duplicate keys, empty
  and non-object bodies, form bodies with too many fields.
Each case is signed as the provider would sign it; the test also forges and replays signatures.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.conftest import MAPPINGS

# provider -> the channel the corpus posts to (tests/test_ingress_providers.py CHANNELS + cloud-us)
CHANNEL_OF = {
    "cloudapi": "cloud-us",
    "dialog360": "d360-us",
    "twilio": "twilio-us",
    "infobip": "infobip-us",
    "azure_acs": "acs-us",
    "connectly": "connectly-us",
}
# mutations per golden case input (Cloud API has the most shapes, hence more cases)
PER_CASE = {
    "cloudapi": 6,
    "dialog360": 5,
    "twilio": 9,
    "infobip": 9,
    "azure_acs": 9,
    "connectly": 9,
}
WRONG = [None, "", 0, -1, 12345678901234567890, 1.5, True, [], {}, "x" * 5000, [None], {"": ""}]


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    provider: str
    body: bytes
    raw: bool = False  # True: the body is sent as bytes with `content_type`, not re-encoded
    content_type: str = "application/json"

    @property
    def channel_id(self) -> str:
        return CHANNEL_OF[self.provider]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:3]):
            yield (*prefix, index)
            yield from _paths(child, (*prefix, index))


def _mutate(payload: Any, path: tuple[Any, ...], replacement: Any, delete: bool) -> Any:
    out = copy.deepcopy(payload)
    target = out
    for part in path[:-1]:
        target = target[part]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = replacement
    return out


def _inputs(provider: str) -> list[tuple[str, Any]]:
    folder = MAPPINGS / provider / "cases"
    found = []
    for path in sorted(Path(folder).glob("*.yaml")):
        case = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(case, dict) and "input" in case:  # not _channel, signed or send cases
            found.append((path.stem, case["input"]))
    return found


def mutated(provider: str) -> list[Case]:
    """Every golden input of `provider` once as is and at sampled paths mutated."""
    cases = []
    for stem, payload in _inputs(provider):
        cases.append(Case(f"{provider}/{stem}/as-is", provider, orjson.dumps(payload)))
        rng = random.Random(f"{provider}/{stem}")
        paths = list(_paths(payload))
        for index in range(min(PER_CASE[provider], len(paths))):
            path = rng.choice(paths)
            delete = rng.random() < 0.3
            replacement = rng.choice(WRONG)
            if provider == "twilio" and not delete and not isinstance(replacement, str):
                replacement = orjson.dumps(replacement).decode()  # form fields are text
            body = orjson.dumps(_mutate(payload, path, replacement, delete))
            label = "/".join(map(str, path))
            action = "del" if delete else type(replacement).__name__
            cases.append(Case(f"{provider}/{stem}/{index}:{action}@{label}", provider, body))
    return cases


def _deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def hostile(provider: str, limit: int) -> list[Case]:
    """Bodies no provider sends: sizes, depths, encodings (sent raw, signed where possible)."""
    form = provider == "twilio"
    kind = "application/x-www-form-urlencoded" if form else "application/json"
    sample = _inputs(provider)[0][1]
    text = orjson.dumps(sample)
    bodies: list[tuple[str, bytes, str]] = [
        ("empty", b"", kind),
        ("whitespace", b" \n\t", kind),
        ("deep-300", _deep(300), "application/json"),
        ("deep-1000", _deep(1000), "application/json"),
        ("deep-5000", _deep(5000), "application/json"),
        ("huge-array", b"[" + b",".join([b"{}"] * 20_000) + b"]", "application/json"),
        ("long-string", b'{"a": "' + b"y" * (limit // 2) + b'"}', "application/json"),
        ("oversize", b'{"a": "' + b"y" * (limit + 1) + b'"}', "application/json"),
        ("invalid-utf8", text[:-1] + b', "z": "\xff\xfe"}', kind),
        ("utf16", text.decode().encode("utf-16"), "application/json"),
        ("bom", b"\xef\xbb\xbf" + text, "application/json"),
        ("lone-surrogate", text[:-1] + b', "z": "\\ud800"}', "application/json"),
        ("nul-chars", text.replace(b'"', b'"\\u0000', 2), "application/json"),
        ("huge-number", text[:-1] + b', "z": 1e999999}', "application/json"),
        ("duplicate-keys", text[:-1] + b", " + text[1:], "application/json"),
        ("scalar", b"42", "application/json"),
        ("null", b"null", "application/json"),
        ("string", b'"entry"', "application/json"),
        ("array-of-scalars", b'[1, "x", null, []]', "application/json"),
        ("truncated", text[: len(text) // 2], "application/json"),
        ("binary", bytes(range(256)) * 8, "application/octet-stream"),
        ("form-1001-fields", "&".join(f"f{i}=x" for i in range(1001)).encode(), kind),
        ("form-invalid-utf8", b"Body=\xff&From=whatsapp%3A%2B1555", kind),
        ("form-to-json-provider", b"a=1&b=2", "application/x-www-form-urlencoded"),
    ]
    return [Case(f"{provider}/hostile/{n}", provider, b, True, t) for n, b, t in bodies]


def corpus(limit: int) -> list[Case]:
    """The whole corpus: every provider's mutated golden inputs and hostile bodies."""
    out: list[Case] = []
    seen: set[tuple[str, bytes]] = set()
    for provider in CHANNEL_OF:
        for case in [*mutated(provider), *hostile(provider, limit)]:
            if (provider, case.body) not in seen:  # two samplings may make the same body
                seen.add((provider, case.body))
                out.append(case)
    return out
