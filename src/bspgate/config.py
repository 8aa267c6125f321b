"""config.yaml -> frozen `Settings`, checked once at start.

Reading order: YAML (safe) -> `${NAME}` / `${NAME:-default}` interpolated from the environment ->
`config.schema.json` -> cross-checks (known mapping names, unique ids, secrets a verifier needs,
durations) -> frozen dataclasses. Every error is a `ConfigError` naming the dotted key and the bad
value (`channels[2].provider: 'twillio' is not a known mapping (known: cloudapi, …)`).
Secrets are `Secret` objects whose repr is masked; `reveal()` is the only way to the value.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml
from standardwebhooks import Webhook

from bspgate.delivery.filter import Filter, compile_filter
from bspgate.delivery.rate import parse_rate
from bspgate.errors import ConfigError
from bspgate.masking import mask_url
from bspgate.retention import Retention

DEFAULT_RETRY_SCHEDULE = ("5s", "5m", "30m", "2h", "5h", "10h", "10h")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class Secret:
    """A value that must not reach logs or `repr` (API keys, app secrets, signing keys)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value itself."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    max_body_bytes: int = 1_048_576
    public_url_set: bool = True  # False: public_url follows the address actually served

    def serving(self, host: str | None, port: int | None) -> ServerSettings:
        """These settings for the address `serve` binds (`--host`, `--port` override)."""
        host = host or self.host
        port = self.port if port is None else port
        public_url = self.public_url if self.public_url_set else local_url(host, port)
        return ServerSettings(host, port, public_url, self.max_body_bytes, self.public_url_set)


def _in_flight(value: int | str, index: int) -> int:
    """`max_in_flight`: an integer, or digits from a `${NAME}` reference, in 1..1024."""
    count = int(value)
    if not 1 <= count <= 1024:
        raise ConfigError(f"subscribers[{index}].max_in_flight", f"{count} is not in 1..1024")
    return count


def local_url(host: str, port: int) -> str:
    """`http://host:port` as a client on this machine reaches it (a wildcard host is loopback)."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104  # naming the wildcard, not binding it
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    key: Secret


@dataclass(frozen=True, slots=True)
class Channel:
    id: str
    provider: str
    portfolio: str
    business_phone: str | None = None
    secrets: Mapping[str, Secret] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    send_by: Literal["auto", "bsuid", "phone"] = "auto"
    service_window: Literal["enforce", "warn", "off"] = "enforce"

    def secret(self, name: str) -> str:
        """The revealed secret `name`, or "" when the channel has none."""
        value = self.secrets.get(name)
        return value.reveal() if value is not None else ""

    def as_scope(self) -> dict[str, Any]:
        """What mapping expressions see as `channel` (no secrets)."""
        return {
            "id": self.id,
            "provider": self.provider,
            "portfolio": self.portfolio,
            "business_phone": self.business_phone,
            "settings": dict(self.settings),
        }


@dataclass(frozen=True, slots=True)
class Subscriber:
    id: str
    url: str
    secret: Secret
    events: tuple[str, ...] = ("whatsapp.*",)
    channels: tuple[str, ...] = ("*",)
    require_phone: bool = False
    ordering: Literal["per_contact", "none"] = "per_contact"
    retry_schedule: tuple[float, ...] = ()
    timeout: float = 10.0
    hold_for: float = 30 * 86400.0  # require_phone: how long an event waits for a phone
    disable_after: float = 86400.0  # every delivery failing this long disables the subscriber
    max_in_flight: int = 32  # concurrent deliveries to this subscriber (its lane's slots)
    secrets: tuple[Secret, ...] = ()  # every signing key during a rotation (secret: the first)
    rate: float | None = None  # deliveries per second (token bucket), None: unlimited
    rate_text: str | None = None  # the rate as configured (`50/s`)
    filter: Filter | None = None  # conditions on canonical paths (delivery/filter.py)
    allow_link_local: bool = False  # link-local / cloud metadata addresses stay refused
    batch_max: int = 0  # > 0: batch delivery (application/cloudevents-batch+json), events per POST
    batch_wait: float = 0.2  # how long a batch waits to fill

    def secret_values(self) -> tuple[str, ...]:
        """Every signing key, revealed, in config order (one signature each)."""
        keys = self.secrets or (self.secret,)
        return tuple(key.reveal() for key in keys)


@dataclass(frozen=True, slots=True)
class Settings:
    storage: str
    mapping_dirs: tuple[Path, ...]  # shipped mappings first; later folders add or override
    server: ServerSettings
    api_keys: tuple[ApiKey, ...]
    channels: tuple[Channel, ...]
    subscribers: tuple[Subscriber, ...]
    source: Path | None = None
    console: bool = True  # the operator console at /console (`console: false` turns it off)
    retention: Retention = field(default_factory=lambda: Retention())
    # dotted key -> the variables of its `${NAME:-default}` references that were unset (the
    # value holds their defaults) or set to a `dev-` value (`serve` names them when refusing
    # development credentials)
    env_defaults: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def mappings_dir(self) -> Path:
        """The last mappings folder (the config's own, else the shipped one)."""
        return self.mapping_dirs[-1]

    def channel(self, channel_id: str) -> Channel | None:
        """The channel with this id, or None."""
        for channel in self.channels:
            if channel.id == channel_id:
                return channel
        return None

    def to_public_dict(self) -> dict[str, Any]:
        """The resolved config with secrets masked, as `bspgate config check` prints it."""

        def mask(value: Secret) -> str:
            return "**********" if value else ""

        return {
            "storage": mask_url(self.storage),
            "mappings": [str(path) for path in self.mapping_dirs],
            "server": {
                "host": self.server.host,
                "port": self.server.port,
                "public_url": self.server.public_url,
                "max_body_bytes": self.server.max_body_bytes,
            },
            "api_keys": [{"name": k.name, "key": mask(k.key)} for k in self.api_keys],
            "console": self.console,
            "channels": [
                {
                    "id": c.id,
                    "provider": c.provider,
                    "portfolio": c.portfolio,
                    "business_phone": c.business_phone,
                    "secrets": {name: mask(value) for name, value in c.secrets.items()},
                    "settings": public_settings(c.settings),
                    "send_by": c.send_by,
                    "service_window": c.service_window,
                }
                for c in self.channels
            ],
            "subscribers": [
                {
                    "id": s.id,
                    "url": mask_url(s.url),
                    "secret": [mask(key) for key in s.secrets]
                    if len(s.secrets) > 1
                    else mask(s.secret),
                    "events": list(s.events),
                    "channels": list(s.channels),
                    "require_phone": s.require_phone,
                    "ordering": s.ordering,
                    "retry_schedule": list(s.retry_schedule),
                    "timeout": s.timeout,
                    "max_in_flight": s.max_in_flight,
                    "rate": s.rate_text,
                    "filter": dict(s.filter.source) if s.filter else None,
                    "allow_link_local": s.allow_link_local,
                    "batch": {"max": s.batch_max, "wait": s.batch_wait} if s.batch_max else None,
                    "hold_for": s.hold_for,
                    "disable_after": s.disable_after,
                }
                for s in self.subscribers
            ],
        }


def public_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A channel's `settings` as shown: a value holding a URL has its credentials masked
    (`mask_url`: `user:****@`, `?access_token=****`), as a subscriber `url` is."""
    return {
        name: mask_url(value) if isinstance(value, str) and "://" in value else value
        for name, value in settings.items()
    }


def _is_secret_key(key: str) -> bool:
    # subscribers[0].secret, channels[1].secrets.app_secret, api_keys[0].key
    return (
        re.search(r"\.secret(\[[0-9]+\])?$", key) is not None
        or ".secrets." in key
        or (key.startswith("api_keys[") and key.endswith(".key"))
    )


def parse_duration(text: str) -> float:
    """`5s`, `30m`, `2h`, `1d`, `250ms` as seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _dotted(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# A Standard Webhooks key that signs nothing: stands in for an unset subscriber secret when a
# read-only command loads the config without every secret (`lenient=True`).
_PLACEHOLDER_WEBHOOK_SECRET = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"  # noqa: S105


def _interpolate(
    value: Any,
    path: tuple[Any, ...],
    env: Mapping[str, str],
    lenient: bool = False,
    defaulted: dict[str, tuple[str, ...]] | None = None,
) -> Any:
    """`value` with every `${NAME}` / `${NAME:-default}` replaced; `defaulted` collects, per
    dotted key, the names whose default was used (unset in `env`) or that are set to a
    development value (`dev-…`)."""
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), env, lenient, defaulted) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), env, lenient, defaulted) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def note(name: str) -> None:
        if defaulted is not None:
            key = _dotted(path)
            defaulted[key] = (*defaulted.get(key, ()), name)

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            if env[name].startswith("dev-"):
                note(name)  # set, but to a development value: the variable to change
            return env[name]
        if default is not None:
            note(name)
            return default
        key = _dotted(path)
        if lenient and _is_secret_key(key):
            if re.search(r"\.secret(\[\d+\])?$", key) is not None:
                return _PLACEHOLDER_WEBHOOK_SECRET
            if re.fullmatch(r"api_keys\[\d+\]\.key", key):
                # a key no one knows (read-only commands serve no API): the schema wants one
                return "unset-" + secrets.token_urlsafe(24)
            return ""
        raise ConfigError(key, f"environment variable {name} is not set")

    return _ENV_REF.sub(replace, value)


@cache
def _validator() -> jsonschema.Draft202012Validator:
    text = resources.files("bspgate").joinpath("config.schema.json").read_text()
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _known_keys(schema: dict[str, Any], path: Iterable[Any]) -> list[str]:
    """The property names the schema allows at `path` (for "did you mean" suggestions)."""
    node = schema
    for part in path:
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(part, {})
    return list(node.get("properties", {}))


def _unknown_key(error: jsonschema.ValidationError) -> ConfigError | None:
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
        return None
    schema: dict[str, Any] = dict(_validator().schema)  # type: ignore[arg-type]
    known = _known_keys(schema, error.absolute_path)
    for name in error.instance:
        if name not in known:
            key = _dotted((*error.absolute_path, name))
            near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(known)})"
            return ConfigError(key, f"unknown key {name!r}{hint}")
    return None


def _check_schema(data: Any) -> None:
    errors = list(_validator().iter_errors(data))
    if not errors:
        return
    for candidate in errors:
        unknown = _unknown_key(candidate)
        if unknown is not None:
            raise unknown
    error = jsonschema.exceptions.best_match(errors)
    assert error is not None
    key = _dotted(error.absolute_path)
    bad = error.instance if not isinstance(error.instance, dict | list) else None
    if isinstance(bad, str) and "://" in bad:
        bad = mask_url(bad)  # a DSN's password, a subscriber URL's credentials and token
    detail = f"{bad!r}: {error.message}" if bad is not None else error.message
    if isinstance(bad, str) and bad != error.instance:
        detail = f"{bad!r}: {error.validator} failed ({error.validator_value!r})"
    if error.validator == "pattern" and isinstance(bad, str):
        detail = f"{bad!r} does not match {error.validator_value}"
    if error.validator in ("pattern", "oneOf") and re.search(r"\.secret(\[[0-9]+\])?$", key):
        detail = "must be a Standard Webhooks secret: whsec_ + base64 (value not shown)"
    elif _is_secret_key(key):
        detail = f"{error.validator} failed: {error.validator_value!r} (value not shown)"
    raise ConfigError(key, detail)


def _check_webhook_secret(secret: str, key: str) -> None:
    # The schema checks the alphabet; the signer itself must accept the key (valid base64).
    try:
        if secret.startswith("whsk_"):
            from bspgate.delivery.asymmetric import private_key

            private_key(secret)
            return
        Webhook(secret)
    except Exception:  # binascii.Error, EmptyWebhookSecretError: the message would echo it
        raise ConfigError(
            key, "must be a Standard Webhooks secret: whsec_ + base64 (value not shown)"
        ) from None


def _unique(items: list[dict[str, Any]], section: str) -> None:
    seen: set[str] = set()
    for index, item in enumerate(items):
        if item["id"] in seen:
            raise ConfigError(f"{section}[{index}].id", f"{item['id']!r} is used twice")
        seen.add(item["id"])


def _channel(raw: dict[str, Any]) -> Channel:
    return Channel(
        id=raw["id"],
        provider=raw["provider"],
        portfolio=raw["portfolio"],
        business_phone=raw.get("business_phone"),
        secrets={k: Secret(v) for k, v in (raw.get("secrets") or {}).items()},
        settings=dict(raw.get("settings") or {}),
        send_by=raw.get("send_by", "auto"),
        service_window=raw.get("service_window", "enforce"),
    )


def _subscriber(raw: dict[str, Any], index: int, channel_ids: set[str]) -> Subscriber:
    for position, channel_id in enumerate(raw.get("channels", ["*"])):
        if channel_id != "*" and channel_id not in channel_ids:
            raise ConfigError(
                f"subscribers[{index}].channels[{position}]", f"{channel_id!r} is not a channel id"
            )
    keys = raw["secret"] if isinstance(raw["secret"], list) else [raw["secret"]]
    for position, key in enumerate(keys):
        where = f"subscribers[{index}].secret" + (
            f"[{position}]" if isinstance(raw["secret"], list) else ""
        )
        _check_webhook_secret(key, where)
    if raw.get("rate"):
        try:
            parse_rate(raw["rate"])
        except ValueError as exc:
            raise ConfigError(f"subscribers[{index}].rate", str(exc)) from None
    schedule = raw.get("retry_schedule", list(DEFAULT_RETRY_SCHEDULE))
    timeout = parse_duration(raw.get("timeout", "10s"))
    if timeout <= 0:  # aiohttp reads a total timeout of 0 as none: an attempt could hang forever
        raise ConfigError(
            f"subscribers[{index}].timeout", f"{raw['timeout']!r}: must be more than 0"
        )
    return Subscriber(
        id=raw["id"],
        url=raw["url"],
        secret=Secret(keys[0]),
        secrets=tuple(Secret(key) for key in keys),
        events=tuple(raw.get("events", ["whatsapp.*"])),
        channels=tuple(raw.get("channels", ["*"])),
        require_phone=bool(raw.get("require_phone", False)),
        ordering=raw.get("ordering", "per_contact"),
        retry_schedule=tuple(parse_duration(item) for item in schedule),
        timeout=timeout,
        hold_for=parse_duration(raw.get("hold_for", "30d")),
        disable_after=parse_duration(raw.get("disable_after", "24h")),
        max_in_flight=_in_flight(raw.get("max_in_flight", 32), index),
        rate=parse_rate(raw["rate"]) if raw.get("rate") else None,
        rate_text=raw.get("rate"),
        filter=compile_filter(raw["filter"], f"subscribers[{index}].filter")
        if "filter" in raw
        else None,
        allow_link_local=bool(raw.get("allow_link_local", False)),
        batch_max=int((raw.get("batch") or {}).get("max", 0)),
        batch_wait=parse_duration((raw.get("batch") or {}).get("wait", "200ms")),
    )


def _resolve_storage(dsn: str, base: Path) -> str:
    """A relative SQLite path, and relative PostgreSQL certificate files, against `base`."""
    if dsn.startswith("sqlite:///"):
        path = dsn[len("sqlite:///") :]
        if not path or path == ":memory:" or Path(path).is_absolute():
            return dsn
        return "sqlite:///" + str((base / path).resolve())

    def absolute(match: re.Match[str]) -> str:
        value = match.group(2)
        return match.group(1) + (value if Path(value).is_absolute() else str(base / value))

    return re.sub(r"((?:^|[?&])(?:sslrootcert|sslcert|sslkey|sslcrl)=)([^&]+)", absolute, dsn)


def _mapping_dirs(data: dict[str, Any], base: Path) -> tuple[Path, ...]:
    from bspgate.mapping.loader import shipped_mappings_dir

    extra = data.get("mappings") or []
    extra = [extra] if isinstance(extra, str) else list(extra)
    dirs = [shipped_mappings_dir().resolve()]
    for index, name in enumerate(extra):
        folder = (base / name).resolve()
        key = "mappings" if isinstance(data.get("mappings"), str) else f"mappings[{index}]"
        if not folder.is_dir():
            raise ConfigError(key, f"{name!r} is not a folder (resolved to {folder})")
        if (folder / "mapping.yaml").is_file():
            raise ConfigError(
                key,
                f"{name!r} is a provider folder (it holds mapping.yaml): name the folder that "
                f"holds provider folders ({folder.parent}), as the shipped mappings/ does",
            )
        if folder not in dirs:
            dirs.append(folder)
    return tuple(dirs)


def settings_from_dict(
    data: Any,
    *,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    known_mappings: Iterable[str] | None = None,
    source: Path | None = None,
    lenient: bool = False,
) -> Settings:
    """Validate a parsed config document (`known_mappings`: default, the mappings folders).

    Relative paths (`storage` SQLite file, `mappings` folders) resolve against `base_dir` (the
    config file's folder). `lenient`: an unset `${NAME}` in a secret is empty instead of an
    error (read-only commands need no secrets; they never verify or sign).
    """
    if not isinstance(data, dict):
        raise ConfigError("", "the config must be a YAML mapping (key: value) at the top level")
    env_defaults: dict[str, tuple[str, ...]] = {}
    data = _interpolate(data, (), os.environ if env is None else env, lenient, env_defaults)
    _check_schema(data)
    base = base_dir or Path.cwd()
    mapping_dirs = _mapping_dirs(data, base)
    if known_mappings is None:
        from bspgate.mapping.loader import mapping_names

        known_mappings = mapping_names(mapping_dirs)
    known = sorted(known_mappings)
    channels_raw: list[dict[str, Any]] = data.get("channels") or []
    subscribers_raw: list[dict[str, Any]] = data.get("subscribers") or []
    _unique(channels_raw, "channels")
    _unique(subscribers_raw, "subscribers")
    for index, raw in enumerate(channels_raw):
        if raw["provider"] not in known:
            near = difflib.get_close_matches(raw["provider"], known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(
                f"channels[{index}].provider",
                f"{raw['provider']!r} is not a known mapping "
                f"({hint}known: {', '.join(known) or 'none'})",
            )
    channel_ids = {raw["id"] for raw in channels_raw}
    server_raw = dict(data.get("server") or {})
    for key, low, high in (("port", 0, 65535), ("max_body_bytes", 1024, 104_857_600)):
        # ${ENV} references arrive as text: digits are accepted, then range-checked here
        if isinstance(server_raw.get(key), str):
            server_raw[key] = int(server_raw[key])
            if not low <= server_raw[key] <= high:
                raise ConfigError(f"server.{key}", f"{server_raw[key]} is not in {low}..{high}")
    public_url_set = "public_url" in server_raw
    server = ServerSettings(**server_raw, public_url_set=public_url_set)
    if not public_url_set:
        server = server.serving(None, None)
    from bspgate.retention import retention_from_dict

    return Settings(
        storage=_resolve_storage(data.get("storage", "sqlite:///bspgate.db"), base),
        mapping_dirs=mapping_dirs,
        server=server,
        api_keys=tuple(ApiKey(k["name"], Secret(k["key"])) for k in data.get("api_keys") or []),
        channels=tuple(_channel(raw) for raw in channels_raw),
        subscribers=tuple(
            _subscriber(raw, i, channel_ids) for i, raw in enumerate(subscribers_raw)
        ),
        source=source,
        console=bool(data.get("console", True)),
        retention=retention_from_dict(data.get("retention") or {}),
        env_defaults=env_defaults,
    )


def default_config_path() -> Path:
    """`$BSPGATE_CONFIG`, else ./config.yaml."""
    return Path(os.environ.get("BSPGATE_CONFIG", "config.yaml"))


def load_settings(
    path: Path | None = None, *, env: Mapping[str, str] | None = None, lenient: bool = False
) -> Settings:
    """Read, interpolate and validate a config file (`lenient`: see `settings_from_dict`)."""
    path = path or default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {_first_line(exc)}") from exc
    return settings_from_dict(
        data, env=env, base_dir=path.resolve().parent, source=path, lenient=lenient
    )


def _first_line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}: {problem}" if mark is not None else str(problem)
