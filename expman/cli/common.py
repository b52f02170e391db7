"""What the commands share: options (runs root, queue, repository, --offline, --where), the
one runs-root lookup, JSON for scripts, and the consoles."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console

from ..errors import ExpmanError, UsageError
from ..rundir.layout import RUNS_ROOT_VARIABLE, resolve_runs_root

if TYPE_CHECKING:
    from ..queue import Queue

Commands = argparse._SubParsersAction  # type: ignore[type-arg]


def add_repo(parser: argparse.ArgumentParser, shown: bool = True) -> None:
    help = "the experiment repository (default: .)" if shown else argparse.SUPPRESS
    parser.add_argument("-C", "--repo", type=Path, default=Path("."), help=help)


def add_runs_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs-root",
        type=Path,
        help="default: EXPMAN_RUNS_ROOT, config.json's runs_root, or ~/.local/share/expman/runs",
    )
    add_repo(parser, shown=False)


def add_queue(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--queue",
        metavar="URL",
        help="sqlite:///path or postgresql://user@host/db (default: EXPMAN_QUEUE, else queue.sqlite in runs_root)",
    )


def add_offline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--offline", action="store_true", help="show the status as last recorded; do not ask hosts or Slurm"
    )


def add_where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COND",
        help="key=value, key!=value, key<value, key>value, key<=value, key>=value on config, results or "
        "record (repeatable)",
    )


def add_selection(parser: argparse.ArgumentParser) -> None:
    """--status (default succeeded), --commit and --branch: which runs a table or plot uses."""
    from ..rundir.record import RunStatus

    parser.add_argument(
        "--status",
        choices=list(RunStatus),
        action="append",
        help=f"runs with this status (repeatable; default {RunStatus.SUCCEEDED})",
    )
    parser.add_argument("--commit", help="only runs of commits starting with this")
    parser.add_argument("--branch", help="only runs of this branch")


def add_seed_keys(parser: argparse.ArgumentParser, pool: bool = True) -> None:
    """--seed-keys (and --pool): what a cell or a point aggregates over."""
    from ..results.options import DEFAULT_SEED_KEYS

    parser.add_argument(
        "--seed-keys",
        action="append",
        metavar="GLOB",
        help=f"keys pooled as seeds (default {', '.join(DEFAULT_SEED_KEYS)})",
    )
    if pool:
        parser.add_argument("--pool", action="append", default=[], metavar="KEY", help="also pool runs over this key")


def scalar_stats_named(names: Sequence[str]) -> tuple[str, ...]:
    """The statistics of the scalars (tb:TAG:STAT) that ``names`` mention, so that event files
    are read only when a name asks for one."""
    stats = {m.group(1) for name in names for m in re.finditer(r"tb:.*:([a-z_0-9]+)", name)}
    return tuple(sorted(stats))


def runs_root(args: argparse.Namespace) -> Path:
    """--runs-root, else EXPMAN_RUNS_ROOT, else runs_root from the repository's config.json
    (the work tree's: looking at runs needs no clean tree), else the default data dir."""
    if getattr(args, "runs_root", None):
        return Path(args.runs_root).expanduser().absolute()
    if os.environ.get(RUNS_ROOT_VARIABLE):
        return resolve_runs_root(None, None, os.environ)
    from ..experiment.config import CONFIG_FILE, SECTION  # here: listing commands start faster
    from ..experiment.git import find_repository

    configured, repo = None, None
    try:
        repo = find_repository(args.repo)
        section = json.loads((repo / CONFIG_FILE).read_text()).get(SECTION, {})
        configured = section.get("runs_root") if isinstance(section, dict) else None
    except (ExpmanError, OSError, ValueError):
        pass
    return resolve_runs_root(configured, repo, os.environ)


def open_queue_of(args: argparse.Namespace, root: Path) -> Queue:
    from ..queue import open_queue, queue_url  # here: commands without a queue start faster

    return open_queue(queue_url(args.queue, root, os.environ))


def existing_queue(url: str) -> Queue:
    """The queue at ``url``, to change jobs already in it: one that was never made is an error,
    and is not made."""
    from ..queue import open_queue

    queue = open_queue(url, create=False)
    if not queue.exists():
        queue.close()
        raise UsageError(f"no queue at {queue.shown} yet; 'expman schedule' makes it (or pass --queue URL)")
    return queue


def emit_json(data: Any) -> None:
    """``--format json``: orjson's bytes straight to stdout. Rich's pretty-printer took a minute
    and 3 GB for 10,000 runs; a script needs no colours or wrapping."""
    options = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
    try:
        text = orjson.dumps(data, option=options)
    except orjson.JSONEncodeError:  # an integer past 64 bits: JSON allows it, orjson does not
        text = (json.dumps(data, indent=2) + "\n").encode()
    sys.stdout.flush()
    sys.stdout.buffer.write(text)
    sys.stdout.buffer.flush()


def error_console() -> Console:
    """stderr, never hard-wrapped: a message piped to a log stays one line whatever its length."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    error_console().print(f"expman: warning: {message}", markup=False, style="yellow")
