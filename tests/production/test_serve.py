"""`bspgate serve` and the commands around it, run as a user would: the real console script,
a config in another folder, the working directory somewhere else."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import orjson
import pytest

from tests.production.helpers import FIXTURE, bspgate, clean_env, serving, write_config

pytestmark = pytest.mark.e2e


def test_paths_resolve_against_the_config_folder_and_reads_never_create_a_database(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "acme")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = bspgate("contacts", "show", "US.1", "--config", str(config), cwd=elsewhere)
    assert result.returncode == 1
    assert "no database at" in result.stderr
    assert str(tmp_path / "acme" / "data" / "gw.db") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "acme" / "data").exists()
    assert list(elsewhere.iterdir()) == []
    dlq = bspgate("--config", str(config), "dlq", "list", cwd=elsewhere)
    assert dlq.returncode == 1
    assert "no database at" in dlq.stderr


def test_one_server_per_sqlite_file_and_the_startup_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "acme")
    with serving(config, cwd=tmp_path) as served:
        second = bspgate("serve", "--config", str(config), "--port", "0", cwd=tmp_path)
        assert second.returncode != 0
        assert f"process {served.process.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert (tmp_path / "acme" / "data" / "gw.db").is_file()
    base = served.base
    lines = [orjson.loads(line) for line in served.stderr.splitlines()]
    started = [line for line in lines if line["event"] == "bspgate.started"]
    assert len(started) == 1
    assert started[0]["address"] == base
    assert started[0]["channels"] == [
        {"id": "cloud-us", "provider": "cloudapi", "webhook_url": f"{base}/webhooks/cloud-us"}
    ]
    # uvicorn's own lines are JSON too (stderr is not a terminal)
    assert any(line.get("logger", "").startswith("uvicorn") for line in lines)


def test_simulate_and_tail_find_a_gateway_served_on_another_port(tmp_path: Path) -> None:
    config = write_config(tmp_path / "acme")
    with serving(config, cwd=tmp_path):
        first = bspgate("simulate", "cloud-us", str(FIXTURE), "--config", str(config), cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        report = orjson.loads(first.stdout)
        assert report["outcome"] == "processed"
        assert report["events"][0]["type"] == "whatsapp.message.received"
        again = bspgate("simulate", "cloud-us", str(FIXTURE), "--config", str(config), cwd=tmp_path)
        assert orjson.loads(again.stdout)["outcome"] == "duplicate"
        tail = bspgate(
            "events", "tail", "--last", "5", "--once", "--config", str(config), cwd=tmp_path
        )
        assert tail.returncode == 0, tail.stderr
        assert orjson.loads(tail.stdout.splitlines()[0])["type"] == "whatsapp.message.received"


def test_simulate_reports_a_quarantine_with_its_reason(tmp_path: Path) -> None:
    import re

    import httpx

    config = write_config(tmp_path / "acme")
    payload = tmp_path / "group.json"
    shutil.copy(Path(__file__).parent / "group_message.json", payload)
    with serving(config, cwd=tmp_path) as served:
        result = bspgate(
            "simulate", "cloud-us", str(payload), "--config", str(config), cwd=tmp_path
        )
        sent = bspgate("simulate", "cloud-us", str(FIXTURE), "--config", str(config), cwd=tmp_path)
        assert orjson.loads(sent.stdout)["outcome"] == "processed"
        # the console's overview counts what the worker process made of them (it used to show
        # only the server's own "accepted", so every outcome read 0)
        with httpx.Client(base_url=served.base, timeout=10) as console:
            login = console.get("/console/login").text
            token = re.search(r'name="csrf" value="([^"]+)"', login)
            assert token is not None
            form = {"csrf": token.group(1), "key": "test-api-key", "next": "/console/"}
            assert console.post("/console/login", data=form).status_code == 303
            for _ in range(50):  # the worker writes its counts every 0.5 s
                page = console.get("/console/?minutes=5").text
                row = re.search(r">cloud-us</a></td>(.*?)</tr>", page, re.S)
                if row and [int(n) for n in re.findall(r">(\d+)</td>", row.group(1))][:3] == [
                    1,
                    0,
                    1,
                ]:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(f"overview row: {row.group(1) if row else page[:500]}")
    report = orjson.loads(result.stdout)
    assert report["outcome"] == "quarantined"
    assert report["reason"]
    # the webhook was answered (and logged) as accepted; its quarantine is a warning of its own
    lines = [orjson.loads(line) for line in served.stderr.splitlines()]
    (warning,) = [line for line in lines if line["event"] == "webhook.quarantined"]
    assert (warning["level"], warning["raw_id"]) == ("warning", report["raw_id"])
    assert warning["reason"] == report["reason"]


def test_dev_credentials_refuse_a_public_host(tmp_path: Path) -> None:
    config = write_config(tmp_path, api_keys=[{"name": "crm", "key": "${KEY:-dev-key}"}])
    result = bspgate("serve", "--config", str(config), "--host", "0.0.0.0", cwd=tmp_path)  # noqa: S104
    assert result.returncode == 2
    assert "api_keys[0].key" in result.stderr
    assert "--insecure-dev" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_dev_credentials_on_loopback_start_with_a_warning(tmp_path: Path) -> None:
    config = write_config(tmp_path, api_keys=[{"name": "crm", "key": "${KEY:-dev-key}"}])
    with serving(config, cwd=tmp_path) as served:
        pass
    lines = [orjson.loads(line) for line in served.stderr.splitlines()]
    (warning,) = [line for line in lines if line["event"] == "bspgate.dev_credentials"]
    assert warning["level"] == "warning"
    assert warning["keys"] == ["api_keys[0].key"]


def test_read_only_commands_need_no_secrets(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        channels=[
            {
                "id": "cloud-us",
                "provider": "cloudapi",
                "portfolio": "acme",
                "secrets": {"app_secret": "${META_APP_SECRET}"},
            }
        ],
    )
    result = bspgate("normalize", "cloudapi", str(FIXTURE), "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    strict = bspgate("config", "check", "--config", str(config), cwd=tmp_path)
    assert strict.returncode == 2
    assert "META_APP_SECRET" in strict.stderr


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, server={"port": 1})
    for args in (
        ("events", "tail", "--once"),
        ("simulate", "cloud-us", str(FIXTURE)),
        ("normalize", "nope", str(FIXTURE)),
    ):
        result = bspgate(*args, "--config", str(config), cwd=tmp_path, env=clean_env())
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _workers(server: int) -> list[int]:
    """The worker processes `serve` spawned (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{server}/task/{server}/children").read_text().split()
    return [
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_processing_and_delivery_run_in_two_workers_below_the_servers_priority(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "acme")
    with serving(config, cwd=tmp_path) as served:
        server = served.process.pid
        deadline = time.monotonic() + 20
        niceness: list[int] = []
        while time.monotonic() < deadline:  # each lowers its priority once it has started
            niceness = [_niceness(pid) for pid in _workers(server)]
            if len(niceness) == 2 and min(niceness) > _niceness(server):
                break
            time.sleep(0.1)
        # processing and delivery each have a process (and a GIL) of their own, and both run
        # below the server that answers providers
        assert len(niceness) == 2
        assert min(niceness) > _niceness(server)


def test_a_webhook_logs_one_line_and_other_requests_an_access_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "acme")
    with serving(config, cwd=tmp_path) as served:
        sent = bspgate("simulate", "cloud-us", str(FIXTURE), "--config", str(config), cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
    lines = [orjson.loads(line) for line in served.stderr.splitlines()]
    received = [line for line in lines if line["event"] == "webhook.received"]
    assert len(received) == 1
    assert received[0]["status"] == 200
    assert received[0]["request_id"].startswith("req_")
    access = [line for line in lines if line["event"] == "http.request"]
    assert not [line for line in access if line["path"].startswith("/webhooks/")]
    assert [line for line in access if line["path"] == "/healthz"]  # other routes: one line each


def test_serve_purges_expired_rows_when_retention_is_set(tmp_path: Path) -> None:
    import sqlite3

    import httpx

    config = write_config(tmp_path / "acme")
    with serving(config, cwd=tmp_path):
        sent = bspgate("simulate", "cloud-us", str(FIXTURE), "--config", str(config), cwd=tmp_path)
        assert orjson.loads(sent.stdout)["outcome"] == "processed"
    database = tmp_path / "acme" / "data" / "gw.db"
    with sqlite3.connect(database) as conn:  # the webhook is two years old now
        conn.execute("UPDATE raw_payloads SET received_at = '2024-01-01T00:00:00.000000Z'")
        conn.execute("UPDATE events SET stored_at = '2024-01-01T00:00:00.000000Z'")
    config = write_config(
        tmp_path / "acme", retention={"events": "30d", "raw_payloads": "30d", "interval": "1s"}
    )

    def purged(base: str) -> float:
        text = httpx.get(base + "/metrics", timeout=5).text
        lines = [line for line in text.splitlines() if line.startswith("bspgate_retention_purged")]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    with serving(config, cwd=tmp_path) as served:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and purged(served.base) < 2:
            time.sleep(0.2)  # the worker purges, and reports through /metrics
        counted = purged(served.base)
    assert counted >= 2  # the event and its raw payload
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM raw_payloads").fetchone()[0] == 0
