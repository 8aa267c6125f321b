"""Operator commands of the CLI: `dlq list`, `replay`, `subscribers list|enable|disable`.

They work on the store the config names, with or without a running server: a running gateway's
dispatcher picks requeued deliveries up on its next round. Output is JSON (lines for lists).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

if TYPE_CHECKING:
    from bspgate.app import Gateway
    from bspgate.config import Settings
    from bspgate.store.base import Store

T = TypeVar("T")
SettingsLoader = Callable[..., "Settings"]


def _print(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")


def _with_gateway(settings: Settings, work: Callable[[Gateway], Awaitable[T]]) -> T:
    from bspgate.app import create_app

    async def run() -> T:
        app = create_app(settings, dispatch=False)
        gateway: Gateway = app.state.gateway
        await gateway.store.open()
        try:
            return await work(gateway)
        finally:
            await gateway.client.aclose()
            await gateway.store.close()

    return asyncio.run(run())


def _with_store(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(store)` on an existing store (read-only commands never create one)."""
    from bspgate.cli import _require_database
    from bspgate.stage import open_store

    _require_database(settings)

    async def run() -> T:
        store = open_store(settings)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    from bspgate.times import rfc3339_fields

    async def work(store: Store) -> int:
        dead = await store.read(
            lambda tx: tx.deliveries(
                state="dead", subscriber_id=args.subscriber, event_id=None, limit=args.limit
            )
        )
        # times as every answer of bspgate has them: RFC 3339 in UTC with `Z` (the store keeps
        # epoch seconds and offsets)
        known = {s.id for s in settings.subscribers}
        if args.subscriber and not dead and args.subscriber not in known:
            # a removed subscriber's dead letters are still listed; a mistyped id says so
            sys.stderr.write(f"bspgate: no subscriber {args.subscriber!r} in the config\n")
            return 2
        for row in dead:
            _print(rfc3339_fields({"kind": "dead_letter", **row}))
        if not args.subscriber:
            raws = await store.read(lambda tx: tx.raws("quarantined", args.limit))
            for raw in raws:
                _print(
                    rfc3339_fields(
                        {
                            "kind": "quarantined",
                            "id": raw.id,
                            "channel_id": raw.channel_id,
                            "provider": raw.provider,
                            "received_at": raw.received_at,
                            "reason": raw.reason,
                        }
                    )
                )
        return 0

    return _with_store(settings, work)


def _progress(done: int, total: int) -> None:
    if total >= 20 and (done % max(total // 10, 1) == 0 or done == total):
        sys.stderr.write(f"bspgate: replay {done}/{total}\n")
        sys.stderr.flush()


def _summary(result: dict[str, Any], limit: int) -> str:
    parts = [f"matched {result.get('matched', 0)}"]
    for key in ("requeued", "added"):
        if key in result:
            value = result[key]
            parts.append(f"{key} {len(value) if isinstance(value, list) else value}")
    skipped = (result.get("skipped") or {}).get("subscribers") or {}
    if skipped:
        names = ", ".join(f"{sub} {count}" for sub, count in sorted(skipped.items()))
        parts.append(f"skipped {sum(skipped.values())} of subscribers not in the config ({names})")
    for state, count in sorted((result.get("outcomes") or {}).items()):
        parts.append(f"{state} {count}")
    if result.get("dry_run"):
        parts.append("dry run: nothing changed")
    line = "bspgate: replay " + ", ".join(parts)
    if result.get("truncated"):
        line += f"; truncated at --limit {limit}: run again, or raise --limit, for the rest"
    return line


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from bspgate.operations import (
        ReplayRequest,
        UnknownReference,
        replay_deliveries,
        replay_limit,
        replay_quarantined,
    )

    request = None
    try:
        if args.quarantined:
            replay_limit({"limit": args.limit})
        else:
            # the check `POST /v1/replays` makes: a replay naming nothing is refused (--all)
            states = ["dead", *(["delivered"] if args.include_delivered else [])]
            request = ReplayRequest.from_dict(
                {
                    "event_id": args.event,
                    "subscriber_id": args.subscriber,
                    "type": args.type,
                    "since": args.since,
                    "until": args.until,
                    "states": states,
                    "dry_run": args.dry_run,
                    "limit": args.limit,
                    "all": args.all,
                },
                [s.id for s in settings.subscribers],
            )
    except ValueError as exc:
        sys.stderr.write(f"bspgate: replay: {exc}\n")
        return 2

    async def work(gateway: Gateway) -> int:
        if request is None:
            try:
                result = await replay_quarantined(
                    gateway,
                    raw_id=args.raw,
                    dry_run=args.dry_run,
                    limit=args.limit,
                    progress=_progress,
                )
            except UnknownReference as exc:
                sys.stderr.write(f"bspgate: replay: {exc}\n")
                return 2
        else:
            try:
                result = await replay_deliveries(
                    gateway.store, request, gateway.clock(), gateway.settings.subscribers
                )
            except UnknownReference as exc:
                sys.stderr.write(f"bspgate: replay: {exc}\n")
                return 2
            result["truncated"] = (
                max(result.get("matched", 0), result.get("added", 0)) >= request.limit
            )
        _print(result)
        sys.stderr.write(_summary(result, args.limit) + "\n")
        return 0

    from bspgate.cli import _require_database

    _require_database(settings)
    return _with_gateway(settings, work)


def cmd_subscribers(args: argparse.Namespace, settings: Settings) -> int:
    from bspgate.operations import (
        SubscriberDisabled,
        retry_subscriber,
        set_subscriber,
        subscriber_view,
    )

    async def work(gateway: Gateway) -> int:
        known = {s.id for s in settings.subscribers}
        if args.action in ("enable", "disable", "retry") and args.subscriber not in known:
            sys.stderr.write(f"bspgate: no subscriber {args.subscriber!r} in the config\n")
            return 1
        if args.action == "retry":
            try:
                moved = await retry_subscriber(gateway.store, args.subscriber, gateway.clock())
            except SubscriberDisabled as exc:  # as the API's 409 subscriber_disabled says it
                sys.stderr.write(f"bspgate: {exc}\n")
                return 1
            _print({"id": args.subscriber, "retrying": moved})
            return 0
        if args.action in ("enable", "disable"):
            await set_subscriber(
                gateway.store, args.subscriber, args.action == "enable", gateway.clock()
            )
        states, backlogs = await gateway.store.read(
            lambda tx: (tx.subscriber_states(), tx.subscriber_backlog(sorted(known)))
        )
        for subscriber in settings.subscribers:
            _print(
                subscriber_view(subscriber, states.get(subscriber.id), backlogs.get(subscriber.id))
            )
        return 0

    from bspgate.cli import _require_database

    _require_database(settings)  # never create a database to list or switch subscribers
    return _with_gateway(settings, work)


def cmd_test_filter(args: argparse.Namespace, settings: Settings) -> int:
    """Would this canonical event go to this subscriber? Exit 0 yes, 1 no, 2 unreadable."""
    from bspgate.pipeline import Fanout

    subscriber = next((s for s in settings.subscribers if s.id == args.subscriber), None)
    if subscriber is None:
        sys.stderr.write(f"bspgate: no subscriber {args.subscriber!r} in the config\n")
        return 2
    try:
        text = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        event = orjson.loads(text)
    except (OSError, orjson.JSONDecodeError) as exc:
        sys.stderr.write(f"bspgate: cannot read the event {args.file}: {exc}\n")
        return 2
    if not isinstance(event, dict):
        sys.stderr.write("bspgate: the event must be a JSON object (a canonical CloudEvent)\n")
        return 2
    event_type = str(event.get("type", ""))
    channel = str(((event.get("data") or {}).get("channel") or {}).get("id", ""))
    fanout = Fanout((subscriber,))
    reason = "events, channels and filter all match"
    if not fanout.matching(event_type, channel):
        reason = f"type {event_type!r} or channel {channel!r} is not among its events/channels"
    elif not fanout.matching(event_type, channel, event):
        reason = "its filter does not hold for this event"
    delivers = bool(fanout.matching(event_type, channel, event))
    _print({"subscriber": subscriber.id, "delivers": delivers, "reason": reason})
    return 0 if delivers else 1


def add_commands(sub: Any, common: argparse.ArgumentParser, load: SettingsLoader) -> None:
    """Register the operator commands on the main parser's subcommands."""

    def bind(
        command: Callable[[argparse.Namespace, Settings], int], lenient: bool = False
    ) -> Callable[..., int]:
        # lenient: a read-only command loads the config without secrets it never uses
        return lambda args: command(args, load(args, lenient=lenient))

    dlq = sub.add_parser("dlq", help="dead letters and quarantined payloads")
    dlq_sub = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    dlq_list = dlq_sub.add_parser("list", parents=[common], help="list them as JSON lines")
    dlq_list.add_argument("--subscriber", help="only this subscriber's dead letters")
    dlq_list.add_argument(
        "--limit", type=int, default=100, help="at most this many of each (default: %(default)s)"
    )
    dlq_list.set_defaults(func=bind(cmd_dlq_list, lenient=True))

    replay = sub.add_parser(
        "replay",
        parents=[common],
        help="re-deliver dead letters (by event, subscriber, type, time window) or re-normalize "
        "quarantined payloads after a mapping fix",
    )
    replay.add_argument("--event", help="one event id")
    replay.add_argument("--subscriber", help="one subscriber (also gives it events it never had)")
    replay.add_argument("--type", help="event type, e.g. whatsapp.message.status")
    replay.add_argument(
        "--since", help="event time from (RFC 3339, any offset: 2026-01-01T09:00:00+01:00)"
    )
    replay.add_argument("--until", help="event time before (RFC 3339, any offset)")
    replay.add_argument(
        "--all",
        action="store_true",
        help="every dead letter of every configured subscriber (a replay naming no filter, "
        "--all or --quarantined is refused)",
    )
    replay.add_argument(
        "--include-delivered",
        action="store_true",
        help="re-send delivered events too, not only dead letters",
    )
    replay.add_argument(
        "--quarantined",
        action="store_true",
        help="re-run quarantined raw payloads through the current mappings",
    )
    replay.add_argument("--raw", help="with --quarantined: one raw payload id")
    replay.add_argument("--dry-run", action="store_true", help="say what would happen, do nothing")
    replay.add_argument(
        "--limit",
        type=int,
        default=1000,
        help="at most this many deliveries or payloads (default: %(default)s); a truncated "
        "match says so",
    )
    replay.set_defaults(func=bind(cmd_replay))

    subscribers = sub.add_parser("subscribers", help="subscriber state")
    subscribers_sub = subscribers.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = subscribers_sub.add_parser("list", parents=[common], help="enabled or why not")
    listing.set_defaults(func=bind(cmd_subscribers))
    for action, text in (
        ("enable", "resume deliveries where they stopped"),
        ("disable", "pause deliveries (they wait in the outbox)"),
        ("retry", "retry everything pending for it now (a running gateway picks it up)"),
    ):
        switch = subscribers_sub.add_parser(action, parents=[common], help=text)
        switch.add_argument("subscriber", help="a configured subscriber id")
        switch.set_defaults(func=bind(cmd_subscribers))
    tester = subscribers_sub.add_parser(
        "test-filter",
        parents=[common],
        help="say whether a canonical event (JSON file, or -) would go to the subscriber "
        "(exit 0 yes, 1 no)",
    )
    tester.add_argument("subscriber", help="a configured subscriber id")
    tester.add_argument("file", help="a canonical event as JSON, or - for stdin")
    tester.set_defaults(func=bind(cmd_test_filter, lenient=True))
