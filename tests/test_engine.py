"""The mapping loader and engine, over small mapping files written into tmp_path folders."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bspgate.errors import MappingLoadError
from bspgate.ids import event_id
from bspgate.mapping.engine import MappingResult, apply_mapping
from bspgate.mapping.loader import MappingSpec, load_mapping, load_mappings, mapping_names
from tests.conftest import MAPPINGS, fixture_json

CHANNEL = {"id": "demo-1", "provider": "demo", "portfolio": "acme", "business_phone": None}

DEMO = """\
name: demo
title: A demo provider
inbound:
  parse: json
  verify:
    - scheme: hmac
      header: X-Demo-Signature
      secret: webhook_secret
  maps:
    kinds:
      text: text
      img: image
      "*": unsupported
    states:
      ok: delivered
  rules:
    - name: message
      type: whatsapp.message.received
      for_each:
        - batch: payload.batches
        - msg: batch.messages
      when: "!(msg.skip)"
      let:
        who: batch.sender
      key: msg.id
      time: {from: msg.ts, apply: epoch_to_rfc3339}
      fields:
        contact.bsuid: {from: who.user, apply: bsuid}
        contact.phone: {first: [who.phone, msg.phone], apply: e164}
        contact.name: who.name
        message.id: msg.id
        message.type: {from: msg.kind, map: kinds}
        message.timestamp: {from: msg.ts, apply: epoch_to_rfc3339}
        message.text: {first: [msg.text, msg.caption]}
        message.media.id: msg.media_id
        message.media.mime_type: {value: application/octet-stream}
    - name: status
      type: whatsapp.message.status
      for_each:
        - batch: payload.batches
        - st: batch.statuses
      key: join_key(st.id, st.state)
      time: {from: st.ts, apply: epoch_to_rfc3339}
      fields:
        contact.bsuid: {from: batch.sender.user, apply: bsuid}
        message.id: st.id
        message.status: {from: st.state, map: states, default: sent}
        message.provider_status: st.state
        message.timestamp: {from: st.ts, apply: epoch_to_rfc3339}
  quarantine:
    - name: group
      for_each:
        - batch: payload.batches
      when: batch.group
      reason: group batches are outside the contract
"""


def write(root: Path, name: str, text: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mapping.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def demo(tmp_path: Path) -> MappingSpec:
    write(tmp_path, "demo", DEMO)
    return load_mapping(tmp_path, "demo")


def message(id_: str, ts: int = 1767225600, **extra: Any) -> dict[str, Any]:
    return {"id": id_, "ts": ts, "kind": "text", "text": f"hello {id_}", **extra}


def batch(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    sender = {"user": "US.1000", "phone": "15551234567", "name": "Ann"}
    return {"sender": sender, "messages": list(messages), **extra}


def load_text(root: Path, text: str) -> MappingSpec:
    write(root, "demo", text)
    return load_mapping(root, "demo")


def load_error(tmp_path: Path, text: str, name: str = "demo") -> MappingLoadError:
    write(tmp_path, name, text)
    with pytest.raises(MappingLoadError) as caught:
        load_mapping(tmp_path, name)
    return caught.value


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    lines = textwrap.dedent(text).splitlines()
    numbers = [number for number, line in enumerate(lines, start=1) if needle in line]
    return numbers[occurrence - 1]


# -- loading -----------------------------------------------------------------------------------
def test_demo_mapping_loads(demo: MappingSpec, tmp_path: Path) -> None:
    assert demo.name == "demo"
    assert demo.title == "A demo provider"
    assert demo.file == str(tmp_path.resolve() / "demo" / "mapping.yaml")  # where it really is
    assert [r.name for r in demo.rules] == ["message", "status"]
    assert [q.name for q in demo.quarantine] == ["group"]
    assert demo.verify[0]["scheme"] == "hmac"


def test_shipped_mappings_load() -> None:
    specs = load_mappings(MAPPINGS)
    assert "cloudapi" in specs
    assert set(specs) == set(mapping_names(MAPPINGS))


def test_bad_expression_names_file_line_and_rule_path(tmp_path: Path) -> None:
    text = DEMO.replace("message.id: msg.id", "message.id: msg.[id")
    error = load_error(tmp_path, text)
    assert error.file == str(tmp_path.resolve() / "demo" / "mapping.yaml")
    assert error.line == line_of(text, "message.id: msg.[id")
    assert error.path == "inbound.rules[0].fields.message.id"
    assert str(error).startswith(
        f"{error.file}:{error.line}: inbound.rules[0].fields.message.id: "
        "invalid expression 'msg.[id'"
    )


def test_bad_expression_in_a_first_list_names_its_index(tmp_path: Path) -> None:
    error = load_error(
        tmp_path, DEMO.replace("[msg.text, msg.caption]", '[msg.text, "msg.[caption"]')
    )
    assert error.path == "inbound.rules[0].fields.message.text.first[1]"


def test_unknown_function_names_the_rule_path(tmp_path: Path) -> None:
    text = DEMO.replace("key: join_key(st.id, st.state)", "key: nope(st.id)")
    error = load_error(tmp_path, text)
    assert error.path == "inbound.rules[1].key"
    assert error.line == line_of(text, "key: nope(st.id)")
    assert "unknown function nope()" in str(error)


def test_unknown_apply_function_is_refused(tmp_path: Path) -> None:
    error = load_error(tmp_path, DEMO.replace("apply: bsuid}", "apply: strip_prefix}", 1))
    assert error.path == "inbound.rules[0].fields.contact.bsuid.apply"
    assert "'strip_prefix' is not a one-argument function" in str(error)


def test_unknown_map_names_the_known_maps(tmp_path: Path) -> None:
    text = DEMO.replace("map: kinds}", "map: kindz}")
    error = load_error(tmp_path, text)
    assert error.path == "inbound.rules[0].fields.message.type.map"
    assert error.line == line_of(text, "map: kindz}")
    assert "unknown map 'kindz' (known: kinds, states)" in str(error)


def test_builtin_function_with_the_wrong_number_of_arguments_is_refused(tmp_path: Path) -> None:
    text = DEMO.replace("provider_status: st.state", "provider_status: starts_with(st.state)")
    error = load_error(tmp_path, text)
    assert error.path == "inbound.rules[1].fields.message.provider_status"
    assert error.line == line_of(text, "starts_with(st.state)")
    assert "starts_with() takes 2 argument(s), got 1" in str(error)


def test_variadic_builtin_without_its_arguments_is_refused(tmp_path: Path) -> None:
    error = load_error(tmp_path, DEMO.replace("contact.name: who.name", "contact.name: not_null()"))
    assert "not_null() takes at least 1 argument(s), got 0" in str(error)


def test_a_name_the_rule_does_not_bind_is_refused(tmp_path: Path) -> None:
    text = DEMO.replace("contact.name: who.name", "contact.name: sender.name")
    error = load_error(tmp_path, text)
    assert error.path == "inbound.rules[0].fields.contact.name"
    assert error.line == line_of(text, "contact.name: sender.name")
    assert "'sender' is not a name bound here, so 'sender.name' is always null" in str(error)
    assert "(bound: payload, channel, received_at, batch, msg, who)" in str(error)


@pytest.mark.parametrize(
    ("old", "new", "path", "said"),
    [  # `when` runs before `let`; a for_each step sees only the steps before it; a quarantine
        # rule sees only its own bindings
        ('when: "!(msg.skip)"', 'when: "!(who.skip)"', "inbound.rules[0].when",
         "'who' is not a name bound here"),
        ("- batch: payload.batches", "- batch: msg.batches", "inbound.rules[0].for_each[0].batch",
         "'msg' is not a name bound here"),
        ("when: batch.group", "when: msg.group", "inbound.quarantine[0].when",
         "(bound: payload, channel, received_at, batch)"),
    ],
    ids=["when-before-let", "for-each-order", "quarantine-own-bindings"],
)  # fmt: skip
def test_each_expression_reads_only_what_is_bound_where_it_runs(
    tmp_path: Path, old: str, new: str, path: str, said: str
) -> None:
    error = load_error(tmp_path, DEMO.replace(old, new, 1))
    assert error.path == path
    assert said in str(error)


def test_every_name_the_engine_binds_is_accepted(tmp_path: Path) -> None:
    # root names, earlier for_each names, let names (each after the ones before it), `|| null`
    # (JMESPath's field `null`), and names inside projections, filters and &expr, which are read
    # from each item and not from the scope
    text = DEMO.replace(
        "      let:\n        who: batch.sender\n",
        "      let:\n        who: batch.sender\n        also: who.name || channel.id\n",
    ).replace(
        "message.media.id: msg.media_id",
        "message.media.id: \"sort_by(batch.messages, &ts)[?kind == 'img'].id | [0] || "
        '{a: received_at, b: payload.x}.a || also || null"',
    )
    spec = load_text(tmp_path, text)
    assert [rule.name for rule in spec.rules] == ["message", "status"]


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    text = DEMO.replace(
        "        contact.name: who.name\n",
        "        contact.name: who.name\n        message.id: msg.x\n",
    )
    error = load_error(tmp_path, text)
    assert error.path == "inbound.rules[0].fields.message.id"
    assert error.line == line_of(text, "message.id: msg.id")  # the second one written
    first = line_of(text, "message.id: msg.x")
    assert f"duplicate key 'message.id' (first at line {first})" in str(error)


def test_a_key_that_is_not_text_is_a_load_error(tmp_path: Path) -> None:
    text = DEMO.replace(
        "        contact.name: who.name\n", "        contact.name: who.name\n        5: msg.x\n"
    )
    error = load_error(tmp_path, text)
    assert error.path == "inbound.rules[0].fields.5"
    assert error.line == line_of(text, "5: msg.x")
    assert "the key 5 is not text (int): quote it" in str(error)


def test_duplicate_rule_name_is_refused(tmp_path: Path) -> None:
    text = DEMO.replace("- name: status", "- name: message")
    error = load_error(tmp_path, text)
    assert error.path == "inbound.rules[1].name"
    assert error.line == line_of(text, "- name: message", occurrence=2)
    assert "duplicate rule 'message'" in str(error)


def test_schema_violation_names_the_path(tmp_path: Path) -> None:
    text = DEMO.replace("type: whatsapp.message.status", "type: whatsapp.message.sent")
    error = load_error(tmp_path, text)
    assert error.path == "inbound.rules[1].type"
    assert error.line == line_of(text, "whatsapp.message.sent")


def test_unknown_canonical_field_is_a_schema_violation(tmp_path: Path) -> None:
    error = load_error(tmp_path, DEMO.replace("contact.name: who.name", "contact.nick: who.name"))
    assert error.path.startswith("inbound.rules[0].fields")
    assert "contact.nick" in str(error)


def test_missing_required_rule_key_is_a_schema_violation(tmp_path: Path) -> None:
    error = load_error(tmp_path, DEMO.replace("      key: msg.id\n", ""))
    assert error.path == "inbound.rules[0]"
    assert "'key' is a required property" in str(error)


def test_name_must_equal_the_folder(tmp_path: Path) -> None:
    error = load_error(tmp_path, DEMO, name="other")
    assert error.path == "name"
    assert error.line == 1


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, "name: demo\ninbound:\n  rules: [\n")
    assert error.file == str(tmp_path.resolve() / "demo" / "mapping.yaml")
    assert error.line is not None


def test_missing_mapping_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(MappingLoadError, match=r"no mapping\.yaml"):
        load_mapping(tmp_path, "absent")


def test_circular_extends_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "alpha", "name: alpha\nextends: beta\n")
    write(tmp_path, "beta", "name: beta\nextends: alpha\n")
    with pytest.raises(MappingLoadError, match="circular extends: alpha -> beta -> alpha") as e:
        load_mapping(tmp_path, "alpha")
    assert e.value.path == "extends"


def test_self_extends_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "alpha", "name: alpha\nextends: alpha\n")
    with pytest.raises(MappingLoadError, match="circular extends"):
        load_mapping(tmp_path, "alpha")


def test_extending_an_unknown_mapping_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "alpha", "name: alpha\nextends: nowhere\n")
    with pytest.raises(MappingLoadError, match=r"no nowhere/mapping\.yaml to extend") as e:
        load_mapping(tmp_path, "alpha")
    assert e.value.line == 2


def test_error_in_an_inherited_rule_names_the_parent_file(tmp_path: Path) -> None:
    text = DEMO.replace("message.id: msg.id", "message.id: msg.[id")
    write(tmp_path, "demo", text)
    write(tmp_path, "child", "name: child\nextends: demo\ntitle: Child\n")
    with pytest.raises(MappingLoadError) as caught:
        load_mapping(tmp_path, "child")
    assert caught.value.file == str(tmp_path.resolve() / "demo" / "mapping.yaml")
    assert caught.value.line == line_of(text, "message.id: msg.[id")


# -- extends -----------------------------------------------------------------------------------
def test_extends_inherits_every_section(tmp_path: Path) -> None:
    write(tmp_path, "demo", DEMO)
    write(tmp_path, "child", "name: child\nextends: demo\n")
    child = load_mapping(tmp_path, "child")
    assert child.name == "child"
    assert child.title == "A demo provider"
    assert child.file == str(tmp_path.resolve() / "child" / "mapping.yaml")
    assert [r.name for r in child.rules] == ["message", "status"]
    assert child.verify[0]["header"] == "X-Demo-Signature"


def test_extends_merges_maps_key_by_key(tmp_path: Path) -> None:
    write(tmp_path, "demo", DEMO)
    write(
        tmp_path,
        "child",
        """\
        name: child
        extends: demo
        title: Child
        inbound:
          maps:
            kinds:
              img: sticker
        """,
    )
    child = load_mapping(tmp_path, "child")
    kinds = child.source["inbound"]["maps"]["kinds"]
    assert kinds == {"text": "text", "img": "sticker", "*": "unsupported"}
    assert child.title == "Child"
    payload = {"batches": [batch(message("m1", kind="img"), message("m2", kind="text"))]}
    types = [d.data["message"]["type"] for d in apply_mapping(child, payload, CHANNEL).drafts]
    assert types == ["sticker", "text"]


def test_extends_replaces_lists_whole(tmp_path: Path) -> None:
    write(tmp_path, "demo", DEMO)
    write(
        tmp_path,
        "child",
        """\
        name: child
        extends: demo
        inbound:
          verify:
            - scheme: header_secret
              header: X-Token
              secret: webhook_secret
          quarantine: []
        """,
    )
    child = load_mapping(tmp_path, "child")
    assert [v["scheme"] for v in child.verify] == ["header_secret"]
    assert child.quarantine == ()
    assert [r.name for r in child.rules] == ["message", "status"]


# -- the engine --------------------------------------------------------------------------------
def test_every_item_becomes_a_draft_in_payload_order(demo: MappingSpec) -> None:
    payload = {
        "batches": [
            batch(message("m1"), message("m2"), statuses=[{"id": "o1", "state": "ok", "ts": 5}]),
            batch(message("m3")),
        ]
    }
    result = apply_mapping(demo, payload, CHANNEL)
    assert result.issues == []
    assert [d.key for d in result.drafts] == ["m1", "m2", "o1:ok", "m3"]
    assert [d.rule for d in result.drafts] == ["message", "message", "status", "message"]


def test_draft_fields(demo: MappingSpec) -> None:
    payload = {"batches": [batch(message("m1", media_id="md1"))]}
    (draft,) = apply_mapping(demo, payload, CHANNEL).drafts
    assert draft.data["handled_by"] is None  # v1.1: on every draft, null unless a rule fills it
    assert draft.type == "whatsapp.message.received"
    assert draft.time == "2026-01-01T00:00:00Z"
    assert draft.data["contact"] == {
        "bsuid": "US.1000",
        "parent_bsuid": None,
        "phone": "+15551234567",
        "username": None,
        "name": "Ann",
    }
    assert draft.data["message"] == {
        "id": "m1",
        "type": "text",
        "timestamp": "2026-01-01T00:00:00Z",
        "text": "hello m1",
        "media": {
            "id": "md1",
            "url": None,
            "mime_type": "application/octet-stream",
            "filename": None,
            "sha256": None,
        },
        "location": None,
        "reply": None,
        "reaction": None,
        "context": None,
        "contacts": None,
    }


def test_event_id_is_deterministic_from_channel_type_and_key(demo: MappingSpec) -> None:
    payload = {"batches": [batch(message("m1"))]}
    first = apply_mapping(demo, payload, CHANNEL).drafts[0]
    again = apply_mapping(demo, payload, CHANNEL).drafts[0]
    other = apply_mapping(demo, payload, {**CHANNEL, "id": "demo-2"}).drafts[0]
    assert first.id == again.id == event_id("demo-1", "whatsapp.message.received", "m1")
    assert other.id != first.id
    assert first.id.startswith("evt_")
    assert len(first.id) == 30


def test_same_item_twice_is_one_draft(demo: MappingSpec) -> None:
    payload = {"batches": [batch(message("m1")), batch(message("m1"))]}
    assert [d.key for d in apply_mapping(demo, payload, CHANNEL).drafts] == ["m1"]


def test_first_takes_the_first_non_empty_candidate(demo: MappingSpec) -> None:
    payload = {"batches": [batch(message("m1", text="", caption="a caption"))]}
    (draft,) = apply_mapping(demo, payload, CHANNEL).drafts
    assert draft.data["message"]["text"] == "a caption"


def test_apply_runs_on_each_candidate(demo: MappingSpec) -> None:
    sender = {"user": "US.1000", "phone": "US.1000"}  # a BSUID in the phone field is no phone
    payload = {"batches": [{"sender": sender, "messages": [message("m1", phone="15550009999")]}]}
    (draft,) = apply_mapping(demo, payload, CHANNEL).drafts
    assert draft.data["contact"]["phone"] == "+15550009999"


def test_all_null_sub_object_collapses_to_null(tmp_path: Path) -> None:
    text = DEMO.replace("        message.media.mime_type: {value: application/octet-stream}\n", "")
    spec = load_text(tmp_path, text)
    (draft,) = apply_mapping(spec, {"batches": [batch(message("m1"))]}, CHANNEL).drafts
    assert draft.data["message"]["media"] is None


def test_when_false_skips_the_item(demo: MappingSpec) -> None:
    payload = {"batches": [batch(message("m1", skip=True), message("m2"))]}
    result = apply_mapping(demo, payload, CHANNEL)
    assert [d.key for d in result.drafts] == ["m2"]
    assert result.issues == []


def test_nothing_matched_is_an_issue(demo: MappingSpec) -> None:
    result = apply_mapping(demo, {"batches": [batch(message("m1", skip=True))]}, CHANNEL)
    assert result.drafts == []
    assert result.issues == ["no rule of the mapping matched this payload"]


def test_quarantine_rule_gives_its_reason(demo: MappingSpec) -> None:
    payload = {"batches": [batch(message("m1")), batch(group=True)]}
    result = apply_mapping(demo, payload, CHANNEL)
    assert [d.key for d in result.drafts] == ["m1"]
    assert result.issues == ["group item 1: group batches are outside the contract"]


def test_empty_key_is_an_issue(demo: MappingSpec) -> None:
    result = apply_mapping(demo, {"batches": [batch(message(""))]}, CHANNEL)
    assert result.drafts == []
    assert result.issues == ["rule message item 0/0: the event key is empty"]


def test_missing_time_is_an_issue(demo: MappingSpec) -> None:
    msg = message("m1")
    del msg["ts"]
    result = apply_mapping(demo, {"batches": [batch(msg)]}, CHANNEL)
    assert result.issues == ["rule message item 0/0: the event time is missing"]


def test_unreadable_time_is_an_issue_without_its_value(demo: MappingSpec) -> None:
    result = apply_mapping(
        demo, {"batches": [batch(message("m1", ts="call me +15551239999"))]}, CHANNEL
    )
    assert result.drafts == []
    assert result.issues == [
        "rule message item 0/0: not a unix timestamp: (a str of 20 characters)"
    ]


def test_event_time_that_is_not_rfc3339_is_an_issue_not_a_crash(tmp_path: Path) -> None:
    # `time: msg.text` (a wrong path) gave a ValueError past the engine, in identity
    spec = load_text(
        tmp_path, DEMO.replace("time: {from: msg.ts, apply: epoch_to_rfc3339}", "time: msg.text", 1)
    )
    for text in ("Hello there +15551239999", "2026-13-45T00:00:00Z"):
        result = apply_mapping(spec, {"batches": [batch(message("m1", text=text))]}, CHANNEL)
        assert result.drafts == []
        assert result.issues == [
            "rule message item 0/0: the event time is not an RFC 3339 time "
            f"(a str of {len(text)} characters)"
        ]


def test_a_function_given_the_wrong_type_names_types_not_the_value(tmp_path: Path) -> None:
    spec = load_text(
        tmp_path,
        DEMO.replace(
            "message.text: {first: [msg.text, msg.caption]}",
            "message.text: \"starts_with(msg.text, 'x') && msg.text\"",
            1,
        ),
    )
    result = apply_mapping(spec, {"batches": [batch(message("m1", text=15557654321))]}, CHANNEL)
    assert result.drafts == []
    assert result.issues == [
        "rule message item 0/0: starts_with() got a number value, expected string"
    ]


def test_invalid_bsuid_is_an_issue_not_an_event(demo: MappingSpec) -> None:
    payload = {"batches": [{"sender": {"user": "not-a-bsuid"}, "messages": [message("m1")]}]}
    result = apply_mapping(demo, payload, CHANNEL)
    assert result.drafts == []
    assert len(result.issues) == 1
    assert "in who.user is neither a phone nor a BSUID" in result.issues[0]
    assert "not-a-bsuid" not in result.issues[0]  # reasons never hold the value (may be PII)


def test_value_map_hit(demo: MappingSpec) -> None:
    payload = {"batches": [batch(message("m1", kind="img"))]}
    assert apply_mapping(demo, payload, CHANNEL).drafts[0].data["message"]["type"] == "image"


def test_value_map_wildcard_catches_unknown_values(demo: MappingSpec) -> None:
    payload = {"batches": [batch(message("m1", kind="hologram"))]}
    draft = apply_mapping(demo, payload, CHANNEL).drafts[0]
    assert draft.data["message"]["type"] == "unsupported"


def test_value_map_miss_takes_the_default(demo: MappingSpec) -> None:
    payload = {"batches": [batch(statuses=[{"id": "o1", "state": "queued", "ts": 5}])]}
    (draft,) = apply_mapping(demo, payload, CHANNEL).drafts
    assert draft.data["message"]["status"] == "sent"
    assert draft.data["message"]["provider_status"] == "queued"


def test_value_map_miss_without_default_is_an_issue(tmp_path: Path) -> None:
    spec = load_text(tmp_path, DEMO.replace('      "*": unsupported\n', ""))
    result = apply_mapping(spec, {"batches": [batch(message("m1", kind="hologram"))]}, CHANNEL)
    assert result.drafts == []
    assert result.issues == ["rule message item 0/0: value 'hologram' is not in the value map"]


def test_value_map_reads_numbers_as_text(tmp_path: Path) -> None:
    spec = load_text(
        tmp_path, DEMO.replace("      img: image\n", "      img: image\n      '7': video\n")
    )
    draft = apply_mapping(spec, {"batches": [batch(message("m1", kind=7))]}, CHANNEL).drafts[0]
    assert draft.data["message"]["type"] == "video"


def test_received_at_is_bound_for_rules(tmp_path: Path) -> None:
    spec = load_text(
        tmp_path,
        DEMO.replace("time: {from: msg.ts, apply: epoch_to_rfc3339}", "time: received_at", 1),
    )
    result = apply_mapping(
        spec, {"batches": [batch(message("m1"))]}, CHANNEL, received_at="2026-02-02T02:02:02Z"
    )
    assert result.drafts[0].time == "2026-02-02T02:02:02Z"


def test_cloudapi_text_fixture_maps_to_one_draft() -> None:
    spec = load_mapping(MAPPINGS, "cloudapi")
    result = apply_mapping(spec, fixture_json("cloudapi", "inbound_text"), CHANNEL)
    assert result.issues == []
    (draft,) = result.drafts
    assert draft.data["contact"]["bsuid"] == "US.13491208655302741918"


# -- never raises --------------------------------------------------------------------------------
def _extend_json(children: Any) -> Any:
    return st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=12), children, max_size=5
    )


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    _extend_json,
    max_leaves=25,
)
KEYS = st.sampled_from(
    [
        "entry",
        "changes",
        "value",
        "messages",
        "statuses",
        "contacts",
        "id",
        "from",
        "timestamp",
        "type",
        "text",
        "body",
        "user_id",
        "from_user_id",
        "wa_id",
        "status",
        "field",
        "errors",
        "system",
        "batches",
        "sender",
        "user",
        "ts",
        "kind",
        "metadata",
        "recipient_user_id",
    ]
)


def _extend_shaped(children: Any) -> Any:
    return st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=6)


SHAPED = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(
        [
            "",
            "messages",
            "text",
            "system",
            "user_changed_user_id",
            "US.1",
            "15551234567",
            "1767225600",
            "1767225600000",
            "read",
            "x",
        ]
    ),
    _extend_shaped,
    max_leaves=40,
)
CLOUDAPI = load_mapping(MAPPINGS, "cloudapi")


@pytest.fixture(scope="module")
def demo_module(tmp_path_factory: pytest.TempPathFactory) -> MappingSpec:
    return load_text(tmp_path_factory.mktemp("mappings"), DEMO)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=JSON | SHAPED)
def test_apply_mapping_never_raises_on_any_json(payload: Any) -> None:
    result = apply_mapping(CLOUDAPI, payload, {**CHANNEL, "provider": "cloudapi"})
    assert isinstance(result, MappingResult)
    assert result.drafts or result.issues
    assert all(isinstance(issue, str) for issue in result.issues)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=SHAPED)
def test_demo_mapping_never_raises_on_any_json(demo_module: MappingSpec, payload: Any) -> None:
    result = apply_mapping(demo_module, payload, CHANNEL)
    assert isinstance(result, MappingResult)
    assert result.drafts or result.issues


def test_cloudapi_messages_come_before_statuses_of_the_same_change() -> None:
    payload = fixture_json("cloudapi", "inbound_text")
    value = payload["entry"][0]["changes"][0]["value"]
    first = value["messages"][0]
    value["messages"] = [first, {**first, "id": "wamid.SECOND"}]
    value["statuses"] = [
        {
            "id": "wamid.OUT",
            "status": "sent",
            "timestamp": "1767225601",
            "recipient_id": "15551234567",
        }
    ]
    result = apply_mapping(CLOUDAPI, payload, CHANNEL)
    assert [d.key for d in result.drafts] == [first["id"], "wamid.SECOND", "wamid.OUT:sent"]
