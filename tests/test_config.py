"""config.yaml -> Settings: interpolation, validation errors naming the key, masked secrets."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from bspgate import cli
from bspgate.app import build_verifiers, load_channel_mappings
from bspgate.config import Secret, Settings, load_settings, parse_duration, settings_from_dict
from bspgate.errors import ConfigError, MappingLoadError
from tests.conftest import APP_SECRET, MAPPINGS, ROOT, SUBSCRIBER_SECRET, base_config, make_settings


def load(tmp_path: Path, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    return settings_from_dict(base_config(tmp_path, **overrides), env=env or {}, base_dir=ROOT)


def config_error(
    tmp_path: Path, env: dict[str, str] | None = None, **overrides: Any
) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env, **overrides)
    return caught.value


def channel(**values: Any) -> dict[str, Any]:
    return {
        "id": "cloud-us",
        "provider": "cloudapi",
        "portfolio": "acme",
        "secrets": {"app_secret": APP_SECRET, "verify_token": "vt"},
        **values,
    }


def subscriber(**values: Any) -> dict[str, Any]:
    return {
        "id": "crm",
        "url": "https://crm.example.com/hook",
        "secret": SUBSCRIBER_SECRET,
        **values,
    }


# -- interpolation -----------------------------------------------------------------------------
def test_env_reference_is_interpolated(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        {"META_APP_SECRET": "from-env"},
        channels=[channel(secrets={"app_secret": "${META_APP_SECRET}"})],
    )
    assert settings.channels[0].secret("app_secret") == "from-env"


def test_env_reference_default_applies_when_unset(tmp_path: Path) -> None:
    settings = load(tmp_path, channels=[channel(secrets={"app_secret": "${META:-dev-secret}"})])
    assert settings.channels[0].secret("app_secret") == "dev-secret"


def test_env_reference_beats_its_default(tmp_path: Path) -> None:
    settings = load(
        tmp_path, {"META": "real"}, channels=[channel(secrets={"app_secret": "${META:-dev}"})]
    )
    assert settings.channels[0].secret("app_secret") == "real"


def test_empty_default_gives_an_empty_string(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        channels=[channel(secrets={"app_secret": "x", "access_token": "${META_TOKEN:-}"})],
    )
    assert settings.channels[0].secret("access_token") == ""


def test_env_reference_inside_a_longer_value(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        {"PGPASSWORD": "hunter2", "PGHOST": "db"},
        storage="postgresql://gw:${PGPASSWORD}@${PGHOST:-localhost}:5432/bspgate",
    )
    assert settings.storage == "postgresql://gw:hunter2@db:5432/bspgate"


def test_env_set_to_empty_is_used_not_the_default(tmp_path: Path) -> None:
    settings = load(
        tmp_path, {"TOKEN": ""}, channels=[channel(secrets={"app_secret": "s", "t": "${TOKEN:-d}"})]
    )
    assert settings.channels[0].secret("t") == ""


def test_unset_env_reference_names_the_dotted_key(tmp_path: Path) -> None:
    error = config_error(tmp_path, subscribers=[subscriber(secret="${CRM_WEBHOOK_SECRET}")])
    assert error.key == "subscribers[0].secret"
    assert "CRM_WEBHOOK_SECRET" in str(error)
    assert str(error).startswith("subscribers[0].secret: ")


def test_unset_env_reference_in_a_channel_secret_names_the_key(tmp_path: Path) -> None:
    error = config_error(tmp_path, channels=[channel(secrets={"app_secret": "${NOPE}"})])
    assert error.key == "channels[0].secrets.app_secret"


# -- validation --------------------------------------------------------------------------------
def test_unknown_provider_names_the_key_and_lists_known_mappings(tmp_path: Path) -> None:
    error = config_error(tmp_path, channels=[channel(), channel(id="tw", provider="twillio")])
    assert error.key == "channels[1].provider"
    assert "'twillio' is not a known mapping" in str(error)
    assert "known: " in str(error)
    assert "cloudapi" in str(error).split("known: ", 1)[1]


def test_a_provider_folder_given_as_mappings_says_to_name_its_parent(tmp_path: Path) -> None:
    provider = tmp_path / "mine" / "wati"
    provider.mkdir(parents=True)
    (provider / "mapping.yaml").write_text("name: wati\n")
    error = config_error(tmp_path, mappings=[str(provider)])
    assert error.key == "mappings[0]"
    assert "is a provider folder (it holds mapping.yaml)" in str(error)
    assert str(provider.parent) in str(error)


def test_duplicate_channel_ids_are_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, channels=[channel(), channel(portfolio="other")])
    assert error.key == "channels[1].id"
    assert "'cloud-us' is used twice" in str(error)


def test_duplicate_subscriber_ids_are_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, subscribers=[subscriber(), subscriber(url="https://b.example")])
    assert error.key == "subscribers[1].id"


def test_subscriber_naming_an_unknown_channel_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, subscribers=[subscriber(channels=["cloud-us", "cloud-eu"])])
    assert error.key == "subscribers[0].channels[1]"
    assert "'cloud-eu'" in str(error)


@pytest.mark.parametrize(
    "secret",
    [
        "not-a-standard-webhooks-secret",
        "whsec_short",
        "whsec_AAAAAAAAAAAAAAAAA",  # the right alphabet, but not base64 (17 characters)
        "whsec_A=AAAAAAAAAAAAAAAA",
    ],
)
def test_bad_subscriber_secret_is_refused_without_echoing_it(tmp_path: Path, secret: str) -> None:
    error = config_error(tmp_path, subscribers=[subscriber(secret=secret)])
    assert error.key == "subscribers[0].secret"
    assert secret not in str(error)
    assert secret.removeprefix("whsec_") not in str(error)


def test_non_string_subscriber_secret_is_not_echoed(tmp_path: Path) -> None:
    error = config_error(tmp_path, subscribers=[subscriber(secret=98765432109876543210)])
    assert error.key == "subscribers[0].secret"
    assert "98765432109876543210" not in str(error)


def test_non_string_channel_secret_is_not_echoed(tmp_path: Path) -> None:
    error = config_error(tmp_path, channels=[channel(secrets={"app_secret": 31415926535})])
    assert error.key == "channels[0].secrets.app_secret"
    assert "31415926535" not in str(error)


def test_non_string_api_key_is_not_echoed(tmp_path: Path) -> None:
    error = config_error(tmp_path, api_keys=[{"name": "crm", "key": 27182818284}])
    assert error.key == "api_keys[0].key"
    assert "27182818284" not in str(error)


@pytest.mark.parametrize("duration", ["5 minutes", "5x", "-5s", "1.5h", ""])
def test_bad_retry_duration_names_the_key(tmp_path: Path, duration: str) -> None:
    error = config_error(tmp_path, subscribers=[subscriber(retry_schedule=["5s", duration])])
    assert error.key == "subscribers[0].retry_schedule[1]"
    assert repr(duration) in str(error)


def test_bad_timeout_names_the_key(tmp_path: Path) -> None:
    error = config_error(tmp_path, subscribers=[subscriber(timeout="2h")])
    assert error.key == "subscribers[0].timeout"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_retry_schedule_is_read_as_seconds(tmp_path: Path) -> None:
    settings = load(tmp_path, subscribers=[subscriber(retry_schedule=["1s", "5m", "2h"])])
    assert settings.subscribers[0].retry_schedule == (1.0, 300.0, 7200.0)


def test_bad_business_phone_names_the_key(tmp_path: Path) -> None:
    error = config_error(tmp_path, channels=[channel(business_phone="15550001111")])
    assert error.key == "channels[0].business_phone"
    assert "'15550001111'" in str(error)


def test_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, subscriberz=[])
    assert "subscriberz" in str(error)


def test_config_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="YAML mapping"):
        settings_from_dict(["not", "a", "mapping"], env={}, base_dir=ROOT)


def test_channel_missing_a_secret_its_verifier_requires(tmp_path: Path) -> None:
    settings = load(
        tmp_path, channels=[channel(), channel(id="cloud-eu", secrets={"verify_token": "vt"})]
    )
    with pytest.raises(ConfigError) as caught:
        build_verifiers(settings, load_channel_mappings(settings))
    assert caught.value.key == "channels[1].secrets.app_secret"
    assert "cloudapi" in str(caught.value)


def test_channel_with_an_empty_required_secret_is_refused(tmp_path: Path) -> None:
    settings = load(tmp_path, channels=[channel(secrets={"app_secret": "${META:-}"})])
    with pytest.raises(ConfigError) as caught:
        build_verifiers(settings, load_channel_mappings(settings))
    assert caught.value.key == "channels[0].secrets.app_secret"


def test_a_broken_send_form_of_a_configured_channel_fails_start(tmp_path: Path) -> None:
    # what `serve`, its worker and `config check` load: a broken outbound.yaml stops them as a
    # broken mapping.yaml does, naming file and line (not a 500 on every send)
    root = tmp_path / "m"
    shutil.copytree(MAPPINGS / "cloudapi", root / "cloudapi")
    outbound = root / "cloudapi" / "outbound.yaml"
    outbound.write_text(outbound.read_text().replace("scheme: bearer", "scheme: bearerr"))
    settings = load(tmp_path, mappings=str(root))
    with pytest.raises(MappingLoadError) as caught:
        load_channel_mappings(settings)
    line = outbound.read_text().splitlines().index("  scheme: bearerr") + 1
    # the copy that is broken, where it is (not the shipped file of the same name)
    assert str(caught.value).startswith(f"{outbound.resolve()}:{line}: auth.scheme:")


def test_config_check_refuses_a_broken_send_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "m"
    shutil.copytree(MAPPINGS / "cloudapi", root / "cloudapi")
    outbound = root / "cloudapi" / "outbound.yaml"
    outbound.write_text(outbound.read_text().replace("secret: access_token", "secret: acces_token"))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path, mappings=str(root))))
    assert cli.main(["config", "check", "--config", str(config)]) != 0
    assert f"{outbound.resolve()}:" in capsys.readouterr().err


# -- secrets are masked ------------------------------------------------------------------------
def test_secret_repr_and_str_are_masked() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert secret.reveal() == "hunter2"


def test_empty_secret_is_falsy_and_says_so() -> None:
    assert not Secret("")
    assert repr(Secret("")) == "Secret('')"


def test_settings_repr_shows_no_secret(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, subscribers=[subscriber()])
    text = repr(settings)
    for value in (APP_SECRET, SUBSCRIBER_SECRET, "test-api-key"):
        assert value not in text


def test_public_dict_masks_secrets(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, subscribers=[subscriber()])
    public = settings.to_public_dict()
    assert public["channels"][0]["secrets"] == {
        "app_secret": "**********",
        "verify_token": "**********",
    }
    assert public["subscribers"][0]["secret"] == "**********"
    assert public["api_keys"] == [{"name": "test", "key": "**********"}]
    text = repr(public)
    for value in (APP_SECRET, SUBSCRIBER_SECRET, "test-api-key"):
        assert value not in text


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        (
            "postgresql://gw:hunter2@db:5432/bspgate",
            "postgresql://gw:****@db:5432/bspgate",
        ),
        ("postgres://gw:hunter2@db/bspgate", "postgres://gw:****@db/bspgate"),
        (
            "postgresql://gw@db/bspgate?sslmode=require&password=hunter2",
            "postgresql://gw@db/bspgate?sslmode=require&password=****",
        ),
        ("postgresql://db/bspgate", "postgresql://db/bspgate"),
    ],
)
def test_public_dict_masks_dsn_passwords(tmp_path: Path, dsn: str, masked: str) -> None:
    settings = make_settings(tmp_path, storage=dsn)
    assert settings.to_public_dict()["storage"] == masked


def test_public_dict_masks_credentials_in_subscriber_urls(tmp_path: Path) -> None:
    url = "https://crm:hunter2@crm.example.com/hook"
    settings = make_settings(tmp_path, subscribers=[subscriber(url=url)])
    assert settings.to_public_dict()["subscribers"][0]["url"] == (
        "https://crm:****@crm.example.com/hook"
    )


def test_public_dict_keeps_sqlite_paths(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert settings.to_public_dict()["storage"] == f"sqlite:///{tmp_path / 'bspgate.db'}"


# -- files -------------------------------------------------------------------------------------
def test_shipped_config_loads_as_it_is() -> None:
    settings = load_settings(ROOT / "config.yaml", env={})
    # relative paths resolve against the config file's folder, not the working directory
    assert settings.storage == f"sqlite:///{ROOT / 'bspgate.db'}"
    assert settings.mappings_dir == ROOT / "mappings"
    assert settings.channels[0].id == "cloud-us"
    assert settings.api_keys[0].key.reveal() == "dev-key"
    build_verifiers(settings, load_channel_mappings(settings))


def test_shipped_config_takes_secrets_from_the_environment() -> None:
    settings = load_settings(ROOT / "config.yaml", env={"META_APP_SECRET": "prod-secret"})
    cloud = settings.channel("cloud-us")
    assert cloud is not None
    assert cloud.secret("app_secret") == "prod-secret"


def test_config_file_paths_resolve_against_its_folder(tmp_path: Path) -> None:
    (tmp_path / "mappings").symlink_to(ROOT / "mappings")
    path = tmp_path / "config.yaml"
    path.write_text("channels: []\nmappings: mappings\n")
    settings = load_settings(path, env={})
    assert settings.mappings_dir == (tmp_path / "mappings").resolve()
    assert settings.source == path


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml", env={})


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("channels: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path, env={})


def test_port_from_an_environment_reference() -> None:
    data = {"server": {"port": "${PORT:-9090}"}, "channels": []}
    assert settings_from_dict(data, env={"PORT": "8181"}, base_dir=ROOT).server.port == 8181


def test_port_from_the_environment_out_of_range_names_the_key() -> None:
    data = {"server": {"port": "${PORT}"}, "channels": []}
    with pytest.raises(ConfigError, match=r"server\.port"):
        settings_from_dict(data, env={"PORT": "99999"}, base_dir=ROOT)
