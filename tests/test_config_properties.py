"""Property: any config document gives Settings or a ConfigError naming a key, nothing else."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bspgate.config import Settings, settings_from_dict
from bspgate.errors import ConfigError
from tests.conftest import ROOT

_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "cloudapi",
            "twilio",
            "sqlite:///x.db",
            "whsec_MDEyMzQ1Njc4OWFiY2RlZg==",
            "${HOME}",
            "${NOPE_UNSET}",
            "${X:-1}",
            "5s",
            "*",
            "acme",
            "+15550001111",
            "https://x.example/h",
        ]
    )
)
_keys = st.sampled_from(
    [
        "storage",
        "server",
        "channels",
        "subscribers",
        "api_keys",
        "id",
        "provider",
        "portfolio",
        "secrets",
        "settings",
        "url",
        "secret",
        "events",
        "port",
        "public_url",
        "retry_schedule",
        "key",
        "name",
        "send_by",
        "require_phone",
        "max_body_bytes",
        "mappings",
        "app_secret",
    ]
)


def _extend_documents(inner: Any) -> Any:
    return st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=5)


_documents = st.recursive(
    _scalar,
    _extend_documents,
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_documents)
def test_any_document_is_settings_or_a_named_config_error(document: Any) -> None:
    outcome: Settings | ConfigError
    try:
        outcome = settings_from_dict(
            document, env={"HOME": "/home/x"}, base_dir=ROOT, known_mappings=["cloudapi", "twilio"]
        )
    except ConfigError as exc:
        outcome = exc
    if isinstance(outcome, ConfigError):
        assert str(outcome)  # a message, naming the key where there is one
    else:
        assert isinstance(outcome, Settings)
