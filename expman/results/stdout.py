"""Metrics from the stdout of unmodified programs, as patas parses them.

The "parse" object of the expman section maps a result name to a regular expression;
``@float@`` and ``@int@`` stand for a number. The value is the pattern's first group (the
whole match when it has none) in the last line that matches; named groups give one value
each, as ``name.group``. Numbers become int or float, anything else stays a string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from expman.errors import ConfigError

FLOAT = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[nN]a[nN]|[iI]nf(?:inity)?)"
INT = r"[-+]?\d+"
_PLACEHOLDERS = {"@float@": FLOAT, "@int@": INT}


def compile_patterns(patterns: Mapping[str, str]) -> dict[str, re.Pattern[str]]:
    """Each pattern compiled, placeholders expanded; a ConfigError names a bad one."""
    compiled = {}
    for name, pattern in patterns.items():
        expanded = pattern
        for placeholder, regex in _PLACEHOLDERS.items():
            expanded = expanded.replace(placeholder, regex)
        try:
            compiled[name] = re.compile(expanded)
        except re.error as exc:
            raise ConfigError(f"expman.parse.{name}: {pattern!r} is not a regular expression ({exc})") from None
    return compiled


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
