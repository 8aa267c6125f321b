"""Erasure at the edges of identity: a recycled number, a merged contact's id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bspgate.config import settings_from_dict
from tests.conftest import ROOT, SUBSCRIBER_SECRET, base_config, make_settings
from tests.harness import RunningGateway, ServerThread
from tests.identity.payloads import cloud_message
from tests.identity.test_erasure import Sink

pytestmark = [pytest.mark.e2e, pytest.mark.store]

B1 = "US.13491208655302741918"
B3 = "US.30000000000000000003"
PHONE = "15551234567"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    with RunningGateway(make_settings(tmp_path)) as running:
        yield running


def _post(gateway: RunningGateway, body: bytes) -> None:
    assert gateway.post("cloud-us", body).status_code == 200


@pytest.mark.parametrize("erased_holder", ["previous", "new"])
def test_erasing_one_holder_of_a_recycled_number_keeps_the_other_holders_data(
    gateway: RunningGateway, erased_holder: str
) -> None:
    # the number marks each holder only for the time they held it
    _post(gateway, cloud_message("wamid.x", phone=PHONE, bsuid=B1, step=1))
    _post(gateway, cloud_message("wamid.y", phone=PHONE, bsuid=B3, step=5))
    old, _reassigned, new = gateway.events()
    gone, kept = (old, new) if erased_holder == "previous" else (new, old)
    assert gateway.client.delete(f"/v1/contacts/{gone['subject']}").status_code == 200
    raw = gateway.client.get(f"/v1/raws/{kept['data']['raw_id']}").json()
    assert raw["state"] == "processed"  # not "erased": that payload is the other person's
    holder = gateway.client.get(f"/v1/contacts/{kept['subject']}").json()
    assert holder["bsuid"] == (B3 if kept is new else B1)
    assert holder["phone"] == ("+" + PHONE if kept is new else None)
    erased = gateway.client.get(f"/v1/raws/{gone['data']['raw_id']}").json()
    assert erased["state"] == "erased"


def test_erasure_finds_a_retried_copy_although_another_portfolio_holds_the_number(
    tmp_path: Path,
) -> None:
    # the same number in portfolio beta is an unrelated contact (rule 1): it neither hides
    # this person's payloads from the erasure nor loses its own
    config = base_config(tmp_path)
    beta = {**config["channels"][0], "id": "cloud-beta", "portfolio": "beta"}
    config["channels"].append(beta)
    settings = settings_from_dict(config, env={}, base_dir=ROOT)
    with RunningGateway(settings) as gateway:
        first = cloud_message("wamid.1", phone=PHONE, step=1)
        _post(gateway, first)
        _post(gateway, first)  # the provider's retry: stored, gives no event, holds the text
        _post(gateway, cloud_message("wamid.2", phone=PHONE, bsuid=B1, step=2))
        beta_post = gateway.post("cloud-beta", cloud_message("wamid.b", phone=PHONE, step=3))
        assert beta_post.status_code == 200
        events = gateway.events()
        acme = next(e for e in events if e["data"]["channel"]["id"] == "cloud-us")
        other = next(e for e in events if e["data"]["channel"]["id"] == "cloud-beta")
        assert acme["subject"] != other["subject"]
        answer = gateway.client.delete(f"/v1/contacts/{acme['subject']}")
        assert answer.status_code == 200
        assert answer.json()["erased"]["raw_payloads_blanked"] == 3  # the retry's copy too
        untouched = gateway.client.get(f"/v1/raws/{other['data']['raw_id']}").json()
        assert untouched["state"] == "processed"


def test_erasing_a_merged_contacts_id_erases_the_person(gateway: RunningGateway) -> None:
    _post(gateway, cloud_message("wamid.1", phone=PHONE, step=1))  # phone-only contact
    _post(gateway, cloud_message("wamid.2", bsuid=B1, step=2))  # BSUID-only contact
    _post(gateway, cloud_message("wamid.3", phone=PHONE, bsuid=B1, step=3))  # one person: merged
    events = gateway.events()
    merged = next(e for e in events if e["type"] == "whatsapp.contact.merged")
    absorbed = merged["data"]["merged"]["id"]
    survivor = merged["subject"]
    assert absorbed != survivor
    answer = gateway.client.delete(f"/v1/contacts/{absorbed}")
    assert answer.status_code == 200
    assert answer.json()["erased"]["bsuids"] >= 1  # the person's identifiers went
    view = gateway.client.get(f"/v1/contacts/{survivor}").json()
    assert (view["bsuid"], view["phone"]) == (None, None)
    assert gateway.client.get("/v1/contacts", params={"bsuid": B1}).json()["data"] == []


def test_erasing_a_survivor_tells_a_subscriber_that_only_saw_the_merged_contact(
    tmp_path: Path,
) -> None:
    receiving = Sink()
    with ServerThread(receiving.app) as server:
        phones_only = {
            "id": "phones",
            "url": f"{server.url}/hook",
            "secret": SUBSCRIBER_SECRET,
            "filter": {"data.contact.bsuid": {"exists": False}},  # the phone-only contact's
        }
        settings = make_settings(tmp_path, subscribers=[phones_only])
        with RunningGateway(settings) as gateway:
            _post(gateway, cloud_message("wamid.1", bsuid=B1, step=1))  # survivor (older)
            _post(gateway, cloud_message("wamid.2", phone=PHONE, step=2))  # phone-only contact
            assert len(receiving.wait_for(1)) == 1  # "phones" got the phone-only one
            _post(gateway, cloud_message("wamid.3", phone=PHONE, bsuid=B1, step=3))  # merged
            merged = next(e for e in gateway.events() if e["type"] == "whatsapp.contact.merged")
            survivor = merged["subject"]
            answer = gateway.client.delete(f"/v1/contacts/{survivor}")
            assert answer.status_code == 200
            assert answer.json()["erased"]["notified"] == 1
            told = receiving.wait_for(2)
            assert told[-1]["type"] == "whatsapp.contact.erased"


@pytest.mark.parametrize("extra", [{}, {"phone": "+" + PHONE}], ids=["contact_id", "with_phone"])
def test_a_send_to_an_erased_contact_is_refused_by_name(
    gateway: RunningGateway, extra: dict[str, str]
) -> None:
    """The gateway kept none of the person's identifiers: a send to the erased id says so,
    and records nothing on it (it answered `bsuid_send_unsupported`, or sent to a phone given
    beside the id and recorded the send on the erased contact)."""
    _post(gateway, cloud_message("wamid.x", phone=PHONE, bsuid=B1, step=1))
    (event,) = gateway.events()
    contact_id = event["subject"]
    assert gateway.client.delete(f"/v1/contacts/{contact_id}").status_code == 200
    send = {"channel": "cloud-us", "to": {"contact_id": contact_id, **extra}, "type": "text"}
    answer = gateway.client.post(
        "/v1/messages?dry_run=true", json={**send, "text": {"body": "Hello"}}
    )
    assert answer.status_code == 422
    problem = answer.json()
    assert problem["code"] == "contact_erased"
    assert PHONE not in answer.text


def test_erasing_a_contact_again_changes_and_counts_nothing(gateway: RunningGateway) -> None:
    # the first erasure left none of the person's identifiers to search for and sent its
    # notice (once, canonical.md): a second answers so, and records no second erasure
    _post(gateway, cloud_message("wamid.x", phone=PHONE, bsuid=B1, step=1))
    (event,) = gateway.events()
    first = gateway.client.delete(f"/v1/contacts/{event['subject']}")
    assert first.status_code == 200
    assert first.json()["erased"]["events"] >= 1
    again = gateway.client.delete(f"/v1/contacts/{event['subject']}")
    assert again.status_code == 200
    erased = again.json()["erased"]
    assert erased["already_erased"] is True
    assert erased["notified"] == 0
    assert "events" not in erased  # nothing counted twice
    assert erased["erased_at"]
    history = gateway.client.get(f"/v1/contacts/{event['subject']}").json()["history"]
    assert [entry["kind"] for entry in history].count("erased") == 1
