"""What operators see from the config: errors that never print a credential, read-only
commands that run without secrets they never use, and a refusal that says the way through."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bspgate.config import load_settings, settings_from_dict
from bspgate.errors import ConfigError
from tests.conftest import ROOT, base_config

SHIPPED_CONFIG = ROOT / "config.yaml"
PASSWORD = "Sup3rS3cretPassw0rd"
TOKEN = "t0kenS3cretValue"


def _error(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(config, env={}, base_dir=ROOT)
    return str(info.value)


# -- 1. a config error never prints a secret: URL credentials ----------------------------------
def test_bad_storage_scheme_error_does_not_print_the_database_password(tmp_path: Path) -> None:
    # a common slip: an SQLAlchemy-style DSN (driver suffix) for PostgreSQL
    config = base_config(tmp_path, storage=f"postgresql+psycopg://bspgate:{PASSWORD}@db:5432/gw")
    message = _error(config)
    assert message.startswith("storage"), message  # names the key (this part works)
    assert PASSWORD not in message, f"the config error prints the database password: {message}"


def test_bad_subscriber_url_error_does_not_print_url_credentials(tmp_path: Path) -> None:
    config = base_config(
        tmp_path,
        subscribers=[
            {
                "id": "crm",
                # `htps` typo: the URL carries Basic credentials and a token (docs/configuration.md:
                # subscriber urls are "shown masked (user:****@, ?token=****)")
                "url": f"htps://hooks:{PASSWORD}@crm.example.com/in?token={TOKEN}",
                "secret": "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            }
        ],
    )
    message = _error(config)
    assert message.startswith("subscribers[0].url"), message
    assert PASSWORD not in message, f"the config error prints the URL password: {message}"
    assert TOKEN not in message, f"the config error prints the URL token: {message}"


def test_config_check_cli_does_not_print_the_database_password(tmp_path: Path) -> None:
    text = SHIPPED_CONFIG.read_text()
    config = tmp_path / "config.yaml"
    config.write_text(
        text.replace(
            "storage: ${BSPGATE_STORAGE:-sqlite:///bspgate.db}",
            f"storage: postgres+asyncpg://gw:{PASSWORD}@db.internal/gw",
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "bspgate", "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        timeout=60,
    )
    assert result.returncode != 0
    assert "storage" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout, result.stderr


# -- 2. read-only commands do not need secrets they never use ----------------------------------
# docs/configuration.md, "Environment references": "Read-only commands (contacts show, events
# tail, dlq list, normalize, simulate) do not need secrets they never use: an unset secret is
# empty for them." Its own api_keys example is `key: ${BSPGATE_API_KEY}`.
def _config_with_unset_api_key(tmp_path: Path) -> Path:
    text = SHIPPED_CONFIG.read_text().replace("${BSPGATE_API_KEY:-dev-key}", "${BSPGATE_API_KEY}")
    assert "${BSPGATE_API_KEY}" in text
    text = text.replace(
        "storage: ${BSPGATE_STORAGE:-sqlite:///bspgate.db}", "storage: sqlite:///bspgate.db"
    )
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_lenient_load_accepts_an_unset_api_key(tmp_path: Path) -> None:
    path = _config_with_unset_api_key(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "BSPGATE_API_KEY"}
    # what every read-only command does (cli._read_settings -> lenient=True)
    settings = load_settings(path, env=env, lenient=True)
    assert settings.channel("cloud-us") is not None


@pytest.mark.parametrize(
    "command",
    [
        ["normalize", "cloudapi", str(ROOT / "tests/fixtures/cloudapi/inbound_text.json")],
        ["dlq", "list"],
    ],
    ids=["normalize", "dlq-list"],
)
def test_read_only_commands_run_with_an_unset_api_key(tmp_path: Path, command: list[str]) -> None:
    path = _config_with_unset_api_key(tmp_path)
    if command[0] == "dlq":
        # a database to read (`dlq list` never creates one): the shipped config's store, migrated
        env = {k: v for k, v in os.environ.items() if k != "BSPGATE_API_KEY"}
        env["BSPGATE_API_KEY"] = "some-key"
        subprocess.run([sys.executable, "-c", _MIGRATE, str(path)], env=env, check=True, timeout=60)
    env = {k: v for k, v in os.environ.items() if k != "BSPGATE_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "bspgate", *command, "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, (
        f"`bspgate {' '.join(command[:2])}` fails on an unset ${{BSPGATE_API_KEY}} it never "
        f"uses: {result.stderr.strip()}"
    )


_MIGRATE = """
import asyncio, sys
from pathlib import Path
from bspgate.config import load_settings
from bspgate.stage import open_store
settings = load_settings(Path(sys.argv[1]))
async def main():
    store = open_store(settings)
    await store.open()
    await store.close()
asyncio.run(main())
"""


# -- 3. the dev-credentials refusal says how to get past it ------------------------------------
def test_dev_credentials_refusal_keeps_its_insecure_dev_hint(tmp_path: Path) -> None:
    """docs/deployment.md: with the shipped defaults `serve --host 0.0.0.0` stops and says which
    keys to set; `--insecure-dev` is the documented way through for a local try-out. On the
    shipped config the message is cut at 500 characters before that hint."""
    config = tmp_path / "config.yaml"
    shutil.copy(SHIPPED_CONFIG, config)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("BSPGATE_", "META_", "D360_", "TWILIO_", "INFOBIP_", "ACS_", "CONNECTLY_", "SINCH_")
        )
        and not k.startswith(("GUPSHUP_", "VONAGE_"))
    }
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    anywhere = "0.0.0.0"  # noqa: S104 (refused: it never binds)
    result = subprocess.run(
        [sys.executable, "-m", "bspgate", "serve", "--config", str(config), "--host", anywhere],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode != 0
    assert "not a loopback address" in result.stderr
    assert "--insecure-dev" in result.stderr, f"the hint is cut off: {result.stderr.strip()}"
