"""``expman diff``'s content: two runs compared section by section (code, then those of
``compare``), and its renderings as text, Markdown and JSON data. Rendering is pure: these
functions return strings and data, the CLI prints them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..rundir.layout import RunDir
from ..rundir.record import load_record
from .codediff import UNAVAILABLE, CodeDiff, code_diff
from .compare import ADDED, CHANGED, REMOVED, SECTIONS, Entry, compare_runs

MAX_SHOWN_CHARS = 60  # a longer value (a list) is cut in text and Markdown; JSON has it whole
SHORT_COMMIT = 12
DIGEST_PREFIX, SHORT_DIGEST = "sha256:", 12
MAX_BAR = 40  # a file's +/- bar, scaled down to this as git does


@dataclass(frozen=True)
class RunDiff:
    a: str
    b: str
    code: CodeDiff
    entries: list[Entry]

    def sections(self, everything: bool) -> dict[str, list[Entry]]:
        """Entries by section in ``SECTIONS`` order: those that differ, or all of them."""
        shown = [e for e in self.entries if everything or e.differs]
        chosen = {name: [e for e in shown if e.section == name] for name in SECTIONS}
        return {name: entries for name, entries in chosen.items() if entries}

    def code_shown(self, everything: bool) -> bool:
        return everything or bool(self.code.files) or self.code.source == UNAVAILABLE


def diff_runs(a: RunDir, b: RunDir, rtol: float = 0.0, logs: bool = False) -> RunDiff:
    record_a, record_b = load_record(a), load_record(b)
    return RunDiff(
        a.run_id, b.run_id, code_diff(a, record_a, b, record_b), compare_runs(a, record_a, b, record_b, rtol, logs)
    )


# --- values and lines ------------------------------------------------------------------


def shown(value: Any, cut: bool = True) -> str:
    """A value as a reader writes it: JSON's true/false/null, floats in their shortest form;
    with ``cut``, a digest by its first 12 digits and a long value shortened (a long list
    always: the line's detail names where it differs)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = json.dumps(value, separators=(",", ":"))
    if cut and text.startswith(DIGEST_PREFIX):
        return text[: len(DIGEST_PREFIX) + SHORT_DIGEST]
    long = len(text) > MAX_SHOWN_CHARS and (cut or isinstance(value, list))  # a list's detail says what differs
    return text[: MAX_SHOWN_CHARS - 3] + "..." if long else text


def delta_text(delta: float | None) -> str:
    return "" if delta is None else f"{delta:+.6g}"


def entry_line(entry: Entry, qualified: bool = False, cut: bool = True) -> str:
    """``key: a -> b (+delta); detail``, the key prefixed with its section when ``qualified``,
    values whole unless ``cut`` (see ``shown``)."""
    key = f"{entry.section}.{entry.key}" if qualified else entry.key
    a, b = shown(entry.a, cut), shown(entry.b, cut)
    if entry.state == ADDED:
        text = f"{key}: only in B: {b}"
    elif entry.state == REMOVED:
        text = f"{key}: only in A: {a}"
    elif entry.state == CHANGED and (entry.a is not None or entry.b is not None):
        text = f"{key}: {a} -> {b}" + (f" ({delta_text(entry.delta)})" if entry.delta else "")
    elif entry.state == CHANGED:
        text = f"{key}: differs"
    else:
        text = f"{key}: {a}"
    return text + (f"; {entry.detail}" if entry.detail else "")


def stat_lines(code: CodeDiff) -> list[str]:
    """``git diff --stat``'s lines: a bar per file, then the totals."""
    if not code.files:
        return []
    width = max(len(f.path) for f in code.files)
    counts = [(f.added or 0) + (f.removed or 0) for f in code.files]
    digits = len(str(max(counts)))
    scale = min(1.0, MAX_BAR / max(max(counts), 1))
    lines = []
    for change, count in zip(code.files, counts, strict=True):
        if change.added is None:
            lines.append(f"{change.path:<{width}} | Bin")
            continue
        bar = "+" * _scaled(change.added, scale) + "-" * _scaled(change.removed or 0, scale)
        lines.append(f"{change.path:<{width}} | {count:>{digits}} {bar}")
    added = sum(f.added or 0 for f in code.files)
    removed = sum(f.removed or 0 for f in code.files)
    lines.append(
        f"{_plural(len(code.files), 'file')} changed, {_plural(added, 'insertion')}(+), "
        f"{_plural(removed, 'deletion')}(-)"
    )
    return lines


def _scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale)) if n else 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def code_heading(code: CodeDiff) -> str:
    commits = f"{code.commit_a[:SHORT_COMMIT]}..{code.commit_b[:SHORT_COMMIT]}"
    if code.source == UNAVAILABLE:
        return f"{commits}: not compared ({code.reason})"
    if code.commit_a == code.commit_b:
        return f"the same commit {code.commit_a[:SHORT_COMMIT]}"
    return f"{commits} (from {code.source})" if code.files else f"{commits} (from {code.source}): no file differs"


# --- renderings ------------------------------------------------------------------------


def render_text(diff: RunDiff, everything: bool = False) -> str:
    lines = [f"diff {diff.a} {diff.b}"]
    if diff.code_shown(everything):
        lines += ["", f"code: {code_heading(diff.code)}", *(f"  {line}" for line in stat_lines(diff.code))]
    for name, entries in diff.sections(everything).items():
        lines += ["", name, *(f"  {entry_line(e)}" for e in entries)]
    if len(lines) == 1:
        lines += ["", "no differences"]
    return "\n".join(lines) + "\n"


def render_markdown(diff: RunDiff, everything: bool = False) -> str:
    lines = [f"# diff `{diff.a}` `{diff.b}`"]
    if diff.code_shown(everything):
        lines += ["", "## code", "", code_heading(diff.code)]
        if diff.code.files:
            lines += ["", "| file | + | - |", "|:--|--:|--:|"]
            lines += [f"| {_cell(f.path)} | {_count(f.added)} | {_count(f.removed)} |" for f in diff.code.files]
    for name, entries in diff.sections(everything).items():
        notes = any(e.detail for e in entries)
        lines += ["", f"## {name}", ""]
        lines += (
            ["| key | A | B | delta | note |", "|:--|:--|:--|--:|:--|"]
            if notes
            else ["| key | A | B | delta |", "|:--|:--|:--|--:|"]
        )
        lines += [_markdown_row(e, notes) for e in entries]
    if len(lines) == 1:
        lines += ["", "No differences."]
    return "\n".join(lines) + "\n"


def _markdown_row(entry: Entry, notes: bool) -> str:
    a = "—" if entry.state == ADDED else _cell(shown(entry.a))
    b = "—" if entry.state == REMOVED else _cell(shown(entry.b))
    row = f"| {_cell(entry.key)} | {a} | {b} | {delta_text(entry.delta)} |"
    return row + f" {_cell(entry.detail or '')} |" if notes else row


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _count(n: int | None) -> str:
    return "bin" if n is None else str(n)


def as_data(diff: RunDiff, everything: bool = False) -> dict[str, Any]:
    """The diff as JSON data: every value whole, missing ones null."""
    code = diff.code
    return {
        "a": diff.a,
        "b": diff.b,
        "code": {
            "commit_a": code.commit_a,
            "commit_b": code.commit_b,
            "source": code.source,
            "reason": code.reason,
            "files": [{"path": f.path, "added": f.added, "removed": f.removed} for f in code.files],
        },
        "sections": {
            name: [
                {"key": e.key, "state": e.state, "a": e.a, "b": e.b, "delta": e.delta, "detail": e.detail}
                for e in entries
            ]
            for name, entries in diff.sections(everything).items()
        },
    }
