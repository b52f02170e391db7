"""The loading progress bar: shown on a terminal for many items, never on a pipe."""

from __future__ import annotations

import io

from rich.console import Console

from expman.progress import Reporter


def test_bar_shows_on_a_terminal_once_there_are_enough_items():
    out = io.StringIO()
    with Reporter(Console(file=out, force_terminal=True, width=100)).bar("loading runs", minimum=5) as step:
        for done in range(1, 11):
            step(done, 10)
    assert "loading runs" in out.getvalue()


def test_bar_is_silent_on_a_pipe_and_for_few_items():
    pipe = io.StringIO()
    with Reporter(Console(file=pipe, force_terminal=False)).bar("loading runs") as step:
        step(100, 100)
    assert pipe.getvalue() == ""
    few = io.StringIO()
    with Reporter(Console(file=few, force_terminal=True, width=100)).bar("loading runs", minimum=20) as step:
        step(3, 3)
    assert "loading runs" not in few.getvalue()
