"""The run directory contract: layout, run ids, runs_root, atomic writes.

<runs_root>/<run_id>/
  run.json  config.json  code.tar  logs/{stdout,stderr,build}.log  output/
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson

from .errors import AmbiguousRunError, RunNotFoundError

Clock = Callable[[], datetime]
RUNS_ROOT_VARIABLE = "EXPMAN_RUNS_ROOT"
_CLAIM_ATTEMPTS = 100


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RunDir:
    """A run's paths, each made once (a table of thousands of runs asks for them often)."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @cached_property
    def record(self) -> Path:
        return self.path / "run.json"

    @cached_property
    def config(self) -> Path:
        return self.path / "config.json"

    @cached_property
    def code_tar(self) -> Path:
        return self.path / "code.tar"

    @cached_property
    def logs(self) -> Path:
        return self.path / "logs"

    @cached_property
    def output(self) -> Path:
        return self.path / "output"

    @cached_property
    def stdout_log(self) -> Path:
        return self.logs / "stdout.log"

    @cached_property
    def stderr_log(self) -> Path:
        return self.logs / "stderr.log"

    @cached_property
    def build_log(self) -> Path:
        return self.logs / "build.log"


def new_run_id(now: datetime) -> str:
    """Sortable by time (UTC, milliseconds); a random suffix keeps concurrent ids apart."""
    return now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}-{secrets.token_hex(2)}"


def create_run_dir(runs_root: Path, clock: Clock = utc_now) -> RunDir:
    """Claim a fresh run directory atomically (mkdir fails if another submit took the id)."""
    for _ in range(_CLAIM_ATTEMPTS):
        path = runs_root / new_run_id(clock())
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except FileNotFoundError:  # the first run of a new runs root
            runs_root.mkdir(parents=True, exist_ok=True)
            continue
        run = RunDir(path)
        run.logs.mkdir()
        run.output.mkdir()
        return run
    raise RuntimeError(f"could not claim a run directory under {runs_root}")


def resolve_runs_root(configured: str | None, repo: Path | None, environ: Mapping[str, str]) -> Path:
    """EXPMAN_RUNS_ROOT, else "runs_root" from config (relative to the repo), else a data dir
    outside any work tree, so runs never make the repository dirty."""
    if environ.get(RUNS_ROOT_VARIABLE):
        return Path(environ[RUNS_ROOT_VARIABLE]).expanduser().absolute()
    if configured:
        path = Path(configured).expanduser()
        return (repo / path if repo is not None and not path.is_absolute() else path).absolute()
    data_home = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".local/share")
    return Path(data_home) / "expman" / "runs"


def write_json_atomic(path: Path, data: Any, durable: bool = True) -> None:
    write_bytes_atomic(path, json_bytes(data), durable)


def json_bytes(data: Any, sort_keys: bool = True) -> bytes:
    """Indented JSON, UTF-8, ending in a newline. orjson, as a record is written several times
    per run and thousands of runs make a sweep; the standard library for what orjson refuses
    (integers beyond 64 bits)."""
    option = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    try:
        return orjson.dumps(data, option=option)
    except TypeError:
        return (json.dumps(data, sort_keys=sort_keys, indent=2, ensure_ascii=False) + "\n").encode()


def write_bytes_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to a temporary file in the same directory, fsync (when ``durable``), then rename
    over ``path``: readers see the old or the new content, never a mix."""
    put_in_place(stage_bytes(path, data), path, durable)


def stage_bytes(path: Path, data: bytes) -> Path:
    """The first half of ``write_bytes_atomic``: ``data`` in a temporary file next to ``path``,
    not synced; ``put_in_place`` finishes the write (from another thread, say)."""
    tmp = _temporary(path)
    try:
        tmp.write_bytes(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def put_in_place(tmp: Path, path: Path, durable: bool = True) -> None:
    """fsync (when ``durable``) a file staged by ``stage_bytes`` and rename it over ``path``."""
    try:
        if durable:
            sync_paths(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _temporary(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"  # one per writing thread


def sync_paths(*paths: Path) -> None:
    """fsync files or directories (a directory's sync keeps the entries made in it)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the filesystem allows one (runs of a sweep share their archive), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def list_runs(runs_root: Path) -> list[RunDir]:
    """Every run directory under runs_root, newest first."""
    if not runs_root.is_dir():
        return []
    runs = [RunDir(p) for p in runs_root.iterdir() if (p / "run.json").is_file()]
    return sorted(runs, key=lambda r: r.run_id, reverse=True)


def find_run(runs_root: Path, ref: str | None) -> RunDir:
    """A run by full id or unique prefix; the newest run when ``ref`` is None."""
    if ref is None:
        runs = list_runs(runs_root)
        if not runs:
            raise RunNotFoundError(f"no runs under {runs_root} yet; submit one with 'expman submit'")
        return runs[0]
    matches = [r for r in list_runs(runs_root) if r.run_id.startswith(ref)] if ref else []
    exact = [r for r in matches if r.run_id == ref]
    if exact:
        return exact[0]
    if not matches:
        raise RunNotFoundError(f"no run {ref!r} under {runs_root}; 'expman runs' lists them")
    if len(matches) > 1:
        shown = ", ".join(r.run_id for r in matches[:5])
        raise AmbiguousRunError(f"{ref!r} matches {len(matches)} runs ({shown}, ...); give more of the id")
    return matches[0]
