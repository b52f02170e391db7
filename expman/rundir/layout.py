"""The run directory contract: layout, run ids, runs_root.

<runs_root>/<run_id>/
  run.json  config.json  code.tar  logs/{stdout,stderr,build}.log  logs/attempt-N/  output/

The logs of the newest attempt are directly under logs/; when attempt N+1 begins, attempt
N's move to logs/attempt-N/ (attempts are numbered from 1, as in the record).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from ..errors import AmbiguousRunError, RunNotFoundError

Clock = Callable[[], datetime]
RUNS_ROOT_VARIABLE = "EXPMAN_RUNS_ROOT"
_CLAIM_ATTEMPTS = 100
_last_ms = 0  # the newest millisecond a run id of this process was made in


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
    def annotations(self) -> Path:
        """Tags and notes: the user's own words about a run, kept apart from its provenance."""
        return self.path / "annotations.json"

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

    def attempt_logs(self, attempt: int) -> Path:
        """Where attempt ``attempt``'s logs went once a later attempt began."""
        return self.logs / f"attempt-{attempt}"


def new_run_id(now: datetime) -> str:
    """Sortable by time (UTC, milliseconds); a random suffix keeps concurrent ids apart. Ids
    made by this process in one millisecond take the next ones, so they sort as they were made."""
    global _last_ms
    ms = max(int(now.replace(microsecond=0).timestamp()) * 1000 + now.microsecond // 1000, _last_ms + 1)
    _last_ms = ms
    stamp = datetime.fromtimestamp(ms / 1000, UTC)
    return stamp.strftime("%Y%m%d-%H%M%S-") + f"{ms % 1000:03d}-{secrets.token_hex(2)}"


def create_run_dir(runs_root: Path, clock: Clock = utc_now, claiming: Callable[[Path], None] | None = None) -> RunDir:
    """Claim a fresh run directory atomically (mkdir fails if another submit took the id);
    ``claiming`` hears each path before it is made, so that one made is never unknown."""
    for _ in range(_CLAIM_ATTEMPTS):
        path = runs_root / new_run_id(clock())
        if claiming is not None:
            claiming(path)
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
