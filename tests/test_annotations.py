"""Tags and notes: kept in annotations.json, never in the run's provenance; concurrent taggers
lose nothing; shown by show, filterable in table with --where tag.<key>."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expman import errors
from expman.cli import main
from expman.rundir import lifecycle
from expman.rundir.layout import RunDir, utc_now

from .helpers import minimal_record
from .results_helpers import make_run

PROCESSES = 6
CHANGES_EACH = 15

TAGGER = """\
import sys, time
from pathlib import Path
from expman.cli import main
root, run, name, start = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
(start.parent / f"ready-{name}").touch()
while not start.exists():
    time.sleep(0.001)
for i in range(int(sys.argv[5])):
    assert main(["tag", "--runs-root", root, run, f"{name}.k{i}=v{i}"]) == 0
    assert main(["note", "--runs-root", root, run, f"{name} note {i}"]) == 0
"""


@pytest.fixture
def ended_run(runs_root: Path) -> RunDir:
    """A run directory with a full record (succeeded) and a config, as submit leaves one."""
    run = RunDir(runs_root / "20261201-100000-000-abcd")
    (run.path / "output").mkdir(parents=True)
    record = minimal_record(run.run_id)
    record.mark_ended(lifecycle.RunStatus.SUCCEEDED, utc_now())
    lifecycle.create(run, record)
    run.config.write_text(json.dumps({"train": {"lr": 0.1}}))
    return run


def digests(run: RunDir) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (run.record, run.config)}


def test_tags_and_notes_go_to_annotations_json_and_leave_the_record_alone(ended_run, runs_root, capsys):
    before = digests(ended_run)
    assert main(["tag", ended_run.run_id[:10], "group=baseline", "paper=table 3"]) == 0
    assert main(["note", ended_run.run_id, "diverged", "after", "warm-up"]) == 0
    assert main(["tag", ended_run.run_id, "paper=", "--remove", "nothing.here"]) == 0
    data = json.loads(ended_run.annotations.read_text())
    assert data["tags"] == {"group": "baseline"}
    assert [n["text"] for n in data["notes"]] == ["diverged after warm-up"]
    assert digests(ended_run) == before
    assert [p.name for p in ended_run.path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    capsys.readouterr()
    assert main(["tag", ended_run.run_id]) == 0
    assert capsys.readouterr().out == "group=baseline\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tag", "RUN", "=x"], "a tag needs a key"),
        (["tag", "RUN", "novalue"], "has no '='"),
        (["tag", "RUN", "lr<0.1=x"], "tag key 'lr<0.1' is not allowed"),
        (["tag", "RUN", "has space=x"], "is not allowed"),
        (["tag", "RUN", "trailing.=x"], "is not allowed"),
        (["tag", "RUN", '"quoted"=x'], "is not allowed"),
        (["tag", "RUN", "--remove", "a=b"], "is not allowed"),
        (["tag", "RUN", "k" * 65 + "=x"], "use at most 64"),
        (["note", "RUN", "  "], "a note needs some text"),
    ],
)
def test_bad_tags_and_empty_notes_are_one_line_errors(ended_run, capsys, argv, message):
    argv = [ended_run.run_id if a == "RUN" else a for a in argv]
    assert main(argv) == errors.UsageError.exit_code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not ended_run.annotations.exists()


def test_a_damaged_annotations_file_is_never_overwritten(ended_run, capsys):
    ended_run.annotations.write_text("{not json")
    assert main(["tag", ended_run.run_id, "a=b"]) == errors.RecordError.exit_code
    assert "annotations.json is damaged" in capsys.readouterr().err
    assert ended_run.annotations.read_text() == "{not json"


def test_concurrent_taggers_lose_no_tag_and_no_note(ended_run, runs_root, tmp_path):
    start = tmp_path / "start"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TAGGER, str(runs_root), ended_run.run_id, f"p{n}", str(start), str(CHANGES_EACH)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for n in range(PROCESSES)
    ]
    while len(list(tmp_path.glob("ready-*"))) < PROCESSES and all(p.poll() is None for p in procs):
        time.sleep(0.01)  # until every process has imported expman: then they all start at once
    start.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    data = json.loads(ended_run.annotations.read_text())
    expected = {f"p{n}.k{i}": f"v{i}" for n in range(PROCESSES) for i in range(CHANGES_EACH)}
    assert data["tags"] == expected
    texts = sorted(note["text"] for note in data["notes"])
    assert texts == sorted(f"p{n} note {i}" for n in range(PROCESSES) for i in range(CHANGES_EACH))


def test_show_prints_tags_and_notes(ended_run, capsys):
    assert main(["tag", ended_run.run_id, "group=baseline", "stage=final"]) == 0
    assert main(["note", ended_run.run_id, "the one in the paper"]) == 0
    capsys.readouterr()
    assert main(["show", "--offline", ended_run.run_id]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    assert ["tags"] in lines and ["notes"] in lines
    assert ["group", "baseline"] in lines and ["stage", "final"] in lines
    (note,) = [line for line in out.splitlines() if "the one in the paper" in line]
    assert note.split()[0].startswith(str(utc_now().year))


def test_table_selects_runs_by_tag_with_where(runs_root, capsys):
    runs = {}
    for seed, group in [(1, "a"), (2, "a"), (3, "b")]:
        config = {"train": {"seed": seed}, "expman": {"command": ["python3", "train.py"]}}
        runs[seed] = make_run(runs_root, config, {"score": float(seed)})
        assert main(["tag", runs[seed].name, f"group={group}"]) == 0
    capsys.readouterr()
    assert main(["table", "--where", "tag.group=a", "--value", "score", "--agg", "count", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["n"] for row in rows] == ["2"]
    assert main(["table", "--where", "tag.group!=a", "--value", "score", "--agg", "mean±std", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(row["n"], float(row["center"])) for row in rows] == [("1", 3.0)]
