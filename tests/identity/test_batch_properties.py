"""Property: the processing worker's batches resolve identity as one payload at a time does.

Under load many payloads share one transaction, where identity lookups go through the batch's
cache (`store/batch.py`) and contacts share the batch's clock; alone, each payload is its own
transaction. The random life stories of `test_properties.py` (people, legacy providers,
phones-only number changes, number changes announced with or without phones, recycled numbers,
usernames, late read receipts of old BSUIDs, retries), sent as Cloud API webhooks in a shuffled
arrival order, must put every message, status and identity change on the same contacts, leave
every phone with the same holder and every payload in the same state (none quarantined),
whatever the batch size. Real SQLite files, the real processor.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bspgate.app import load_channel_mappings
from bspgate.processing import Processor, Rules
from bspgate.store.base import follow_merged
from bspgate.store.postgres import PostgresStore
from bspgate.store.sqlite import SqliteStore
from tests.conftest import make_settings
from tests.identity.payloads import TS, cloud_change, cloud_message
from tests.identity.test_properties import Payload, build_story
from tests.payloads import raw_record
from tests.store.pg import fresh_schema

# each example processes a story twice on SQLite; more for a long local run
EXAMPLES = int(os.environ.get("BSPGATE_BATCH_EXAMPLES", "40"))


def _step(at: str) -> int:
    """A story's event time (seconds after midnight) as the webhook's timestamp step."""
    hours, minutes, seconds = at[11:19].split(":")
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds)


def _message(msg_id: str, payload: Payload, step: int) -> bytes:
    """A Cloud API text message; a username in the contact's profile when the payload has one."""
    body = orjson.loads(
        cloud_message(msg_id, phone=_digits(payload.phone), bsuid=payload.bsuid, step=step)
    )
    if payload.username:
        body["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["username"] = (
            payload.username
        )
    return orjson.dumps(body)


def _digits(phone: str | None) -> str | None:
    return phone.lstrip("+") if phone else None


def _status(msg_id: str, payload: Payload, step: int) -> bytes:
    """A read receipt naming the recipient's BSUID (`recipient_user_id`) and maybe its phone."""
    status: dict[str, Any] = {
        "id": msg_id,
        "status": "read",
        "timestamp": str(TS + step),
        "recipient_user_id": payload.bsuid,
    }
    if payload.phone:
        status["recipient_id"] = _digits(payload.phone)
    return cloud_change({"statuses": [status]})


def _change(msg_id: str, payload: Payload, step: int) -> bytes:
    """Meta's `user_changed_number` (a new phone), or `user_changed_user_id` (none): `from` the
    old phone when the payload names it; phones only (the older form) without BSUIDs."""
    system: dict[str, Any] = {"body": "User changed their number"}
    system["type"] = "user_changed_number" if payload.phone else "user_changed_user_id"
    if payload.bsuid:
        system["user_id"] = payload.bsuid
    if payload.previous_bsuid:
        system["previous_user_id"] = payload.previous_bsuid
    if payload.phone:
        system["wa_id"] = _digits(payload.phone)
    message: dict[str, Any] = {
        "id": msg_id,
        "timestamp": str(TS + step),
        "type": "system",
        "system": system,
    }
    if payload.previous_phone:
        message["from"] = _digits(payload.previous_phone)
    return cloud_change({"messages": [message]})


def _webhooks(order: list[Payload]) -> list[tuple[str, bytes]]:
    """(message id, body) per payload in `order`; a retry is the same webhook again."""
    ids: dict[int, str] = {}
    out = []
    for payload in order:
        msg_id = ids.setdefault(id(payload), f"wamid.{len(ids)}")
        step = _step(payload.at)
        if payload.kind == "change":
            body = _change(msg_id, payload, step)
        elif payload.kind == "status":
            body = _status(msg_id, payload, step)
        else:
            body = _message(msg_id, payload, step)
        out.append((msg_id, body))
    return out


async def _outcome(store: Any, folder: Path, webhooks: list[tuple[str, bytes]], batch: int) -> Any:
    """Process `webhooks` in order, `batch` at a time, on an empty `store`: (webhook groups,
    phone holders, usernames, payload states), in labels independent of contact ids."""
    settings = make_settings(folder)
    await store.open()
    try:
        for n, (_, body) in enumerate(webhooks):
            await store.accept(raw_record(n, body))
        processor = Processor(store, Rules(settings, load_channel_mappings(settings)), batch=batch)
        await processor.drain()

        def read(tx: Any) -> tuple[dict[str, tuple[str, str]], dict[str, str | None], Any]:
            def live(contact_id: str) -> str:
                found = follow_merged(tx.contact(contact_id), tx.contact)
                assert found is not None
                return str(found.id)

            webhook_of = {}  # raw payload -> its message (or status) id
            states: dict[str, list[str]] = {}
            for raw_id, body, state in tx.all("SELECT id, body, state FROM raw_payloads"):
                value = orjson.loads(body)["entry"][0]["changes"][0]["value"]
                item = (value.get("messages") or value.get("statuses"))[0]
                webhook_of[raw_id] = item["id"]
                states.setdefault(item["id"], []).append(state)
            contact_of = {}  # webhook -> (the contact its event named, that contact now)
            for (body,) in tx.all(
                "SELECT body FROM events WHERE type IN ('whatsapp.message.received',"
                " 'whatsapp.message.status', 'whatsapp.contact.identity_changed')"
            ):
                data = orjson.loads(body)["data"]
                if data.get("change") == "phone_reassigned":
                    continue  # a notice about the contact that lost a phone, not the payload's
                named = data["contact"]["id"]
                contact_of[webhook_of[data["raw_id"]]] = (named, live(named))
            holders = {}
            for (phone,) in tx.all("SELECT DISTINCT phone FROM contact_phones"):
                owner = tx.contact_by_phone(settings.channels[0].portfolio, phone)
                holders[phone] = None if owner is None else live(owner.id)
            usernames = {
                live(named): tx.contact(live(named)).username for named, _ in contact_of.values()
            }
            return contact_of, holders, (states, usernames)

        contact_of, holders, (states, usernames) = await store.read(read)
    finally:
        await store.close()
    quarantined = {msg_id for msg_id, state in states.items() if "quarantined" in state}
    assert not quarantined, f"quarantined: {sorted(quarantined)}"
    # Contact ids differ between runs: name each contact by the first message (in arrival
    # order) whose event named that very contact. After a merge that is the message that made
    # the survivor, so a run that kept the other contact names its group differently.
    label: dict[str, str] = {}
    for msg_id, _ in webhooks:
        if msg_id in contact_of:
            label.setdefault(contact_of[msg_id][0], msg_id)
    groups = {msg_id: label.get(now, "?") for msg_id, (_, now) in contact_of.items()}
    phones = {phone: None if c is None else label.get(c, "?") for phone, c in holders.items()}
    names = {label.get(c, "?"): username for c, username in usernames.items()}
    return groups, phones, names, {msg_id: sorted(state) for msg_id, state in states.items()}


def check(seed: int, empty_store: Callable[[Path], AbstractContextManager[Any]]) -> None:
    rng = random.Random(seed)
    story = build_story(rng)
    order = list(story.payloads)
    rng.shuffle(order)
    webhooks = _webhooks(order)
    batch = rng.choice((4, 64))
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        with empty_store(folder / "alone.db") as store:
            alone = asyncio.run(_outcome(store, folder, webhooks, 1))
        with empty_store(folder / "together.db") as store:
            together = asyncio.run(_outcome(store, folder, webhooks, batch))
    assert together == alone


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_batches_resolve_identity_as_one_payload_at_a_time(seed: int) -> None:
    check(seed, lambda path: nullcontext(SqliteStore(path)))


@pytest.mark.postgres
@settings(
    max_examples=max(EXAMPLES // 6, 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_batches_resolve_identity_as_one_payload_at_a_time_on_postgres(
    postgres_database: str, seed: int
) -> None:
    @contextmanager
    def empty_store(_path: Path) -> Iterator[Any]:
        with fresh_schema(postgres_database) as dsn:
            yield PostgresStore(dsn)

    check(seed, empty_store)
