"""``expman completion bash|zsh``: the shell completion script, rendered by shtab from the
parser itself, so that it never falls behind the commands and options."""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from rich.console import Console

from .common import Commands

SHELLS = ("bash", "zsh")
# Options whose values are paths: the shell completes directories or files for them.
_DIRECTORIES = {"directory", "repo", "runs_root"}
_FILES = {"output"}


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser(
        "completion",
        help="print the shell completion script (bash or zsh)",
        description="Print the completion script for SHELL. Install it with, for bash: "
        "expman completion bash > ~/.local/share/bash-completion/completions/expman; "
        'for zsh: expman completion zsh > "${fpath[1]}/_expman" (any directory on $fpath), then start a new shell.',
    )
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(handler=cmd_completion)


def cmd_completion(args: argparse.Namespace, console: Console) -> int:
    import shtab  # only here: no other command needs it

    _mark_paths(args.root_parser, shtab)
    sys.stdout.write(shtab.complete(args.root_parser, shell=args.shell))
    return 0


def _mark_paths(parser: argparse.ArgumentParser, shtab: ModuleType) -> None:
    for action in parser._actions:
        if action.dest in _DIRECTORIES:
            setattr(action, "complete", shtab.DIRECTORY)  # noqa: B010 - shtab reads this attribute
        elif action.dest in _FILES:
            setattr(action, "complete", shtab.FILE)  # noqa: B010
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _mark_paths(sub, shtab)
