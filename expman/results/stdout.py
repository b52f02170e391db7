"""Metrics from the stdout of unmodified programs, as patas parses them.

Patterns are compiled by ``experiment.patterns``. The value is the pattern's first group (the
whole match when it has none) in the last line that matches; named groups give one value
each, as ``name.group``. Numbers become int or float, anything else stays a string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..experiment.patterns import INT


def extract(text: str, patterns: Mapping[str, re.Pattern[str]]) -> dict[str, Any]:
    """Flat name -> value of every pattern that matches somewhere in ``text``."""
    found: dict[str, Any] = {}
    for name, regex in patterns.items():
        last = next(reversed(list(regex.finditer(text))), None) if regex.search(text) else None
        if last is None:
            continue
        if regex.groupindex:
            for group, value in last.groupdict().items():
                if value is not None:
                    found[f"{name}.{group}"] = to_number(value)
        else:
            found[name] = to_number(last.group(1) if regex.groups else last.group(0))
    return found


def to_number(text: str) -> Any:
    text = text.strip()
    if re.fullmatch(INT, text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text
