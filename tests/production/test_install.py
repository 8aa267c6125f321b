"""A real `pip install` of a built wheel into a fresh venv outside the checkout finds the
shipped mappings (package data), and a config's `mappings:` folder adds or overrides providers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import orjson
import pytest

from tests.conftest import ROOT
from tests.production.helpers import FIXTURE, clean_env, write_config

pytestmark = pytest.mark.e2e


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `bspgate` script of a fresh venv holding only the built wheel (deps: this venv's)."""
    root = tmp_path_factory.mktemp("install")
    build = root / "src"
    shutil.copytree(
        ROOT,
        build,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.db*", "__pycache__", "*.egg-info", "build"
        ),
    )
    wheel = _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "-w",
        str(root / "dist"),
        str(build),
        cwd=root,
    )
    assert wheel.returncode == 0, wheel.stderr
    venv = root / "venv"
    assert _run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=root).returncode == 0
    python = venv / "bin" / "python"
    site = _run(
        str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=root
    )
    target = Path(site.stdout.strip())
    (whl,) = (root / "dist").glob("bspgate-*.whl")
    install = _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "-q",
        "--no-deps",
        str(whl),
        cwd=root,
    )
    assert install.returncode == 0, install.stderr
    # the dependencies come from this venv; bspgate itself only from the wheel
    (target / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    shutil.rmtree(build)  # nothing of the checkout is left to find
    return venv / "bin" / "bspgate"


def test_installed_package_ships_the_mappings(installed: Path, tmp_path: Path) -> None:
    result = _run(str(installed), "normalize", "cloudapi", str(FIXTURE), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout.splitlines()[0])["type"] == "whatsapp.message.received"
    config = write_config(tmp_path / "acme")
    check = _run(str(installed), "config", "check", "--config", str(config), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    folders = orjson.loads(check.stdout)["mappings"]
    assert "site-packages" in folders[0]
    assert str(ROOT) not in check.stdout


def test_config_mappings_add_and_override_providers(installed: Path, tmp_path: Path) -> None:
    extra = tmp_path / "acme" / "my-mappings"
    shutil.copytree(
        ROOT / "mappings" / "cloudapi", extra / "acmecloud", ignore=shutil.ignore_patterns("cases")
    )
    text = (extra / "acmecloud" / "mapping.yaml").read_text()
    (extra / "acmecloud" / "mapping.yaml").write_text(
        text.replace("name: cloudapi", "name: acmecloud", 1)
    )
    config = write_config(tmp_path / "acme", mappings="my-mappings")
    result = _run(
        str(installed),
        "normalize",
        "acmecloud",
        str(FIXTURE),
        "--config",
        str(config),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout.splitlines()[0])["data"]["message"]["type"] == "text"
    # an override by name wins over the shipped mapping
    (extra / "cloudapi").mkdir()
    (extra / "cloudapi" / "mapping.yaml").write_text("name: cloudapi\nnot: valid\n")
    broken = _run(
        str(installed), "normalize", "cloudapi", str(FIXTURE), "--config", str(config), cwd=tmp_path
    )
    assert broken.returncode == 2
    assert "mappings/cloudapi/mapping.yaml" in broken.stderr
