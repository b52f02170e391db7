"""Keep secrets out of everything expman writes or prints.

Three layers: the environment is captured by allowlist (plus EXPMAN_*); URLs lose their
credentials; any text (records, logs, labels, container env) has token-shaped strings and
the exact values of this environment's secret-named variables replaced.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"

ENV_ALLOWLIST = frozenset(
    {
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "SHELL",
        "TERM",
        "USER",
        "LOGNAME",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "PYTHONHASHSEED",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "CONDA_DEFAULT_ENV",
        "DOCKER_HOST",
        "SLURM_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_RESTART_COUNT",
        "SLURM_CLUSTER_NAME",
    }
)
_SECRET_NAME = re.compile(
    r"token|passw(or)?d|pwd|secret|credential|auth|api[_-]?key|private[_-]?key|access[_-]?key|(^|_)key$|cookie|session",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"gh[pousr]_[A-Za-z0-9]{1,}"  # GitHub tokens, any length: even a short one is a token
    r"|github_pat_[A-Za-z0-9_]+"
    r"|glpat-[A-Za-z0-9_-]{10,}"
    r"|hf_[A-Za-z0-9]{10,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|sk-[A-Za-z0-9_-]{20,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
_MIN_SECRET_LENGTH = 4
_SHELL_VARIABLES = frozenset({"PWD", "OLDPWD"})  # the working directories, not passwords ("pwd")
_ABSOLUTE_PATH = re.compile(r"/\S*")


class Redactor:
    """Redacts text given the environment whose secret values must never be written.

    A path stays a path: a secret-named variable whose value is an absolute path that exists
    here (an agent's socket, an X authority file) names where a secret is, it is not one, and
    replacing it everywhere would blank out every path under it. A value that only looks like
    a path (a base64 key may begin with "/") is still a secret."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        secrets = {v for k, v in environ.items() if is_secret_name(k) and _may_be_secret(v)}
        # Longest first, so a secret containing another is replaced whole.
        self._secret_values = sorted(secrets, key=len, reverse=True)

    def text(self, text: str) -> str:
        for value in self._secret_values:
            text = text.replace(value, REDACTED)
        text = _URL_CREDENTIALS.sub(lambda m: m.group("scheme"), text)
        return _SECRET_VALUE.sub(REDACTED, text)

    def value(self, name: str, value: str) -> str:
        return REDACTED if is_secret_name(name) else self.text(value)

    def environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The allowlisted variables (and EXPMAN_*), values redacted."""
        kept = {k: v for k, v in environ.items() if k in ENV_ALLOWLIST or k.startswith("EXPMAN_")}
        return {k: self.value(k, v) for k, v in sorted(kept.items())}

    def argv(self, argv: list[str]) -> list[str]:
        return [self.text(a) for a in argv]


def is_secret_name(name: str) -> bool:
    return name not in _SHELL_VARIABLES and bool(_SECRET_NAME.search(name))


def _may_be_secret(value: str) -> bool:
    return len(value) >= _MIN_SECRET_LENGTH and not (_ABSOLUTE_PATH.fullmatch(value) and os.path.exists(value))


def strip_url_credentials(url: str) -> str:
    """https://user:token@host/repo -> https://host/repo; scp-like git@host:repo is kept."""
    parts = urlsplit(url)
    if parts.scheme and parts.netloc and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url
