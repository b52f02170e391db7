"""``expman submit --set KEY=VALUE``: a configuration change made a commit of its own.

Only committed code runs, so a value given on the command line is not passed to the run
beside the commit (as Hydra's overrides are): it is written into config.json, which is
committed on the experiments branch as "Set train.lr = 0.01", and that commit runs. Every
check runs before the file is touched: the work tree, the branch, the key (it must exist
outside the expman section unless given with --set-new), a swept or searched key (the sweep
would override the value), the new config's validation and git's identity.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UsageError
from . import content, git
from .config import CONFIG_FILE, PROJECT_SCHEMA_FILE, SECTION, ExperimentConfig, load_config
from .jsonedit import set_value
from .plan import checked_commit, config_at
from .sweep import REPEAT, ZIP

# Objects whose keys are dotted config keys themselves: the rest of a --set key after one of
# these is one key ("expman.sweep.train.lr" sets the sweep of "train.lr").
_DOTTED_KEY_MAPS = ((SECTION, "sweep"), (SECTION, "search", "space"))
_MISSING = object()


@dataclass(frozen=True)
class Assignment:
    """One ``KEY=VALUE``: the key as given, the value as typed and as parsed, and whether the
    key may be new (--set-new)."""

    key: str
    text: str
    value: Any
    may_add: bool = False

    @property
    def label(self) -> str:
        return f"{self.key} = {self.text}"


def parse_assignment(given: str, may_add: bool = False) -> Assignment:
    """``train.lr=0.01`` -> (train.lr, 0.01). A value that parses as JSON is that JSON value
    (0.01, true, [1, 2], "quoted"); any other text is a string, as typed."""
    key, equals, text = given.partition("=")
    option = "--set-new" if may_add else "--set"
    if not equals or not key or any(not part or part != part.strip() for part in key.split(".")):
        raise UsageError(f"{option} {given!r}: write KEY=VALUE with a dotted key, e.g. {option} train.lr=0.01")
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    return Assignment(key, text, value, may_add)


def commit_message(assignments: Sequence[Assignment]) -> str:
    return "Set " + ", ".join(a.label for a in assignments)


def commit_assignments(path: Path, assignments: Sequence[Assignment]) -> str:
    """Check everything, write the values into config.json, commit it alone, and return the
    new commit; on a refusal config.json and the branch are as they were."""
    _ensure_distinct(assignments)
    top = git.find_repository(path)
    old = config_at(top, "HEAD")
    with git.open_repository(top) as repo:
        head = checked_commit(repo, None, old.settings)
        entries = content.list_tree(top, head)
        content.ensure_plain_content(top, head, entries)
        committed = git.read_file_at(repo, head, CONFIG_FILE) or b""
        text = _edited(committed, old.document, assignments)
        new = load_config(text, f"{CONFIG_FILE} with {commit_message(assignments)}", _schema(repo, head))
        _ensure_not_varied(new, assignments)
        _ensure_unpushed_allowed(old, new)
        content.ensure_export_allowed(
            content.export_attributes(top, head, entries), head, new.settings.allow_export_attributes
        )
        git.ensure_identity(repo)
        return _write_and_commit(repo, top / CONFIG_FILE, committed, text, commit_message(assignments))


def _schema(repo: git.Repo, commit: str) -> bytes | None:
    return git.read_file_at(repo, commit, PROJECT_SCHEMA_FILE)


def _edited(committed: bytes, document: dict[str, Any], assignments: Sequence[Assignment]) -> bytes:
    bom = b"\xef\xbb\xbf" if committed.startswith(b"\xef\xbb\xbf") else b""
    try:
        text = committed[len(bom) :].decode()
    except UnicodeDecodeError:
        raise ConfigError(
            f"{CONFIG_FILE} is not UTF-8, so --set cannot edit it; save it as UTF-8 and commit it"
        ) from None
    for assignment in assignments:
        text = set_value(text, _resolve(document, assignment), assignment.value)
    return bom + text.encode()


def _resolve(document: dict[str, Any], assignment: Assignment) -> list[str]:
    """The keys, from the top, that ``assignment.key`` names in ``document``. A key of an
    object may itself hold dots, so the longest run of parts that is a key there wins."""
    parts = assignment.key.split(".")
    path: list[str] = []
    node: Any = document
    while (consumed := sum(name.count(".") + 1 for name in path)) < len(parts):
        rest = parts[consumed:]
        if node is not _MISSING and not isinstance(node, dict):
            where = ".".join(path)
            raise UsageError(f"--set {assignment.key}: {where} is {_kind(node)}, not an object; set {where} itself")
        if tuple(path) in _DOTTED_KEY_MAPS:
            name = ".".join(rest)
        else:
            name = next((n for n in _prefixes(rest) if isinstance(node, dict) and n in node), rest[0])
        path.append(name)
        node = node.get(name, _MISSING) if isinstance(node, dict) else _MISSING
    if node is _MISSING and path[0] != SECTION and not assignment.may_add:
        raise UsageError(_unknown_key(document, assignment.key))
    return path


def _prefixes(parts: list[str]) -> Iterator[str]:
    """For the parts a, b, c: "a.b.c", "a.b", "a" (the longest first)."""
    for end in range(len(parts), 0, -1):
        yield ".".join(parts[:end])


def _unknown_key(document: dict[str, Any], key: str) -> str:
    known = list(_dotted_keys({k: v for k, v in document.items() if k != SECTION}))
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else f"its keys: {', '.join(known[:10])}; "
    return f"--set {key}: no such key in {CONFIG_FILE} ({hint}fix the key, or add it with --set-new {key}=VALUE)"


def _dotted_keys(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        yield prefix + key
        if isinstance(value, dict):
            yield from _dotted_keys(value, f"{prefix}{key}.")


def _kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else f"the value {json.dumps(value)}"


def _ensure_distinct(assignments: Sequence[Assignment]) -> None:
    """Two values for one key, or a key and a key inside it: which should win is not clear."""
    keys = [a.key for a in assignments]
    for key in keys:
        inside = [other for other in keys if other.startswith(key + ".")]
        if keys.count(key) > 1 or inside:
            also = f"{key} and {inside[0]}" if inside else f"{key} twice"
            raise UsageError(f"--set {also}: set each key once")


def _ensure_not_varied(config: ExperimentConfig, assignments: Sequence[Assignment]) -> None:
    """A value set for a key the sweep or search varies would never run: refuse it."""
    section = config.document[SECTION]
    sweep = section.get("sweep") or {}
    varied = {k: "expman.sweep" for k in sweep if k not in (ZIP, REPEAT)}
    zips = sweep.get(ZIP, [])
    for group in zips if isinstance(zips, list) else [zips]:
        varied.update({k: "a zip group of expman.sweep" for k in group})
    space = (section.get("search") or {}).get("space")
    varied.update({k: "expman.search.space" for k in space} if isinstance(space, dict) else {})
    for assignment in assignments:
        key = assignment.key
        where = next((by for k, by in varied.items() if k == key or k.startswith(key + ".")), None)
        if where and key.split(".")[0] != SECTION:
            raise UsageError(
                f"--set {key}: {where} varies this key, so a value set here would never run; change the values "
                f"in {where} instead"
            )


def _ensure_unpushed_allowed(old: ExperimentConfig, new: ExperimentConfig) -> None:
    if old.settings.require_pushed or new.settings.require_pushed:
        raise ConfigError(
            '--set makes a commit that is not pushed yet, and "require_pushed" is set; change config.json, '
            "commit and push it, then submit"
        )


def _write_and_commit(repo: git.Repo, target: Path, committed: bytes, text: bytes, message: str) -> str:
    target.write_bytes(text)
    try:
        return git.commit_file(repo, CONFIG_FILE, message)
    except BaseException:
        target.write_bytes(committed)  # a failed commit (a hook, Ctrl-C) leaves the tree clean
        raise
