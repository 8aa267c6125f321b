"""`bspgate mappings test --update`: write what a mapping actually produces into its cases.

For an inbound case, `expect` becomes the events the mapping gives now (without the fields that
differ per run: `subject`, `data.contact.id`, `data.raw_id`), or `quarantine:` with the reason.
For a send case, `expect.request` becomes the rendered request (method, path, the headers the
case already lists or `Content-Type`, body; the send id and public URL written back as
`${send.id}`/`${public_url}`), or `refused:` with the code. A signed-only case is left as it is.
A quarantine written as the expected result is reported, so the CLI can warn about it; an engine
crash (`mapping engine error: …`, a quarantine the ingest step writes for a mapping bug) is
never written: the case is left as it is and the crash reported.
Cases that pass are not rewritten. The file's leading comment lines are kept; review the diff
before committing it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bspgate.errors import SendError
from bspgate.mapping.cases import VARIABLE_PATHS, load_case, normalize_case
from bspgate.mapping.folders import Roots
from bspgate.mapping.loader import MappingSpec
from bspgate.mapping.send_cases import (
    OFFLINE_PUBLIC_URL,
    answer_message_id,
    is_send_case,
    load_send_case,
    render_offline,
    request_record,
    tokens,
)
from bspgate.schema.validate import EventValidator

# how the ingest step (processing.map_payload) reports a mapping that raised: a quarantine reason
ENGINE_ERROR = "mapping engine error: "


def _strip_variables(event: dict[str, Any]) -> dict[str, Any]:
    for path in VARIABLE_PATHS:
        target: Any = event
        for part in path[:-1]:
            target = target.get(part) if isinstance(target, dict) else None
        if isinstance(target, dict):
            target.pop(path[-1], None)
    return event


def _write(path: Path, data: dict[str, Any]) -> None:
    text = path.read_text(encoding="utf-8")
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    dumped = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    path.write_text("\n".join([*header, dumped]) if header else dumped, encoding="utf-8")


@dataclass(frozen=True, slots=True)
class CaseUpdate:
    """What `update_case` did: `changed` the file; `quarantine`: the reason it wrote as the
    expected result (the caller warns: a sample quarantined is more often a mapping mistake)."""

    changed: bool
    quarantine: str | None = None
    engine_error: str | None = None  # the mapping engine failed: nothing was written


def update_case(root: Roots, spec: MappingSpec, path: Path) -> CaseUpdate:
    """Rewrite a failing case's `expect` with the actual output.

    A case that passes is left untouched (its phrasing, e.g. a quarantine phrase, is kept).
    """
    from bspgate.mapping.send_cases import run_file

    if run_file(root, spec, path).ok:
        return CaseUpdate(changed=False)
    quarantine = None
    before = path.read_text(encoding="utf-8")
    if is_send_case(path):
        case = load_send_case(path)
        try:
            sent, send_id = asyncio.run(render_offline(root, spec.name, case))
        except SendError as exc:
            case["expect"] = {"refused": exc.code}
        else:
            listed = list(((case.get("expect") or {}).get("request") or {}).get("headers") or {})
            values = tokens(send_id, OFFLINE_PUBLIC_URL)
            expect: dict[str, Any] = {
                "request": request_record(sent, values, listed or ["content-type"])
            }
            answered = answer_message_id(root, spec.name, case.get("answer") or {})
            if answered is not None:  # none found: the expectation stays, and keeps failing
                expect["message_id"] = answered
            elif "message_id" in case.get("expect", {}):
                expect["message_id"] = case["expect"]["message_id"]
            case["expect"] = expect
    else:
        case = load_case(path)
        if "input" not in case and "events" not in case["expect"]:
            return CaseUpdate(changed=False)  # a signed-only case: nothing is produced
        outcome = normalize_case(spec, case, EventValidator())
        crashed = [issue for issue in outcome.issues if issue.startswith(ENGINE_ERROR)]
        if crashed:  # a crash is never an expected result: the case stays as it was
            return CaseUpdate(changed=False, engine_error="; ".join(crashed))
        if outcome.state == "quarantined":
            quarantine = "; ".join(outcome.issues)
            case["expect"] = {"quarantine": quarantine}
        else:
            verified = {"verified": True} if case["expect"].get("verified") else {}
            events = [_strip_variables(dict(e)) for e in outcome.events]
            case["expect"] = {**verified, "events": events}
    _write(path, case)
    return CaseUpdate(path.read_text(encoding="utf-8") != before, quarantine)
