"""The named transforms a mapping file may call inside its JMESPath expressions.

Each function is registered under the name mapping files use (`e164(msg.from)`), like jsonschema's
keyword table. They are pure, total on `null` (a missing field gives `null`, never an error), and
the only place provider-independent formats are decided: phones become E.164, BSUIDs are kept
verbatim minus a channel prefix, times become RFC 3339 UTC. `bsuid()` is the one function that
raises: a value that is neither a phone nor a valid BSUID must quarantine the payload, not pass.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from bspgate.describe import token
from bspgate.errors import MappingError
from bspgate.identity.identifiers import BSUID_RE  # the one BSUID definition

# canonical v1.1: a phone is `+` and 1-15 digits once the channel prefix and typed separators go
_PHONE_RE = re.compile(r"^\+?[0-9]{1,15}$")
_PHONE_NOISE = re.compile(r"[\s().-]")
_CHANNEL_PREFIXES = ("whatsapp:", "bsuid:")
_MS_THRESHOLD = 100_000_000_000  # epoch values above this are milliseconds (year 5138 in seconds)


def _strip_channel(value: str) -> str:
    for prefix in _CHANNEL_PREFIXES:
        if value.startswith(prefix):
            return value[len(prefix) :]
    return value


def is_bsuid(value: object) -> bool:
    """True when `value` is a well-formed BSUID (or parent BSUID), used whole."""
    return isinstance(value, str) and BSUID_RE.match(value) is not None


def e164(value: Any) -> str | None:
    """A phone in any provider spelling (`15551234567`, `whatsapp:+1 555…`) as `+15551234567`.

    A BSUID-shaped value, an empty string or anything that is not a phone gives `null`: a BSUID in
    a phone field is a BSUID, never a phone.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    return _e164_text(value)


@lru_cache(maxsize=8192)
def _e164_text(value: str) -> str | None:
    # The same few phones recur in every webhook of a conversation: normalize each once.
    text = _PHONE_NOISE.sub("", _strip_channel(value.strip()))
    if not _PHONE_RE.match(text):
        return None
    return "+" + text.lstrip("+")


def bsuid(value: Any) -> str | None:
    """A BSUID with any channel prefix (`whatsapp:`, `bsuid:`) removed, otherwise verbatim.

    `null`, `""` and phone numbers give `null` (the field simply holds no BSUID). Anything else
    raises `NotAnIdentifier`, so the payload is quarantined instead of mis-keyed. The error never
    holds the value (it may be a mistyped phone): only its JSON type and a shape summary.
    """
    if value is None or value is False:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if e164(value) is not None:
            return None
        raise NotAnIdentifier(describe_value(value))
    if not isinstance(value, str):
        raise NotAnIdentifier(describe_value(value))
    found = _bsuid_text(value)
    if found is _INVALID:
        raise NotAnIdentifier(describe_value(value))
    return found


def phone(value: Any) -> str | None:
    """A phone as `e164()` gives it, for a contact's phone field: a BSUID (it belongs in the
    BSUID field), `null` and `""` give `null`; anything else raises `NotAnIdentifier` (canonical
    §1: a value that is neither a phone nor a BSUID is quarantined, also beside a valid BSUID)."""
    found = e164(value)
    if found is None:
        bsuid(value)  # raises for a value that is not a BSUID either
    return found


class NotAnIdentifier(MappingError):
    """A value in an identifier field that is neither a phone nor a BSUID (canonical §1, v1.1).

    The message describes the value without holding it (`a string of 3 characters (letters)`):
    the value may be a mistyped phone, and reasons are shown to operators. The engine adds the
    payload path it came from, so a reason reads `a string of 3 characters (letters) in msg.from
    is neither a phone nor a BSUID`.
    """

    def __init__(self, value_shape: str, where: str | None = None) -> None:
        self.value_shape = value_shape
        self.where = where
        place = f" in {where}" if where else ""
        super().__init__(f"{value_shape}{place} is neither a phone nor a BSUID")

    def at(self, where: str) -> NotAnIdentifier:
        """The same error, naming the payload path it came from."""
        return NotAnIdentifier(self.value_shape, where)


def describe_value(value: Any) -> str:
    """A PII-free description of a value: its JSON type, size and character classes."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        digits = len(str(abs(int(value)))) if isinstance(value, int) else 0
        return f"a number of {digits} digits" if digits else "a number"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    if not value.strip():
        return f"a string of {len(value)} blank characters"
    kinds = []
    if any(c.isdigit() for c in value):
        kinds.append("digits")
    if any(c.isalpha() for c in value):
        kinds.append("letters")
    if any(not c.isalnum() for c in value):
        kinds.append("other characters")
    return f"a string of {len(value)} characters ({', '.join(kinds)})"


_INVALID = "\x00invalid"


@lru_cache(maxsize=8192)
def _bsuid_text(value: str) -> str | None:
    # Cached like phones; an invalid value is cached as a marker, the error raised by the caller.
    text = _strip_channel(value.strip())
    if text == "" or _e164_text(text) is not None:
        return None
    if BSUID_RE.match(text) is None:
        return _INVALID
    return text


def strip_prefix(value: Any, prefix: Any) -> Any:
    """`value` without a leading `prefix` (unchanged when it has none or is not a string)."""
    if isinstance(value, str) and isinstance(prefix, str) and value.startswith(prefix):
        return value[len(prefix) :]
    return value


def lower(value: Any) -> Any:
    """Lower-cased string; other values unchanged."""
    return value.lower() if isinstance(value, str) else value


def upper(value: Any) -> Any:
    """Upper-cased string; other values unchanged."""
    return value.upper() if isinstance(value, str) else value


def nonempty(value: Any) -> Any:
    """`null` for an empty string, list or object; the value otherwise."""
    return None if value in ("", [], {}) else value


def _format(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_to_rfc3339(value: Any) -> str | None:
    """Unix time in seconds or milliseconds (number or string) as RFC 3339 UTC."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return _epoch_text(value)
    return _epoch(value)


@lru_cache(maxsize=4096)
def _epoch_text(value: str) -> str:
    # Payloads repeat their timestamps (event time, message time): formatting is the cost.
    return _epoch(value)


def _epoch(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MappingError(f"not a unix timestamp: {token(value)}") from None
    if number > _MS_THRESHOLD:
        number /= 1000
    try:
        return _format(datetime.fromtimestamp(number, UTC))
    except (OverflowError, OSError, ValueError):
        raise MappingError(f"timestamp out of range: {token(value)}") from None


_OFFSET_NO_COLON = re.compile(r"([+-]\d{2})(\d{2})$")
_LONG_FRACTION = re.compile(r"(\.\d{6})\d+")


def to_rfc3339(value: Any) -> str | None:
    """ISO 8601 with any offset (`+0000`, `+00:00`, `Z`, 7-digit fractions) as RFC 3339 UTC."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return epoch_to_rfc3339(value)
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    text = _LONG_FRACTION.sub(r"\1", _OFFSET_NO_COLON.sub(r"\1:\2", text))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MappingError(f"not an ISO 8601 time: {token(value)}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _format(moment)


def find_first(items: Any, key: Any, wanted: Any) -> Any:
    """The first object of `items` whose `key` equals `wanted` (`null` if none or no `wanted`)."""
    if wanted is None or not isinstance(items, list):
        return None
    for item in items:
        if isinstance(item, dict) and item.get(key) == wanted:
            return item
    return None


def entry_for(items: Any, criteria: Any, subjects: Any) -> Any:
    """The entry of `items` that `criteria` (`{key: wanted, …}`) describes, or `null`.

    The first object sharing any non-null criterion. `subjects` is the list the entries are
    about (such as the change's `statuses`; `null` for none): when both lists hold exactly one
    item, the one entry is also taken without a shared criterion (Meta's status `contacts[]` is
    the recipient's, and omits `wa_id` for BSUID sends). A change holding statuses for several
    people says nothing about whose its one entry is, so there an entry must share an
    identifier. Never an object that contradicts a criterion (a key both carry with different
    values): a mismatched entry must not pair a stranger's identifiers.
    """
    if not isinstance(items, list) or not isinstance(criteria, dict):
        return None
    wanted = {k: v for k, v in criteria.items() if v is not None and v != ""}
    entries = [item for item in items if isinstance(item, dict)]

    def contradicts(item: dict[str, Any]) -> bool:
        return any(item.get(k) not in (None, "", v) for k, v in wanted.items())

    alone = isinstance(subjects, list) and len(subjects) == 1
    if alone and len(items) == 1 and len(entries) == 1 and not contradicts(entries[0]):
        return entries[0]
    for item in entries:
        if any(item.get(k) == v for k, v in wanted.items()) and not contradicts(item):
            return item
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def contact_cards(cards: Any) -> list[dict[str, Any]] | None:
    """Meta's `contacts` message content as canonical cards (v1.1 `data.message.contacts`).

    Each card is `{name, phones: [{phone, wa_id, type}], origin}`: `name` the formatted name (or
    the first and last names), `phone` E.164 via `e164()` (the card's phone, else its wa_id; null
    when neither is a phone), `origin` `contact_request` when the person shared their own number
    answering a request, `other` for any other origin Meta names, null when it names none. Items
    that are not objects are skipped; no card gives `null`. BSPs that pass the card on in their
    own spelling (Infobip: `formattedName`, `firstName`, `lastName`, `waId`) are read alike.
    """
    if not isinstance(cards, list):
        return None
    out: list[dict[str, Any]] = []
    for card in cards:
        if not isinstance(card, dict):
            continue
        name = card.get("name")
        if isinstance(name, dict):
            first = _text(name.get("first_name")) or _text(name.get("firstName"))
            last = _text(name.get("last_name")) or _text(name.get("lastName"))
            formatted = _text(name.get("formatted_name")) or _text(name.get("formattedName"))
            full = formatted or " ".join(p for p in (first, last) if p) or None
        else:
            full = _text(name)
        phones = []
        listed = card.get("phones")
        for entry in listed if isinstance(listed, list) else []:
            if not isinstance(entry, dict):
                continue
            wa_id = entry.get("wa_id", entry.get("waId"))
            wa_text = str(wa_id) if isinstance(wa_id, int | str) and wa_id != "" else None
            phones.append(
                {
                    "phone": e164(entry.get("phone")) or e164(wa_text),
                    "wa_id": wa_text,
                    "type": _text(entry.get("type")),
                }
            )
        origin = card.get("origin")
        if origin is not None and origin != "":
            origin = "contact_request" if origin == "contact_request" else "other"
        else:
            origin = None
        out.append({"name": full, "phones": phones, "origin": origin})
    return out or None


def join_key(*parts: Any) -> str | None:
    """The non-null parts as strings joined by `:` (an event key such as `wamid…:delivered`)."""
    texts = [str(part) for part in parts if part is not None and part != ""]
    return ":".join(texts) if texts else None


def as_string(value: Any) -> str | None:
    """Numbers and strings as a string (error codes arrive as both); `null` stays `null`."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return None


def as_number(value: Any) -> float | int | None:
    """A number from a number or a numeric string (form fields carry latitudes as text)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip():
        try:
            return float(value)
        except ValueError:
            return None
    return None


def get_ci(obj: Any, name: Any) -> Any:
    """The value of `obj`'s key equal to `name` ignoring letter case (exact spelling first).

    For providers whose key spelling is unsettled: Azure's `fromBSUID` / `fromBSUId`,
    `receivedTimestamp` / `receivedTimeStamp` (docs/provider-evidence.md §5).
    """
    if not isinstance(obj, dict) or not isinstance(name, str):
        return None
    if name in obj:
        return obj[name]
    wanted = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == wanted:
            return value
    return None


def split_part(value: Any, separator: Any, index: Any) -> str | None:
    """Part `index` (0-based) of `value` split on `separator`; `null` when there is none.

    Reads ids out of structured strings, e.g. the sender in Event Grid's
    `advancedMessage/sender/{sender}/recipient/{id}` subject.
    """
    if not isinstance(value, str) or not isinstance(separator, str) or not separator:
        return None
    if not isinstance(index, int | float) or isinstance(index, bool):
        return None
    parts = value.split(separator)
    position = int(index)
    if not -len(parts) <= position < len(parts):
        return None
    return parts[position] or None


def digest(*parts: Any) -> str:
    """A stable 32-hex-digit SHA-256 of the parts (as canonical JSON).

    The event key and message id for providers whose webhooks carry no message id (Connectly
    inbound): the same webhook retried gives the same digest, so it dedupes like a real id.
    """
    text = orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(text).hexdigest()[:32]


# name -> (callable, minimum argument count, maximum or None for variadic)
REGISTRY: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "e164": (e164, 1, 1),
    "phone": (phone, 1, 1),
    "bsuid": (bsuid, 1, 1),
    "strip_prefix": (strip_prefix, 2, 2),
    "lower": (lower, 1, 1),
    "upper": (upper, 1, 1),
    "nonempty": (nonempty, 1, 1),
    "epoch_to_rfc3339": (epoch_to_rfc3339, 1, 1),
    "to_rfc3339": (to_rfc3339, 1, 1),
    "find_first": (find_first, 3, 3),
    "entry_for": (entry_for, 3, 3),
    "contact_cards": (contact_cards, 1, 1),
    "join_key": (join_key, 1, None),
    "as_string": (as_string, 1, 1),
    "as_number": (as_number, 1, 1),
    "get_ci": (get_ci, 2, 2),
    "split_part": (split_part, 3, 3),
    "digest": (digest, 1, None),
}
