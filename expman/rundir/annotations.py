"""Tags and notes: what the user says about a run, kept in <run>/annotations.json, apart
from its provenance (run.json, config.json and the archive are never touched).

    {"tags": {"key": "value", ...}, "notes": [{"at": "<ISO time>", "text": "..."}, ...]}

Every change reads, changes and rewrites the file under the run's record lock (the one
run.json's writers take), so concurrent taggers lose nothing and ``expman gc`` never removes a
run half-way through a change; the rewrite is atomic (a temporary file renamed over it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from ..errors import RecordError, RunNotFoundError, UsageError
from .files import json_bytes, write_bytes_atomic
from .layout import RunDir
from .lifecycle import record_lock

# A tag becomes the column tag.<key> of load_runs, --where and SQL: dotted words of letters,
# digits, _ and -, so that no key holds a comparison, a space or a quote.
_TAG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")
TAG_KEY_MAX = 64


@dataclass
class Annotations:
    tags: dict[str, str] = field(default_factory=dict)
    notes: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"tags": self.tags, "notes": self.notes}


def check_tag_key(key: str) -> str:
    """``key`` if it can be a tag's name; a one-line UsageError saying why not otherwise."""
    if not key:
        raise UsageError("a tag needs a key: write key=value (key= removes the tag)")
    if len(key) > TAG_KEY_MAX:
        raise UsageError(f"tag key {key[:20]!r}... is {len(key)} characters long; use at most {TAG_KEY_MAX}")
    if not _TAG_KEY.fullmatch(key):
        raise UsageError(
            f"tag key {key!r} is not allowed: use letters, digits, _ and -, in parts joined by dots, "
            "starting with a letter or _ (it becomes the column tag.<key>)"
        )
    return key


def read_annotations(run: RunDir) -> Annotations:
    """The run's tags and notes (none when it has no annotations.json); a damaged file is a
    RecordError, never silently replaced."""
    try:
        data = orjson.loads(run.annotations.read_bytes())
    except FileNotFoundError:
        return Annotations()
    except (OSError, ValueError) as exc:
        raise _damaged(run, str(exc)) from None
    tags = data.get("tags", {}) if isinstance(data, dict) else None
    notes = data.get("notes", []) if isinstance(data, dict) else None
    if not isinstance(tags, dict) or not isinstance(notes, list):
        raise _damaged(run, "expected an object with 'tags' (an object) and 'notes' (a list)")
    return Annotations({str(k): str(v) for k, v in tags.items()}, [n for n in notes if isinstance(n, dict)])


def change_tags(run: RunDir, set_tags: Mapping[str, str], remove: Sequence[str] = ()) -> Annotations:
    """Set ``set_tags`` and remove the tags named in ``remove``; returns the tags as written."""
    for key in [*set_tags, *remove]:
        check_tag_key(key)
    with _locked(run):
        annotations = read_annotations(run)
        for key in remove:
            annotations.tags.pop(key, None)
        annotations.tags.update(set_tags)
        _write(run, annotations)
    return annotations


def add_note(run: RunDir, text: str, now: datetime) -> Annotations:
    """Append a note dated ``now``."""
    if not text.strip():
        raise UsageError('a note needs some text: expman note RUN "what you noticed"')
    with _locked(run):
        annotations = read_annotations(run)
        annotations.notes.append({"at": now.isoformat(timespec="seconds"), "text": text})
        _write(run, annotations)
    return annotations


@contextmanager
def _locked(run: RunDir) -> Iterator[None]:
    """The run's record lock, on a run still there: ``expman gc`` may have removed it while
    this process waited."""
    with record_lock(run):
        if not run.record.is_file():
            raise RunNotFoundError(f"run {run.run_id} was removed meanwhile (expman gc?); nothing was written")
        yield


def _write(run: RunDir, annotations: Annotations) -> None:
    try:
        write_bytes_atomic(run.annotations, json_bytes(annotations.to_dict()))
    except OSError as exc:
        raise RecordError(f"cannot write {run.annotations}: {exc.strerror}; check the run directory") from None


def _damaged(run: RunDir, detail: str) -> RecordError:
    return RecordError(f"{run.annotations} is damaged ({detail}); fix or remove it, then tag again")
