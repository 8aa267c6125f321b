"""`extends` merges rules by name; `inbound.drift` may only watch a binding some rule has.

A child rule with an inherited rule's name replaces that rule in its place, a new name is added,
and `{name: …, drop: true}` removes one: a BSP that forwards Meta's payloads but keys its statuses
by its own id gives one `status` rule and keeps every other cloudapi rule (they used to vanish
without a word, and every message was quarantined). Errors in a merged rule name the file and
line where it is written. A drift binding no rule binds (a typo) is a load error, not a watch that
never counts.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml

from bspgate import cli
from bspgate.errors import MappingLoadError
from bspgate.mapping.loader import load_mapping
from bspgate.normalize import Normalizer, demo_channel
from tests.conftest import MAPPINGS

STATUS_RULE = """\
    - name: status
      type: whatsapp.message.status
      for_each:
        - entry: payload.entry
        - change: entry.changes
        - st: change.value.statuses
      key: join_key(st.bsp_id || st.id, st.status)
      time: {from: st.timestamp, apply: epoch_to_rfc3339}
      fields:
        contact.phone: {from: st.recipient_id, apply: phone}
        message.id: {first: [st.bsp_id, st.id]}
        message.status: {from: st.status, map: status}
        message.timestamp: {from: st.timestamp, apply: epoch_to_rfc3339}
"""


def child(root: Path, rules: str, name: str = "wabaplus", extends: str = "cloudapi") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    head = f"name: {name}\n" + (f"extends: {extends}\n" if extends else "")
    (folder / "mapping.yaml").write_text(head + "inbound:\n  rules:\n" + rules)
    return root


def cloudapi_case(name: str) -> dict[str, object]:
    case: dict[str, object] = yaml.safe_load((MAPPINGS / "cloudapi" / "cases" / name).read_text())
    return case


def test_a_child_rule_replaces_the_inherited_rule_of_its_name_only(tmp_path: Path) -> None:
    """The other inherited rules stay, in order; the status rule is the child's."""
    root = child(tmp_path, STATUS_RULE)
    spec = load_mapping([MAPPINGS, root], "wabaplus")
    parent = load_mapping(MAPPINGS, "cloudapi")
    assert [r.name for r in spec.rules] == [r.name for r in parent.rules]
    assert "bsp_id" in spec.source["inbound"]["rules"][1]["key"]
    payload = cloudapi_case("inbound_text.yaml")["input"]
    outcome = Normalizer(spec, demo_channel("wabaplus")).normalize(
        payload, orjson.dumps(payload), "application/json"
    )
    assert outcome.issues == []
    assert [e["type"] for e in outcome.events] == ["whatsapp.message.received"]


def test_check_counts_the_merged_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = child(tmp_path / "m", STATUS_RULE)
    count = len(load_mapping(MAPPINGS, "cloudapi").rules)
    assert cli.main(["mappings", "check", "--mappings", str(root)]) == 0
    assert f"wabaplus/mapping.yaml ({count} rules)" in capsys.readouterr().out


def test_drop_removes_one_inherited_rule(tmp_path: Path) -> None:
    root = child(tmp_path, "    - {name: echo, drop: true}\n")
    names = [r.name for r in load_mapping([MAPPINGS, root], "wabaplus").rules]
    assert names == [r.name for r in load_mapping(MAPPINGS, "cloudapi").rules if r.name != "echo"]


def test_dropping_a_rule_nothing_inherits_is_refused(tmp_path: Path) -> None:
    root = child(tmp_path, "    - {name: ecco, drop: true}\n")
    with pytest.raises(MappingLoadError, match="no inherited rule 'ecco' to drop") as caught:
        load_mapping([MAPPINGS, root], "wabaplus")
    assert caught.value.line == 5
    root = child(tmp_path / "plain", "    - {name: echo, drop: true}\n", name="acme", extends="")
    with pytest.raises(MappingLoadError, match="this mapping extends nothing"):
        load_mapping(root, "acme")


def test_an_error_in_an_overriding_rule_names_the_childs_line(tmp_path: Path) -> None:
    """The merged rule sits where cloudapi's status rule was (index 1): the error still names
    the child's file, index and line."""
    root = child(tmp_path, STATUS_RULE.replace("message.id: {first", "message.idd: {first"))
    with pytest.raises(MappingLoadError) as caught:
        load_mapping([MAPPINGS, root], "wabaplus")
    assert caught.value.file.endswith("wabaplus/mapping.yaml")
    assert caught.value.path == "inbound.rules[0].fields.message.idd"
    assert caught.value.line == 5 + STATUS_RULE.splitlines().index(
        "        message.id: {first: [st.bsp_id, st.id]}"
    )


def test_drift_for_a_binding_no_rule_binds_is_a_load_error(tmp_path: Path) -> None:
    """`drift: {e: …}` where the rules bind `ev` would watch nothing."""
    folder = tmp_path / "acme"
    folder.mkdir()
    (folder / "mapping.yaml").write_text(
        "name: acme\ninbound:\n  rules:\n"
        "    - name: message\n      type: whatsapp.message.received\n"
        "      for_each: [{ev: payload}]\n      key: ev.id\n      time: ev.time\n"
        "      fields: {message.id: ev.id, contact.phone: {from: ev.from, apply: phone}}\n"
        "  drift:\n    ev: [ticketId]\n    e: [conversationId]\n"
    )
    with pytest.raises(MappingLoadError, match="no rule binds 'e'") as caught:
        load_mapping(tmp_path, "acme")
    assert caught.value.path == "inbound.drift.e"
    assert caught.value.line == 12
