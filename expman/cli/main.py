"""The command line: ``main`` builds the parser from each command group's module and is the
only place that turns errors into messages and exit codes (``--debug`` shows the traceback)."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any

from rich.console import Console

from .. import __version__
from ..errors import ExpmanError, RunCancelledError, UsageError
from . import queue, runs, submit, table

_PIPE_WIDTH = 200
COMMAND_GROUPS = (submit, queue, runs, table)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit; we raise like every other error
        raise UsageError(f"{message}; see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="expman", description="Reproducible ML experiments from committed code.")
    parser.add_argument("--version", action="version", version=f"expman {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for group in COMMAND_GROUPS:
        group.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Piped output keeps whole lines (run ids, hashes) instead of rich's 80-column default.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH)
    errors = Console(stderr=True, highlight=False)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        return int(args.handler(args, console))
    except ExpmanError as exc:
        if debug:
            traceback.print_exc()
        errors.print(f"expman: error: {exc.message}", markup=False, soft_wrap=True, style="red")
        return exc.exit_code
    except KeyboardInterrupt:
        errors.print("expman: interrupted", style="red")
        return RunCancelledError.exit_code
