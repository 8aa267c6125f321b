"""A send refused by the schema never repeats the value it refuses: a phone given in the wrong
place (`"to": "+1555…"`, a phone in `to.contact_id`) is described by its kind, not quoted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.identity.sends import CLOUD, G4, utility_template

PHONE = "+15551234567"


@pytest.mark.parametrize(
    "to",
    [PHONE, {"contact_id": PHONE}, [PHONE], {"bsuid": 15551234567}],
    ids=["to_is_the_phone", "phone_in_contact_id", "to_is_a_list", "bsuid_as_number"],
)
def test_a_refused_send_does_not_repeat_the_phone(tmp_path: Path, to: Any) -> None:
    gw = G4(tmp_path)
    with gw.client:
        refused = gw.post({**utility_template(to), "channel": CLOUD})
    assert refused.status_code == 422
    assert refused.json()["code"] == "invalid_request"
    assert "5551234567" not in refused.text, refused.json()["detail"]
