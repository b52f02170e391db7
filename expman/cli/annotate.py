"""``expman tag`` and ``expman note``: the user's own words about a run, never its provenance."""

from __future__ import annotations

import argparse

from rich.console import Console

from ..errors import UsageError
from ..rundir.annotations import add_note, change_tags, check_tag_key, read_annotations
from ..rundir.layout import find_run, utc_now
from .common import Commands, add_runs_root, runs_root


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser("tag", help="set or remove tags of a run (key=value; key= removes it)")
    add_runs_root(p)
    p.add_argument("run", metavar="RUN", help="run id or unique prefix")
    p.add_argument("tags", nargs="*", metavar="KEY=VALUE", help="tags to set; KEY= removes KEY; none: list the tags")
    p.add_argument("--remove", action="append", default=[], metavar="KEY", help="remove this tag (repeatable)")
    p.set_defaults(handler=cmd_tag)

    p = commands.add_parser("note", help="add a dated note to a run")
    add_runs_root(p)
    p.add_argument("run", metavar="RUN", help="run id or unique prefix")
    p.add_argument("text", nargs="+", help="the note (several words are joined by spaces)")
    p.set_defaults(handler=cmd_note)


def cmd_tag(args: argparse.Namespace, console: Console) -> int:
    run = find_run(runs_root(args), args.run)
    set_tags, remove = _parse_tags(args.tags)
    remove += [check_tag_key(key) for key in args.remove]
    if set_tags or remove:
        tags = change_tags(run, set_tags, remove).tags
    else:
        tags = read_annotations(run).tags
    lines = [f"{key}={value}" for key, value in sorted(tags.items())]
    console.print("\n".join(lines) if lines else f"run {run.run_id} has no tags", markup=False, soft_wrap=True)
    return 0


def cmd_note(args: argparse.Namespace, console: Console) -> int:
    run = find_run(runs_root(args), args.run)
    notes = add_note(run, " ".join(args.text), utc_now()).notes
    console.print(f"noted on run {run.run_id} ({len(notes)} notes)", markup=False, soft_wrap=True)
    return 0


def _parse_tags(items: list[str]) -> tuple[dict[str, str], list[str]]:
    """KEY=VALUE items as tags to set, KEY= as tags to remove."""
    set_tags: dict[str, str] = {}
    remove: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"tag {item!r} has no '=': write key=value, or key= to remove the tag")
        check_tag_key(key)
        if value:
            set_tags[key] = value
        else:
            remove.append(key)
    return set_tags, remove
