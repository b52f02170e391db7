"""Set one value in a JSON text and keep the rest of the text as it was.

Rewriting a parsed document would reflow the whole file (an object kept on one line by
hand spread over many, numbers respelled), so a diff of a one-value change would show the
whole file. Instead the value's span is found with the json module's own scanner and only
that span is replaced; a new key goes after the last member of its object, on a line of its
own indented as the object's first member when the members are one per line, else after
", " on the same line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class _Object:
    """Where an object's parts are in the text: each key's value span, the last value's end,
    the closing brace, and the whitespace before the first key."""

    members: dict[str, tuple[int, int]]
    last_end: int | None
    close: int
    lead: str


def set_value(text: str, path: Sequence[str], value: Any) -> str:
    """``text`` (a JSON object) with the value at ``path`` (keys from the top) set to
    ``value``: replaced where it stands, or added with any objects on the way to it."""
    found = _object_at(text, _skip(text, 0))
    for depth, key in enumerate(path):
        span = found.members.get(key)
        if span is None:
            return _insert(text, found, key, _nest(path[depth + 1 :], value))
        if depth == len(path) - 1 or text[span[0]] != "{":
            return text[: span[0]] + _dumps(_nest(path[depth + 1 :], value)) + text[span[1] :]
        found = _object_at(text, span[0])
    raise ValueError("an empty path names no value")


def _object_at(text: str, start: int) -> _Object:
    """The object whose "{" is at ``start``. A key given twice counts once, with its last value,
    as json.loads reads it."""
    members: dict[str, tuple[int, int]] = {}
    index = _skip(text, start + 1)
    lead, last_end = text[start + 1 : index], None
    while text[index] != "}":
        key, index = _DECODER.raw_decode(text, index)
        index = _skip(text, _skip(text, index) + 1)  # past the ":"
        _, last_end = _DECODER.raw_decode(text, index)
        members[key] = (index, last_end)
        index = _skip(text, last_end)
        if text[index] == ",":
            index = _skip(text, index + 1)
    return _Object(members, last_end, index, lead)


def _insert(text: str, found: _Object, key: str, value: Any) -> str:
    member = f"{_dumps(key)}: {_dumps(value)}"
    if found.last_end is None:
        return text[: found.close] + member + text[found.close :]
    separator = found.lead if "\n" in found.lead else " "
    return text[: found.last_end] + "," + separator + member + text[found.last_end :]


def _nest(keys: Sequence[str], value: Any) -> Any:
    for key in reversed(keys):
        value = {key: value}
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _skip(text: str, index: int) -> int:
    match = _SPACE.match(text, index)
    return match.end() if match else index
