from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from expman.errors import AmbiguousRunError, RunNotFoundError
from expman.rundir.files import write_json_atomic
from expman.rundir.layout import create_run_dir, find_run, new_run_id, resolve_runs_root


def _claim_many(root: str, n: int) -> list[str]:
    return [create_run_dir(Path(root)).run_id for _ in range(n)]


def test_run_ids_sort_by_time():
    early = new_run_id(datetime(2026, 1, 1, 9, 0, 0, 1000, tzinfo=UTC))
    late = new_run_id(datetime(2026, 1, 1, 9, 0, 0, 2000, tzinfo=UTC))
    assert early < late


def test_run_ids_unique_under_concurrent_submits(tmp_path):
    with multiprocessing.get_context("fork").Pool(8) as pool:
        ids = [i for chunk in pool.starmap(_claim_many, [(str(tmp_path), 50)] * 8) for i in chunk]
    assert len(ids) == len(set(ids)) == 400
    assert len(list(tmp_path.iterdir())) == 400


def test_runs_root_resolution(tmp_path):
    repo = tmp_path / "repo"
    assert resolve_runs_root("runs", repo, {"EXPMAN_RUNS_ROOT": "/x/y"}) == Path("/x/y")
    assert resolve_runs_root("../runs", repo, {}) == repo / "../runs"
    default = resolve_runs_root(None, repo, {"HOME": str(tmp_path / "home")})
    assert default == tmp_path / "home" / ".local/share/expman/runs"
    assert repo not in default.parents


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    write_json_atomic(tmp_path / "run.json", {"b": 1, "a": 2})
    write_json_atomic(tmp_path / "run.json", {"c": 3})
    assert json.loads((tmp_path / "run.json").read_text()) == {"c": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_find_run_by_unique_prefix(tmp_path):
    for name in ("20260101-000000-000-aaaa", "20260101-000000-000-aabb", "20260102-000000-000-cccc"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text("{}")
    assert find_run(tmp_path, "20260102").run_id == "20260102-000000-000-cccc"
    with pytest.raises(AmbiguousRunError):
        find_run(tmp_path, "20260101-000000-000-aa")
    with pytest.raises(RunNotFoundError):
        find_run(tmp_path, "2027")


def test_runs_made_in_one_millisecond_sort_in_the_order_they_were_made(tmp_path):
    """Run ids sort by time; within one process, ids made in the same millisecond too."""
    instant = datetime(2026, 1, 1, 9, 0, 0, 1000, tzinfo=UTC)
    made = [create_run_dir(tmp_path, clock=lambda: instant).run_id for _ in range(20)]
    assert sorted(made) == made


def test_how_a_run_ended_is_not_changed_by_a_later_write(tmp_path):
    """A follower that missed a cancel cannot record the run running again, nor as
    something else; a new attempt (or a retry) reopens it."""
    from expman.errors import RecordError
    from expman.rundir import lifecycle
    from expman.rundir.layout import utc_now
    from expman.rundir.record import RunStatus, load_record

    from .helpers import minimal_record

    run = create_run_dir(tmp_path)
    stale = minimal_record(run.run_id)
    lifecycle.create(run, stale)
    lifecycle.end_if_not_final(run, utc_now(), lambda current: (RunStatus.CANCELLED, "cancelled by user"))
    stale.mark_running(utc_now(), "here")
    with pytest.raises(RecordError, match="already ended"):
        lifecycle.save(run, stale)
    assert load_record(run).status == RunStatus.CANCELLED
    assert lifecycle.begin_attempt(run, utc_now()).status == RunStatus.QUEUED
