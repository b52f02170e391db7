"""``expman logs``: a run's logs, of its newest attempt or an earlier one, followed while it runs."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from rich.console import Console

from ..backends import control
from ..errors import UsageError
from ..rundir.layout import RunDir, find_run
from ..rundir.record import RunRecord, load_record
from .common import Commands, add_runs_root, runs_root

_FOLLOW_POLL_S = 0.25


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser("logs", help="print a run's logs")
    add_runs_root(p)
    p.add_argument("run", nargs="?", help="run id or unique prefix (default: the newest run)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")
    p.add_argument("--stream", choices=("all", "stdout", "stderr", "build"), default="all")
    p.add_argument("--attempt", type=int, metavar="N", help="the logs of attempt N (default: the newest)")
    p.set_defaults(handler=cmd_logs)


def cmd_logs(args: argparse.Namespace, console: Console) -> int:
    run = find_run(runs_root(args), args.run)
    record = load_record(run)
    newest = args.attempt is None or args.attempt == _attempts(record)[-1]
    if record.remote is not None and not record.remote.get("synced_at"):  # ended or not, fetch it first
        if newest and args.follow and control.follow(run, os.environ):  # streams as it arrives, then syncs
            return 0
        control.sync(run, os.environ)  # the logs so far (all of them, if it has ended)
    folder = run.logs if newest else _earlier_attempt_logs(run, record, args.attempt)
    names = {"stdout": [run.stdout_log.name], "stderr": [run.stderr_log.name], "build": [run.build_log.name]}
    paths = [folder / name for name in names.get(args.stream) or [run.stdout_log.name, run.stderr_log.name]]
    offsets = {p: 0 for p in paths}
    while True:
        final = not newest or load_record(run).final
        for path in paths:
            offsets[path] = _copy_new_bytes(path, offsets[path], _target(path, run))
        if not args.follow or final:
            return 0
        time.sleep(_FOLLOW_POLL_S)


def _attempts(record: RunRecord) -> list[int]:
    """The numbers of the run's attempts, oldest first; a run that never had more has one."""
    return [int(a["attempt"]) for a in record.attempts] or [1]


def _earlier_attempt_logs(run: RunDir, record: RunRecord, attempt: int) -> Path:
    numbers = _attempts(record)
    if attempt not in numbers:
        listed = ", ".join(map(str, numbers))
        raise UsageError(f"run {run.run_id} has attempts {listed}; give --attempt one of them (default: the newest)")
    return run.attempt_logs(attempt)


def _target(path: Path, run: RunDir) -> BinaryIO:
    return sys.stderr.buffer if path.name == run.stderr_log.name else sys.stdout.buffer


def _copy_new_bytes(path: Path, offset: int, target: Any) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    target.write(data)
    target.flush()
    return offset + len(data)
