"""Patterns that pick metrics out of a program's stdout, as patas writes them.

The "parse" object of the expman section maps a result name to a regular expression;
``@float@`` and ``@int@`` stand for a number. Checked when config.json is loaded; applied
by ``results.stdout``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import ConfigError

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
