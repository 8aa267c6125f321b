"""structlog configuration: JSON lines, and a processor that keeps PII out of logs above DEBUG.

JSON when stderr is not a terminal (a readable console rendering on one), uvicorn's own lines
included (`uvicorn_log_config`). Every line is bounded: long strings and long lists are cut
(`bound_sizes`), and a rendered line never exceeds `MAX_LINE` characters.

`bspgate serve` and its workers write INFO and DEBUG lines through a buffer (`LineWriter`): a
thread writes what has gathered every `FLUSH_EVERY` seconds, so a webhook's access line costs no
write system call of its own (measured: ~30 us of the server's ~200 us per webhook went to its
log line, most of it the write and the GIL hand-over around it). WARNING and above are written at
once, after whatever is buffered, so lines keep their order and a problem is on disk when it is
logged. On a normal stop everything is written; a process killed outright (SIGKILL, OOM) loses at
most the last `FLUSH_EVERY` seconds of INFO lines. Tests and the other commands write every line
at once.

Phone numbers and message text must not reach INFO logs. `redact_pii` masks the values of keys
that hold them (`phone`, `text`, `body`, …) and any phone-like digit run left in other strings,
keeping the last two digits so an operator can still tell two numbers apart. BSUIDs are not
redacted: they are opaque, business-scoped keys, which is what makes them safe to correlate on.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

_PII_KEYS = frozenset(
    {"phone", "from", "to", "wa_id", "text", "body", "name", "username", "payload", "message"}
)
# 8-15 digits standing alone (not inside a BSUID, an id or an ISO time): a phone number.
_PHONE_RUN = re.compile(r"(?<![\w.:/-])\+?\d{8,15}(?![\w-])")
# Keys whose values bspgate itself makes (ids, trace context, names from the config, outcomes):
# never PII, so not scanned for phone-like digit runs (a ULID or a trace id is full of digits,
# and scanning them was most of a log line's regex work).
_KEEP = frozenset(
    {
        "event",
        "timestamp",
        "level",
        "logger",
        "request_id",
        "traceparent",
        "raw_id",
        "event_id",
        "delivery_id",
        "channel",
        "provider",
        "subscriber",
        "outcome",
    }
)
MAX_STRING = 1000  # characters of one value
MAX_ITEMS = 20  # items of one list or dict value
MAX_LINE = 8192  # characters of one rendered line


def _mask_phone(match: re.Match[str]) -> str:
    digits = match.group(0).lstrip("+")
    return "*" * (len(digits) - 2) + digits[-2:]


_SCALARS = (int, float, bool, type(None))


def _redact(value: Any) -> Any:
    if isinstance(value, _SCALARS):  # most values of a line: nothing to look at
        return value
    if isinstance(value, str):
        return _PHONE_RUN.sub(_mask_phone, value)
    if isinstance(value, dict):
        return {k: "[redacted]" if k in _PII_KEYS else _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_pii(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask PII unless the record is DEBUG."""
    if method_name == "debug":
        return event_dict
    for key, value in event_dict.items():  # values change in place, keys never
        if key in _PII_KEYS:
            event_dict[key] = "[redacted]"
        elif key not in _KEEP and not isinstance(value, _SCALARS):
            event_dict[key] = _redact(value)
    return event_dict


def _bound(value: Any, depth: int = 0) -> Any:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, str):
        return (
            value
            if len(value) <= MAX_STRING
            else value[:MAX_STRING] + f"…(+{len(value) - MAX_STRING})"
        )
    if depth > 3:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k): _bound(v, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            out["…"] = f"{len(items) - MAX_ITEMS} more"
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        out_list = [_bound(v, depth + 1) for v in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            out_list.append(f"…{len(items) - MAX_ITEMS} more")
        return out_list
    return value


def bound_sizes(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: cut long strings and long lists so one line stays small."""
    for key, value in event_dict.items():  # values change in place, keys never
        if isinstance(value, str):
            if len(value) > MAX_STRING:
                event_dict[key] = _bound(value)
        elif not isinstance(value, _SCALARS):
            event_dict[key] = _bound(value)
    return event_dict


def _dumps(value: Any, **_options: Any) -> str:
    """JSON for a log line: orjson (several times the standard library's speed on every line);
    values JSON has no type for are written as their `repr`, as structlog's own renderer does."""
    return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


class _BoundedRenderer:
    """The final renderer, cutting a line that is still longer than `MAX_LINE`."""

    def __init__(self, json: bool) -> None:
        self.json = json
        self.inner: Any = (
            structlog.processors.JSONRenderer(serializer=_dumps)
            if json
            else structlog.dev.ConsoleRenderer()
        )

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        line: str = self.inner(logger, name, event_dict)
        if len(line) <= MAX_LINE:
            return line
        keep = {
            k: event_dict[k] for k in ("timestamp", "level", "logger", "event") if k in event_dict
        }
        keep["truncated"] = len(line)
        cut: str = self.inner(logger, name, keep)
        return cut


def _processors(json: bool) -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_pii,  # after format_exc_info: exception messages can carry payload values
        bound_sizes,
        _BoundedRenderer(json),
    ]


FLUSH_EVERY = 0.1  # seconds an INFO or DEBUG line may wait in a buffered process
MAX_BUFFERED = 50_000  # lines waiting for a blocked stream (~20 MB at most)


class LineWriter:
    """Rendered lines to a stream: buffered (`buffer`), or at once after the buffer (`urgent`).

    A daemon thread writes the buffer every `every` seconds; `flush()` writes it now (at exit,
    on stop). Safe from any thread: lines queue in a `deque` (appends are atomic), and one lock
    orders the writes. While the stream blocks (a stalled log collector), at most `MAX_BUFFERED`
    lines wait, the oldest dropped first: memory stays bounded, where an unbuffered line would
    have stalled the request that logged it.
    """

    def __init__(self, stream: TextIO, every: float = FLUSH_EVERY) -> None:
        self.stream = stream
        self.every = every
        self._lines: collections.deque[str] = collections.deque(maxlen=MAX_BUFFERED)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bspgate-log-flush", daemon=True)
        self._thread.start()

    def buffer(self, line: str) -> None:
        self._lines.append(line)

    def urgent(self, line: str) -> None:
        with self._lock:
            self._drain()
            self.stream.write(line + "\n")
            self.stream.flush()

    def flush(self) -> None:
        with self._lock:
            self._drain()

    def close(self) -> None:
        self._stop.set()
        self.flush()

    def _drain(self) -> None:
        lines = self._lines
        chunk = [lines.popleft() for _ in range(len(lines))]  # what is queued now, in order
        if chunk:
            self.stream.write("\n".join(chunk) + "\n")
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            # OSError: the stream failed (those lines are lost, as an unbuffered write's would
            # be); ValueError: it was closed at exit. Either way the next round tries again.
            with contextlib.suppress(OSError, ValueError):
                self.flush()


class _BufferedLogger:
    """structlog's logger for a `LineWriter`: the method name is the level."""

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        self._writer.buffer(message)

    log = debug = info = msg

    def _urgent(self, message: str) -> None:
        self._writer.urgent(message)

    warn = warning = err = error = critical = exception = fatal = failure = _urgent


_writer: LineWriter | None = None


def flush_logs() -> None:
    """Write any buffered lines now (a worker calls it before it exits; `atexit` does it too)."""
    if _writer is not None:
        _writer.flush()


atexit.register(flush_logs)  # a normal exit writes what waits (no-op when nothing is buffered)


def _buffered_writer() -> LineWriter:
    global _writer
    if _writer is None or _writer.stream is not sys.stderr:
        if _writer is not None:
            _writer.close()
        _writer = LineWriter(sys.stderr)
    return _writer


def configure_logging(
    level: str = "info", *, json: bool | None = None, cache: bool = False, buffered: bool = False
) -> None:
    """Configure structlog once per process (the CLI calls it; tests may call it again).

    `json`: default, JSON unless stderr is a terminal. `buffered`: INFO and DEBUG lines go
    through a `LineWriter` (`serve` and its workers; see the module docstring). `cache`: each
    logger keeps the configuration it first logged with (saves a re-bind per line on the hot
    paths of `serve` and its workers); off by default, since a logger used before a later
    `configure` (tests capturing logs) would keep the old one.
    """
    global _writer
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    if json is None:
        json = not sys.stderr.isatty()
    factory: Any = structlog.PrintLoggerFactory(file=sys.stderr)
    if buffered:
        logger = _BufferedLogger(_buffered_writer())
        factory = lambda *_args: logger  # noqa: E731 (one logger for every name)
    elif _writer is not None:  # configured again unbuffered (tests): every line at once now
        _writer.close()
        _writer = None
    structlog.configure(
        processors=_processors(json),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    _route_libraries(numeric, json)


def _route_libraries(level: int, json: bool) -> None:
    """Libraries' standard-library lines (psycopg's pool, aiohttp, ...) in bspgate's format,
    redacted like its own: warnings and above (their INFO chatter is theirs, not ours)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, LineHandler):
            root.removeHandler(handler)
    handler = LineHandler()
    handler.setFormatter(StdlibFormatter(json))
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))


class StdlibFormatter(logging.Formatter):
    """Formats standard-library records (uvicorn's) as bspgate's structlog lines."""

    def __init__(self, json: bool | None = None) -> None:
        super().__init__()
        self.processors = _processors(not sys.stderr.isatty() if json is None else json)

    def format(self, record: logging.LogRecord) -> str:
        event: Any = {"event": record.getMessage(), "logger": record.name}
        if record.exc_info:
            event["exc_info"] = record.exc_info
        method = record.levelname.lower()
        for processor in self.processors:
            event = processor(None, method, event)
        return str(event)


class LineHandler(logging.Handler):
    """A standard-library handler writing through the buffered `LineWriter` when there is one
    (uvicorn's lines keep their place among bspgate's), else straight to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if _writer is None:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            elif record.levelno >= logging.WARNING:
                _writer.urgent(line)
            else:
                _writer.buffer(line)
        except Exception:  # as logging.StreamHandler: report, never raise into the caller
            self.handleError(record)


def _rank(level: str) -> int:
    return logging.getLevelNamesMapping().get(level, logging.INFO)


def uvicorn_log_config(level: str = "info") -> dict[str, Any]:
    """A `logging.config.dictConfig` for uvicorn: its lines in bspgate's format, on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"bspgate": {"()": "bspgate.logging.StdlibFormatter"}},
        "handlers": {"default": {"class": "bspgate.logging.LineHandler", "formatter": "bspgate"}},
        # libraries' lines too (see `_route_libraries`; this configuration replaces its handler)
        "root": {"handlers": ["default"], "level": max(level.upper(), "WARNING", key=_rank)},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": ["default"], "level": "WARNING", "propagate": False},
        },
    }
