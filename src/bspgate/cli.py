"""The `bspgate` command line (see the operator contract for each command's behaviour).

Every command takes `--config FILE` (default `$BSPGATE_CONFIG`, else ./config.yaml) and answers
`--help`. Results go to stdout (JSON or JSON lines where they are data); errors go to stderr with
a non-zero exit: 2 for a refused input (a payload that would be quarantined, an invalid config),
1 for anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bspgate import __version__
from bspgate.cli_mappings import add_mappings_parsers
from bspgate.config import Settings, default_config_path, load_settings
from bspgate.errors import ConfigError, GatewayError, MappingLoadError, PayloadError


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def _fail(message: str, code: int = 1) -> int:
    sys.stderr.write(f"bspgate: {message}\n")
    return code


def _config_path(args: argparse.Namespace) -> Path:
    config = getattr(args, "config", None)
    return Path(config) if config else default_config_path()


def _settings(args: argparse.Namespace, *, lenient: bool = False) -> Settings:
    return load_settings(_config_path(args), lenient=lenient)


def _read_settings(args: argparse.Namespace) -> Settings:
    """Settings for a read-only command: secrets it never uses may be unset."""
    return _settings(args, lenient=True)


def _mapping_roots(args: argparse.Namespace) -> list[Path]:
    from bspgate.mapping.loader import shipped_mappings_dir

    if getattr(args, "mappings", None):
        return [shipped_mappings_dir(), Path(args.mappings)]
    if _config_path(args).is_file():
        return list(_read_settings(args).mapping_dirs)
    return [shipped_mappings_dir()]


def _require_database(settings: Settings) -> None:
    """A read-only command never creates a database: a missing SQLite file is an error."""
    from bspgate.store.sqlite import sqlite_path

    if not settings.storage.startswith("sqlite:"):
        return
    path = Path(sqlite_path(settings.storage))
    if str(path) != ":memory:" and not path.is_file():
        where = f" (config {settings.source})" if settings.source else ""
        raise GatewayError(
            f"no database at {path}{where}: nothing is stored yet; start `bspgate serve` with "
            "this config first, or check `storage:`"
        )


def _database_exists(settings: Settings) -> bool:
    try:
        _require_database(settings)
    except GatewayError:
        return False
    return True


def _gateway_url(args: argparse.Namespace, settings: Settings) -> str:
    """--url, else the address of the gateway serving this store, else server.public_url."""
    from bspgate.serving import running_gateway

    if getattr(args, "url", None):
        return str(args.url).rstrip("/")
    running = running_gateway(settings)
    if running and running.get("address"):
        return str(running["address"]).rstrip("/")
    return settings.server.public_url.rstrip("/")


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    return Path(name).read_bytes()


# -- commands ---------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses

    import structlog
    import uvicorn

    from bspgate.app import create_app
    from bspgate.config import local_url
    from bspgate.logging import configure_logging, uvicorn_log_config
    from bspgate.serving import (
        ServeLock,
        dev_credentials,
        is_loopback,
        lock_path,
        startup_line,
        tune_gc,
    )

    configure_logging(args.log_level, cache=True, buffered=True)
    log = structlog.get_logger("bspgate.serve")
    os.environ["BSPGATE_LOG_LEVEL"] = args.log_level  # the worker process logs alike
    settings = _settings(args)
    server = settings.server.serving(args.host, args.port)
    dev = dev_credentials(settings)
    if dev and not is_loopback(server.host) and not args.insecure_dev:
        refusal = ConfigError(
            "server.host",
            f"{server.host!r} is not a loopback address and development credentials are in "
            f"effect: set the real values, or pass --insecure-dev for a try-out. "
            f"{len(dev)} {'key holds' if len(dev) == 1 else 'keys hold'} a development value; "
            f"set the environment variable named before each key: "
            f"{', '.join(_dev_key_names(settings, dev))}",
        )
        # one line, never cut (`_one_line`): every key must be named
        return _fail(" ".join(f"config: {refusal}".split()), 2)
    settings = dataclasses.replace(settings, server=server)
    address = local_url(server.host, server.port)
    path = lock_path(settings)
    lock = ServeLock(path) if path is not None else None
    if lock is not None:
        lock.acquire({"address": address, "public_url": server.public_url})
    try:
        # processing and delivery in a worker process: the second core (docs/performance.md)
        app = create_app(settings, processing="worker")
        tune_gc()
        log.info("bspgate.started", **startup_line(settings, address))
        if dev:
            log.warning(
                "bspgate.dev_credentials",
                keys=dev,
                variables=sorted(
                    {name for key in dev for name in settings.env_defaults.get(key, ())}
                ),
                detail="development defaults are in effect: set the real values in the "
                "environment before exposing this gateway",
            )
        # uvicorn shuts down gracefully on SIGTERM and Ctrl-C, then raises the signal again
        # with the handlers it found: this one ends the process normally, so the buffered log
        # lines are written and the lock released (the default handler killed it first)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _stop_after_shutdown)
        with contextlib.suppress(_Stopped):
            uvicorn.run(
                app,
                host=server.host,
                port=server.port,
                log_config=uvicorn_log_config(args.log_level),
                access_log=False,  # bspgate logs one access line per request itself
                lifespan="on",
                server_header=False,
            )
    finally:
        if lock is not None:
            lock.release()
    return 0


def _dev_key_names(settings: Settings, keys: list[str]) -> list[str]:
    """Each development key with the variables to set where its value is the default of a
    `${NAME:-dev-…}` reference (`VONAGE_SIGNATURE_SECRET (channels[8].secrets.signature_secret)`),
    else the key, as written in the config file."""
    named = []
    for key in keys:
        variables = settings.env_defaults.get(key, ())
        named.append(
            f"{' and '.join(variables)} ({key})"
            if variables
            else f"{key} (written in the config file)"
        )
    return named


class _Stopped(Exception):
    """A stop signal, raised again by uvicorn after its graceful shutdown."""


def _stop_after_shutdown(signum: int, frame: Any) -> None:
    raise _Stopped(signum)


def cmd_normalize(args: argparse.Namespace) -> int:
    from bspgate.mapping.loader import load_mapping
    from bspgate.normalize import Normalizer, demo_channel

    spec = load_mapping(_mapping_roots(args), args.provider)
    channel = demo_channel(args.provider)
    if args.channel:
        configured = _read_settings(args).channel(args.channel)
        if configured is None:
            return _fail(f"no channel {args.channel!r} in the config")
        channel = configured
    body = _read_input(args.file)
    try:
        outcome = Normalizer(spec, channel).normalize_body(body)
    except PayloadError as exc:
        return _fail(f"unparseable payload: {exc}", 2)
    for event in outcome.events:
        _print_json(event)
    if outcome.state == "quarantined":
        return _fail("quarantined: " + "; ".join(outcome.issues), 2)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    import httpx

    from bspgate.serving import running_gateway
    from bspgate.simulate import signed_request

    settings = _read_settings(args)
    channel = settings.channel(args.channel)
    if channel is None:
        return _fail(f"no channel {args.channel!r} in the config")
    running = running_gateway(settings) or {}
    if running.get("public_url") and not settings.server.public_url_set:
        # sign over the URL the running gateway verifies against (it follows `serve --port`)
        import dataclasses

        server = dataclasses.replace(settings.server, public_url=running["public_url"])
        settings = dataclasses.replace(settings, server=server)
    url, headers, body = signed_request(settings, channel, _read_input(args.file))
    base = _gateway_url(args, settings)
    target = base + "/webhooks/" + url.split("/webhooks/", 1)[1]
    try:
        response = httpx.post(target, content=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        return _fail(f"cannot reach the gateway at {base}: {exc}")
    report = _simulate_report(args, settings, base, response)
    _print_json(report)
    return 0 if response.status_code == 200 else 1


def _simulate_report(
    args: argparse.Namespace, settings: Settings, base: str, response: Any
) -> dict[str, Any]:
    """What became of the payload: processed, duplicate or quarantined (and why).

    The webhook's 200 only says the payload is stored; its outcome is looked up
    (`GET /v1/raws/{id}`), waiting a moment for a gateway that processes after answering.
    """
    import httpx

    raw_id = response.headers.get("bspgate-raw-id")
    report: dict[str, Any] = {"status": response.status_code, "raw_id": raw_id}
    if response.status_code != 200:
        report["outcome"] = "rejected"
        report["problem"] = _json_or_text(response)
        return report
    if raw_id is None:
        report["outcome"] = "duplicate"
        report["detail"] = "every event of this payload was already stored"
        return report
    key = args.api_key or (settings.api_keys[0].key.reveal() if settings.api_keys else "")
    deadline = time.monotonic() + 5
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}) as client:
        while True:
            found = client.get(f"/v1/raws/{raw_id}", timeout=10)
            if found.status_code != 200:
                report["outcome"] = "stored"
                report["detail"] = f"GET /v1/raws/{raw_id} answered {found.status_code}"
                return report
            raw = found.json()
            # settled states; anything else (a gateway that processes after answering) is waited for
            settled = raw["state"] in ("processed", "quarantined", "duplicate", "erased")
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    report["outcome"] = raw["state"]
    report["events"] = raw.get("events", [])
    if raw.get("reason"):
        report["reason"] = raw["reason"]
    return report


def _json_or_text(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:200] or None


def cmd_events_tail(args: argparse.Namespace) -> int:
    import httpx

    settings = _read_settings(args)
    base = _gateway_url(args, settings)
    key = args.api_key or (settings.api_keys[0].key.reveal() if settings.api_keys else "")
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        try:
            first = client.get("/v1/events", params={"limit": args.last or 1})
        except httpx.HTTPError as exc:
            return _fail(f"cannot reach the gateway at {base}: {exc}")
        if first.status_code != 200:
            return _fail(f"GET /v1/events answered {first.status_code}: {first.text[:200]}")
        page = first.json()
        for event in reversed(page["data"] if args.last else []):
            _print_json(event)
        cursor = page.get("tail_cursor")
        while True:
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["after"] = cursor
            response = client.get("/v1/events", params=params)
            if response.status_code != 200:
                return _fail(f"GET /v1/events answered {response.status_code}")
            page = response.json()
            for event in page["data"]:
                _print_json(event)
            cursor = page.get("tail_cursor") or cursor
            if args.once:
                return 0
            if not page["data"]:
                time.sleep(args.interval)


def cmd_contacts_show(args: argparse.Namespace) -> int:
    import asyncio

    from bspgate.mapping.functions import e164, is_bsuid
    from bspgate.stage import open_store

    settings = _read_settings(args)
    _require_database(settings)
    key = args.identifier.strip()

    def lookup(tx: Any) -> list[dict[str, Any]]:
        if key.startswith("ct_"):
            ids = [key]
        elif is_bsuid(key):
            ids = tx.find_contacts(bsuid=key)
        else:
            ids = tx.find_contacts(phone=e164(key) or key)
        return [view for view in (tx.contact_view(i) for i in ids) if view is not None]

    async def run() -> list[dict[str, Any]]:
        store = open_store(settings)
        await store.open()
        try:
            result: list[dict[str, Any]] = await store.read(lookup)
            return result
        finally:
            await store.close()

    views = asyncio.run(run())
    if not views:
        return _fail(f"no contact matches {key!r}", 1)
    for view in views:
        _print_json(view)
    return 0


def cmd_contacts_merge(args: argparse.Namespace) -> int:
    import asyncio
    from datetime import UTC, datetime

    from bspgate.identity.operator import OperatorContext, OperatorRefused, operator_merge
    from bspgate.pipeline import Fanout, schema_base
    from bspgate.schema.validate import EventValidator
    from bspgate.stage import open_store

    settings = _settings(args)
    _require_database(settings)
    moment = datetime.now(UTC)
    ctx = OperatorContext.at(
        settings,
        Fanout(settings.subscribers, schema_base(settings.server.public_url)),
        EventValidator(),
        moment,
        f"cli:{args.by}",
    )

    async def run() -> dict[str, Any]:
        store = open_store(settings)
        await store.open()
        try:
            view: dict[str, Any] = await store.transaction(
                lambda tx: operator_merge(tx, ctx, args.into, args.source)
            )
            return view
        finally:
            await store.close()

    try:
        view = asyncio.run(run())
    except OperatorRefused as exc:
        return _fail(f"merge refused: {exc.detail}", 1)
    _print_json(view)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from bspgate.app import build_verifiers
    from bspgate.stage import load_channel_mappings

    settings = _settings(args)
    build_verifiers(settings, load_channel_mappings(settings))
    _print_json(settings.to_public_dict())
    return 0


# -- parser -----------------------------------------------------------------------------------
CONFIG_HELP = "config file (default: $BSPGATE_CONFIG or ./config.yaml)"
URL_HELP = "gateway base URL (default: the running gateway's address, else server.public_url)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bspgate", description="One WhatsApp event stream from every BSP, BSUID-first."
    )
    parser.add_argument("--version", action="version", version=f"bspgate {__version__}")
    parser.add_argument("--config", help=CONFIG_HELP)
    # --config also after the subcommand; SUPPRESS keeps one given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the gateway (migrations first)")
    serve.add_argument("--host", help="address to bind (default: server.host)")
    serve.add_argument("--port", type=int, help="port to bind (default: server.port)")
    serve.add_argument(
        "--log-level", default="info", help="debug, info, warning or error (default: %(default)s)"
    )
    serve.add_argument(
        "--insecure-dev",
        action="store_true",
        help="allow a non-loopback --host while development credentials (dev-…) are in effect",
    )
    serve.set_defaults(func=cmd_serve)

    normalize = sub.add_parser(
        "normalize",
        parents=[common],
        help="print the canonical events of one payload as JSON lines (no server, no store)",
    )
    normalize.add_argument("provider", help="a mapping name (cloudapi, twilio, …)")
    normalize.add_argument("file", help="the body as the provider sends it, or - for stdin")
    normalize.add_argument("--channel", help="use this configured channel (default: a demo one)")
    normalize.add_argument("--mappings", help="an extra mappings folder (default: the config's)")
    normalize.set_defaults(func=cmd_normalize)

    simulate = sub.add_parser(
        "simulate",
        parents=[common],
        help="post a payload to the running gateway, signed as the channel's provider would, and "
        "print whether it was processed, a duplicate or quarantined",
    )
    simulate.add_argument("channel", help="a configured channel id")
    simulate.add_argument("file", help="the body as the provider sends it, or - for stdin")
    simulate.add_argument("--url", help=URL_HELP)
    simulate.add_argument("--api-key", help="Bearer key to look the outcome up (default: first)")
    simulate.set_defaults(func=cmd_simulate)

    mappings = sub.add_parser("mappings", help="validate mapping files or run their cases")
    mappings_sub = mappings.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_mappings_parsers(mappings_sub, common)  # check, test [--update], new (cli_mappings.py)

    events = sub.add_parser("events", help="read the canonical event stream")
    events_sub = events.add_subparsers(dest="action", required=True, metavar="ACTION")
    tail = events_sub.add_parser("tail", parents=[common], help="follow events as they are stored")
    tail.add_argument("--url", help=URL_HELP)
    tail.add_argument("--api-key", help="Bearer key (default: the config's first)")
    tail.add_argument("--last", type=int, default=0, help="print the last N events first")
    tail.add_argument(
        "--interval", type=float, default=1.0, help="seconds between polls (default: %(default)s)"
    )
    tail.add_argument("--once", action="store_true", help="print what is new and exit")
    tail.set_defaults(func=cmd_events_tail)

    contacts = sub.add_parser("contacts", help="the identity store")
    contacts_sub = contacts.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = contacts_sub.add_parser(
        "show", parents=[common], help="a contact, its identifiers and their history"
    )
    show.add_argument("identifier", help="a contact id (ct_…), a BSUID or a phone number")
    show.set_defaults(func=cmd_contacts_show)
    merge = contacts_sub.add_parser(
        "merge",
        parents=[common],
        help="merge one contact into another (the same person; rule 11)",
    )
    merge.add_argument("into", help="the contact id that survives (ct_…)")
    merge.add_argument("--from", dest="source", required=True, help="the contact id merged in")
    merge.add_argument("--by", default="operator", help="who merges (recorded in the history)")
    merge.set_defaults(func=cmd_contacts_merge)

    from bspgate.cli_operations import add_commands

    add_commands(sub, common, _settings)

    add_send_parser(sub, common)

    config = sub.add_parser("config", help="configuration")
    config_sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    config_check = config_sub.add_parser(
        "check", parents=[common], help="validate and print the resolved config, secrets masked"
    )
    config_check.set_defaults(func=cmd_config_check)
    return parser


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= 500 else line[:497] + "..."


def _config_first(argv: list[str]) -> list[str]:
    """`--config FILE` may stand anywhere (before, between or after the command and its
    action): it is moved to the front, where the top-level parser reads it."""
    front: list[str] = []
    rest: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--":
            rest += [word, *words]
        elif word == "--config":
            front += [word, next(words, "")]
        elif word.startswith("--config="):
            front.append(word)
        else:
            rest.append(word)
    return front + rest


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_config_first(sys.argv[1:] if argv is None else argv))
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        return _fail(_one_line(f"config: {exc}"), 2)
    except MappingLoadError as exc:
        return _fail(_one_line(str(exc)), 2)
    except FileNotFoundError as exc:
        return _fail(f"{exc.filename}: no such file")
    except OSError as exc:
        return _fail(_one_line(f"{getattr(exc, 'filename', '') or ''} {exc.strerror or exc}"))
    except GatewayError as exc:
        return _fail(_one_line(str(exc)))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # every CLI error is one line, never a traceback
        return _fail(_one_line(f"{type(exc).__name__}: {exc}"))


# -- send (bspgate.outbound) ------------------------------------------------------------------
def _send_problem(exc: Any) -> int:
    from bspgate.outbound.service import title_for
    from bspgate.problems import problem

    _print_json(problem(exc.status, exc.code, title_for(exc.code), exc.detail, **exc.extra))
    return 2 if exc.status < 500 else 1


async def _dry_run(settings: Settings, payload: Any, channel: str, use_store: bool) -> Any:
    from bspgate.outbound.service import SendService
    from bspgate.stage import open_store, utc_now

    store = open_store(settings) if use_store else None
    if store is not None:
        await store.open()
    try:
        service = SendService(settings, store=store, client=None, clock=utc_now)
        return await service.dry_run(payload, channel_id=channel, use_store=use_store)
    finally:
        if store is not None:
            await store.close()


def cmd_send(args: argparse.Namespace) -> int:
    """Dry run: render here (the store only for `to.contact_id`). Send: via the running gateway.

    A real send goes through the gateway's `POST /v1/messages`, so it is recorded in the store the
    server owns (status webhooks then resolve to the contact) and idempotency keys hold.
    """
    import asyncio

    import httpx
    import structlog

    from bspgate.errors import SendError

    if not structlog.is_configured():
        # stdout carries the JSON answer only; log lines (a fresh store migrating) go to stderr
        structlog.configure(logger_factory=lambda *_args: structlog.PrintLogger(sys.stderr))
    settings = _settings(args)
    try:
        payload = orjson.loads(_read_input(args.file))
    except orjson.JSONDecodeError:
        return _send_problem(SendError("invalid_request", f"{args.file} is not JSON"))
    if isinstance(payload, dict):
        named = payload.get("channel")
        if named is not None and named != args.channel:
            return _send_problem(
                SendError(
                    "invalid_request",
                    f"channel: the file names {named!r}, --channel {args.channel!r}",
                )
            )
        payload = {**payload, "channel": args.channel}
    if args.dry_run:
        # the same SendService.dry_run as `POST /v1/messages?dry_run=true`, over the same store
        # (retired BSUIDs replaced, retired phones refused, the service window checked); only
        # without a database yet (nothing stored, so nothing retired) does it run without one
        use_store = _database_exists(settings)
        try:
            outcome = asyncio.run(_dry_run(settings, payload, args.channel, use_store))
        except SendError as exc:
            return _send_problem(exc)
        _print_json(outcome.body)
        return 0
    base = _gateway_url(args, settings)
    key = args.api_key or (settings.api_keys[0].key.reveal() if settings.api_keys else "")
    headers = {"authorization": f"Bearer {key}"}
    if args.idempotency_key:
        headers["idempotency-key"] = args.idempotency_key
    try:
        response = httpx.post(f"{base}/v1/messages", json=payload, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        return _fail(f"cannot reach the gateway at {base}: {exc}")
    try:
        _print_json(response.json())
    except ValueError:
        return _fail(f"POST /v1/messages answered {response.status_code}: {response.text[:200]}")
    if response.status_code in (200, 202):
        return 0
    return 2 if 400 <= response.status_code < 500 else 1


def add_send_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    send = sub.add_parser(
        "send",
        parents=[common],
        help="send a canonical message (or print the provider request it becomes: --dry-run)",
        description="FILE (or -) is a canonical send; `channel` may be left out of it. "
        "--dry-run prints {method, url, headers, body} with secrets masked and sends nothing "
        "(no server needed unless `to.contact_id` must be looked up in the store). Without it "
        "the send goes through the running gateway's POST /v1/messages and the 202 answer is "
        "printed. A refused send prints the problem JSON (with its code) and exits 2.",
    )
    send.add_argument("file", help="the canonical send as JSON, or - for stdin")
    send.add_argument("--channel", required=True, help="channel id to send from")
    send.add_argument("--dry-run", action="store_true", help="print the provider request only")
    send.add_argument("--url", help="gateway base URL (default: server.public_url)")
    send.add_argument("--api-key", help="Bearer key (default: the config's first)")
    send.add_argument("--idempotency-key", help="sent as the Idempotency-Key header")
    send.set_defaults(func=cmd_send)
