"""The command line: ``main`` builds the parser from each command group's module and is the
only place that turns errors into messages and exit codes (``--debug`` shows the traceback
of an error that is not a usage error)."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from .. import __version__
from ..errors import ExpmanError, RunCancelledError, UsageError
from .common import error_console

_PIPE_WIDTH = 200
# Command group modules, in the order --help lists them, with the commands each adds: a
# command line naming one of these imports only that module, so that `expman runs` does not
# pay for importing what `expman submit` needs.
COMMAND_GROUPS = {
    "submit": ("submit",),
    "queue": ("sweep", "schedule", "worker", "status", "retry"),
    "search": ("search", "lineage"),
    "runs": ("runs", "sync", "cancel"),
    "show": ("show",),
    "annotate": ("tag", "note"),
    "gc": ("gc",),
    "compare": ("rerun", "diff"),
    "logs": ("logs",),
    "table": ("table",),
    "query": ("query",),
    "plot": ("plot",),
    "report": ("report",),
    "completion": ("completion",),
}


class _Parser(argparse.ArgumentParser):
    """argparse, raising like every other error, and naming the near miss of an unknown
    command, option or choice (argparse 3.11 suggests nothing)."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{message}; see '{self.prog} --help'")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in action.choices], n=1)
            if close:
                raise argparse.ArgumentError(action, f"invalid choice: {value!r} (did you mean {close[0]!r}?)")
        super()._check_value(action, value)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            used = _command_parser(self, parsed)
            options = [o for action in used._actions for o in action.option_strings]
            flags = [e.partition("=")[0] for e in extras if e.startswith("-")]
            close = difflib.get_close_matches(flags[0], options, n=1) if flags else []
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"unrecognized arguments: {' '.join(extras)}{hint}; see '{used.prog} --help'")
        return parsed


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command ``args`` ran (the top one when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, "command", None):
            return action.choices[args.command]  # type: ignore[no-any-return]
    return parser


def _groups(argv: Sequence[str] | None) -> list[Any]:
    """The modules whose commands the parser needs: the one of the command ``argv`` names,
    else all (for help, completion, the near miss of an unknown command, and after -C PATH,
    whose PATH is no command)."""
    command = next((a for a in argv or () if not a.startswith("-")), None)
    named = [module for module, commands in COMMAND_GROUPS.items() if command in commands]
    if argv is None or named in ([], ["completion"]) or any(a.startswith("-C") for a in argv):
        named = list(COMMAND_GROUPS)
    return [importlib.import_module(f"{__package__}.{module}") for module in named]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="expman", description="Reproducible ML experiments from committed code.")
    parser.add_argument("--version", action="version", version=f"expman {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument(
        "-C",
        dest="directory",
        action="append",
        type=Path,
        metavar="PATH",
        help="run as if expman was started in PATH (as git -C; repeated, each is relative to the one before)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for group in _groups(argv):
        group.add_parsers(commands)
    parser.set_defaults(root_parser=parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Piped output keeps whole lines (run ids, hashes) instead of rich's 80-column default.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH)
    errors = error_console()
    debug = "--debug" in argv
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if args.command is None:
            sys.stdout.write(parser.format_help())
            return UsageError.exit_code
        args.argv = argv
        with _working_directory(args.directory):
            return int(args.handler(args, console))
    except ExpmanError as exc:
        if debug and not isinstance(exc, UsageError):
            traceback.print_exc()
        errors.print(f"expman: error: {exc.message}", markup=False, style="red")
        return exc.exit_code
    except BrokenPipeError:  # the reader went away (| head): nothing more to say, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        errors.print("expman: interrupted", style="red")
        return RunCancelledError.exit_code


@contextmanager
def _working_directory(directories: list[Path] | None) -> Iterator[None]:
    """Inside the directory ``-C`` names, given back afterwards (tests run many commands in
    one process)."""
    if not directories:
        yield
        return
    before = os.getcwd()
    target = Path(*directories)
    try:
        os.chdir(target)
    except OSError as exc:
        raise UsageError(f"-C {target}: cannot change into it ({exc.strerror}); name an existing directory") from None
    try:
        yield
    finally:
        os.chdir(before)
