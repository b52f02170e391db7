"""``expman search``: steer a search of config.json's "search" section over the job queue
(``--show``: where its studies stand); ``expman lineage``: a population's family tree."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from rich.console import Console

from ..backends import BACKENDS
from ..errors import UsageError
from .common import Commands, add_queue, add_repo, add_runs_root, emit_json, error_console, runs_root

TOP = 10


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser("search", help="search the space in config.json's search section, point by point")
    p.add_argument("--commit-hash", metavar="REF", help="commit to search with (hash, short hash, tag); default HEAD")
    p.add_argument("--backend", choices=sorted(b for b in BACKENDS if b != "slurm"), help="how workers run points")
    p.add_argument("--host", help="ssh backend: a host named in expman.hosts")
    add_queue(p)
    p.add_argument("--detach", action="store_true", help="steer in the background; its log goes under runs_root")
    p.add_argument("--show", action="store_true", help="where the search's studies stand (nothing is queued)")
    p.add_argument("--study", metavar="NAME", help="--show: this study (default: those of the commit's search)")
    p.add_argument("--top", type=int, default=TOP, metavar="K", help=f"--show: the K best points (default {TOP})")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--poll", type=float, default=1.0, metavar="S", help=argparse.SUPPRESS)
    add_repo(p)
    p.set_defaults(handler=cmd_search)

    p = commands.add_parser("lineage", help="the family tree of a population-based training study")
    p.add_argument("ref", metavar="RUN|STUDY", help="a run id (or unique prefix) of the study, or the study's name")
    add_queue(p)
    add_runs_root(p)
    p.add_argument("--format", choices=("tree", "json"), default="tree", help="json: every run, or a run's schedule")
    p.set_defaults(handler=cmd_lineage)


def cmd_search(args: argparse.Namespace, console: Console) -> int:
    from ..experiment.plan import plan_submission
    from ..queue import open_queue, queue_url

    environ = dict(os.environ)
    if args.show:
        return _show(args, console, environ)
    from ..runners.search import check, steer, studies

    plan = plan_submission(args.repo, args.commit_hash, args.backend, environ, args.host)
    spec = check(plan, environ)
    url = queue_url(args.queue, plan.runs_root, environ)
    if args.detach:
        return _detach(args, console, plan.runs_root, plan.commit)
    errors = error_console()
    queue = open_queue(url, application_name="expman search")
    try:
        steerings = studies(plan, spec, queue, url, environ, ["expman", *args.argv], _say(errors))
        steer(steerings, poll_s=args.poll)
    finally:
        queue.close()
    for steering in steerings:
        p = steering.progress
        best = f"best {p.best:.6g} at trial {p.best_trial}" if p.best is not None else "no successful point"
        console.print(f"{p.study}: {p.told} points evaluated ({p.failed} failed), {best}", markup=False)
        if p.stopped:
            console.print(f"{p.study}: stopped early: {p.stopped}; 'expman search' goes on with it", markup=False)
    console.print(f"see them with: expman search --show{' --queue ' + url if args.queue else ''}", markup=False)
    return 0


def _say(errors: Console) -> Callable[[str], None]:
    def say(line: str) -> None:
        errors.print(f"{datetime.now().strftime('%H:%M:%S')} {line}", markup=False)

    return say


def _detach(args: argparse.Namespace, console: Console, runs_root: Path, commit: str) -> int:
    """The same search, steered by a process of its own that outlives this one."""
    argv = [a for a in args.argv if a != "--detach"]
    if args.commit_hash is None:
        argv += ["--commit-hash", commit]  # HEAD may move meanwhile; the search stays on this commit
    log = runs_root / ".searches" / f"search-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "expman", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    console.print(f"steering in the background (pid {child.pid}); its log: {log}", markup=False, soft_wrap=True)
    console.print("see where it stands with: expman search --show", markup=False)
    return 0


def _show(args: argparse.Namespace, console: Console, environ: dict[str, str]) -> int:
    """Where the studies stand; looking needs no clean tree (only the commit's config)."""
    from ..experiment import git
    from ..experiment.plan import config_at
    from ..queue import queue_url
    from ..rundir.layout import resolve_runs_root
    from ..runners.search import search_of
    from ..runners.search.study import study_name
    from ..runners.search.summary import render, summarize

    if args.top < 1:
        raise UsageError(f"--top {args.top}: give at least 1")
    repo = git.find_repository(args.repo)
    with git.open_repository(repo) as handle:
        commit = git.resolve_commit(handle, args.commit_hash or "HEAD")
    config = config_at(repo, commit)
    url = queue_url(args.queue, resolve_runs_root(config.settings.runs_root, repo, environ), environ)
    if args.study:
        names = [args.study]
    else:
        spec = search_of(repo, commit, config.document)
        names = [study_name(commit, spec, segment, url) for segment in spec.segments]
    summaries = summarize(url, names, args.top)
    if args.format == "json":
        emit_json(summaries)
    else:
        render(console, summaries)
    return 0


def cmd_lineage(args: argparse.Namespace, console: Console) -> int:
    from ..queue import QUEUE_VARIABLE, queue_url
    from ..rundir.layout import find_run
    from ..rundir.record import load_record
    from ..runners.search import lineage
    from ..runners.search.study import STUDY_PREFIX

    root = runs_root(args)
    run_id, study, url = None, args.ref, queue_url(args.queue, root, os.environ)
    if not args.ref.startswith(f"{STUDY_PREFIX}-"):
        record = load_record(find_run(root, args.ref))
        if not record.search:
            raise UsageError(f"run {record.run_id} is not a point of a search; give a run of a pbt study")
        run_id, study = record.run_id, record.search["study"]
        # the recorded URL is the one shown, without connection options: --queue or EXPMAN_QUEUE first
        url = args.queue or os.environ.get(QUEUE_VARIABLE) or (record.queue or {}).get("url") or url
    nodes = lineage.nodes(url, study)
    if args.format == "json":
        emit_json(lineage.schedule(nodes, run_id) if run_id else nodes)
    else:
        lineage.render(console, study, nodes, None)
    return 0
