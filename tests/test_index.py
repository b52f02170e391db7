"""The runs index and SQL over it: rows equal to what the run directories say, however the
directories change and however many processes refresh at once; queries checked against
values computed here from the same inputs."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import shutil
import statistics
from pathlib import Path

import pytest

from expman.cli.main import main
from expman.results import load_runs, load_scalars
from expman.results.index import INDEX_DIR, RunsIndex
from expman.results.rows import read_run

from .results_helpers import make_run, scalars, write_events

NETS = ("cnn", "mlp", "lstm")


def _sweep(root: Path, n: int = 30) -> list[Path]:
    runs = []
    rng = random.Random(0)
    for i in range(n):
        config = {"model": {"net": NETS[i % 3]}, "train": {"lr": [0.1, 0.01][i // 3 % 2], "seed": i // 6}}
        status = "failed" if i % 7 == 0 else "succeeded"
        results = {"acc": round(rng.uniform(0, 1), 6), "ok": i % 2 == 0}
        runs.append(make_run(root, config, results, status=status))
    return runs


def _truth(root: Path) -> dict[str, dict]:
    """Every run's row as made straight from its files, the way the index reads one."""
    rows = {}
    for run in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        _, row, _ = read_run(run)
        if row is not None:
            rows[run.name] = row
    return rows


def _indexed(root: Path) -> dict[str, dict]:
    with RunsIndex(root) as index:
        index.refresh()
        columns, rows = index.select()
    out = {}
    for row in rows:
        values = dict(zip(columns, row, strict=True))
        out[values["run_id"]] = {k: v for k, v in values.items() if v is not None}
    return out


def _same(truth: dict[str, dict], indexed: dict[str, dict]) -> None:
    assert set(truth) == set(indexed)
    for run_id, row in truth.items():
        expected = {k: v for k, v in row.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
        got = {k: v for k, v in indexed[run_id].items() if not (isinstance(v, float) and math.isnan(v))}
        assert got == expected, run_id


def test_sql_with_or_in_group_by_and_stddev_matches_values_computed_here(runs_root, capsys):
    runs = _sweep(runs_root)
    rows = []
    for run in runs:
        config = json.loads((run / "config.json").read_text())
        status = json.loads((run / "run.json").read_text())["status"]
        acc = json.loads((run / "output" / "results.json").read_text())["acc"]
        rows.append((config["model"]["net"], config["train"]["lr"], status, acc))
    sql = (
        'SELECT "config.model.net" AS net, count(*) AS n, avg("results.acc") AS mean, stddev("results.acc") AS sd '
        "FROM runs WHERE status = 'succeeded' AND (\"config.train.lr\" = 0.1 OR \"config.model.net\" IN ('mlp')) "
        "GROUP BY net ORDER BY net"
    )
    assert main(["query", sql, "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    expected = []
    for net in sorted(NETS):
        accs = [a for n, lr, s, a in rows if n == net and s == "succeeded" and (lr == 0.1 or n == "mlp")]
        expected.append({"net": net, "n": len(accs), "mean": statistics.fmean(accs), "sd": statistics.stdev(accs)})
    assert [g["net"] for g in got] == [e["net"] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["n"] == e["n"] and g["mean"] == pytest.approx(e["mean"]) and g["sd"] == pytest.approx(e["sd"])


def test_window_functions_and_the_other_formats(runs_root, capsys):
    _sweep(runs_root, 9)
    sql = (
        'SELECT run_id, "config.model.net" AS net, rank() OVER (PARTITION BY "config.model.net" '
        'ORDER BY "results.acc" DESC) AS place, stddev("results.acc") OVER (PARTITION BY "config.model.net") AS sd '
        "FROM runs ORDER BY net, place"
    )
    assert main(["query", sql, "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    by_net = {net: sorted((r for r in got if r["net"] == net), key=lambda r: r["place"]) for net in NETS}
    frame = load_runs(runs_root)
    for net, rows in by_net.items():
        accs = frame[frame["config.model.net"] == net]["results.acc"].tolist()
        assert [r["place"] for r in rows] == [1, 2, 3]
        assert rows[0]["sd"] == pytest.approx(statistics.stdev(accs))
    assert main(["query", "SELECT status, count(*) AS n FROM runs GROUP BY status", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["status,n", "failed,2", "succeeded,7"]
    assert main(["query", "SELECT status, count(*) AS n FROM runs GROUP BY status", "--format", "markdown"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["| status | n |", "|---|---:|"]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC 1", 'near "SELEC": syntax error'),
        ('SELECT "config.nope" + x FROM runs', "no such column: x"),
        ("DELETE FROM runs", "attempt to write a readonly database"),
        ("DROP TABLE runs", "attempt to write a readonly database"),
    ],
)
def test_a_bad_query_is_the_engine_s_message_in_one_line_and_changes_nothing(runs_root, capsys, sql, message):
    _sweep(runs_root, 3)
    assert main(["query", "SELECT count(*) AS n FROM runs", "--format", "json"]) == 0
    capsys.readouterr()
    assert main(["query", sql]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert main(["query", "SELECT count(*) AS n FROM runs", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 3}]


def test_a_run_directory_edited_behind_the_index_s_back_is_seen_at_the_next_refresh(runs_root):
    runs = _sweep(runs_root, 6)
    write_events(runs[1] / "output" / "tb", scalars("loss", range(5)))
    _same(_truth(runs_root), _indexed(runs_root))
    (runs[0] / "output" / "results.json").write_text('{"acc": 0.5, "new": 7}')  # in place, another size
    os.utime(runs[0] / "output" / "results.json", ns=(1, 1))
    record = json.loads((runs[2] / "run.json").read_text())
    with open(runs[2] / "run.json", "r+") as f:  # in place, as an editor might
        f.write(json.dumps({**record, "status": "cancelled"}))
    (runs[3] / "annotations.json").write_text('{"tags": {"paper": "fig2"}}')
    write_events(runs[1] / "output" / "tb", scalars("loss", range(5, 9)))  # a new event file
    (runs[4] / "config.json").write_text('{"model": {"net": "gru"}}')
    shutil.rmtree(runs[5])
    make_run(runs_root, {"model": {"net": "new"}}, {"acc": 1.0})
    (runs_root / "not-a-run").mkdir()
    indexed = _indexed(runs_root)
    _same(_truth(runs_root), indexed)
    assert indexed[runs[0].name]["results.new"] == 7 and indexed[runs[2].name]["status"] == "cancelled"
    assert indexed[runs[3].name]["tag.paper"] == "fig2" and indexed[runs[1].name]["tb:tb/loss:last"] == 4.0
    assert indexed[runs[4].name]["config.model.net"] == "gru" and runs[5].name not in indexed
    assert len(indexed) == 6


def test_deleting_or_damaging_the_index_loses_nothing(runs_root):
    _sweep(runs_root, 12)
    before = load_runs(runs_root)
    shutil.rmtree(runs_root / INDEX_DIR)
    assert load_runs(runs_root).equals(before)
    (index_file,) = (runs_root / INDEX_DIR).glob("*.sqlite")
    for suffix in ("-wal", "-shm"):
        Path(f"{index_file}{suffix}").unlink(missing_ok=True)
    index_file.write_bytes(b"not a database at all" * 100)
    assert load_runs(runs_root).equals(before)


def test_bools_nans_and_keys_differing_only_in_case_survive(runs_root):
    make_run(runs_root, {"LR": 1, "lr": 2}, '{"ok": true, "loss": NaN, "big": 123456789012345678901234567890}')
    row = load_runs(runs_root).iloc[0]
    assert row["config.LR"] == 1 and row["config.lr"] == 2
    assert row["results.ok"] is True or row["results.ok"] == True  # noqa: E712 (numpy's bool)
    assert math.isnan(row["results.loss"]) and int(row["results.big"]) == 123456789012345678901234567890


def _refresh_in_child(root: str, rounds: int, queue: multiprocessing.Queue) -> None:
    try:
        for _ in range(rounds):
            with RunsIndex(Path(root)) as index:
                index.refresh()
                index.select()
        queue.put("ok")
    except BaseException as exc:  # noqa: BLE001 (reported to the parent)
        queue.put(repr(exc))


def test_eight_processes_refreshing_at_once_while_runs_change_stay_consistent(runs_root):
    runs = _sweep(runs_root, 120)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_refresh_in_child, args=(str(runs_root), 6, queue)) for _ in range(8)]
    for child in children:
        child.start()
    rng = random.Random(1)
    for step in range(40):
        run = rng.choice(runs)
        (run / "output" / "results.json").write_text(json.dumps({"acc": step / 40, "step": step}))
        if step % 10 == 0:
            make_run(runs_root, {"model": {"net": "late"}}, {"acc": step, f"new{step}": step})  # new columns
    results = [queue.get(timeout=300) for _ in children]
    for child in children:
        child.join(60)
    assert results == ["ok"] * 8
    _same(_truth(runs_root), _indexed(runs_root))
    with RunsIndex(runs_root) as index:
        (files,) = index.db.execute("SELECT count(*) FROM files").fetchone()
        (rows,) = index.db.execute("SELECT count(*) FROM runs").fetchone()
    assert files == rows == 124


def test_the_compiled_signatures_equal_the_python_ones(runs_root):
    from expman.results import index

    require_compiled = os.environ.get("CI") == "true"
    try:
        from expman.results import _signatures
    except ImportError:
        assert not require_compiled, "the compiled signatures module was not built"
        pytest.skip("no compiled signatures module")
    run = make_run(runs_root, {"a": 1}, {"acc": 1})
    weird = os.fsencode(run / "output") + b"/d\xff \xc3\xbc"  # a name that is not UTF-8
    os.mkdir(weird)
    with open(weird + b"/events.out.tfevents.1.host", "wb") as f:
        f.write(b"x" * 10)
    watched, signature = index._watch(str(run))
    assert signature == index._py_signature(str(run), watched)
    assert os.fsdecode(b"d\xff \xc3\xbc/events.out.tfevents.1.host") in watched
    for base in (str(run), str(run / "missing"), str(runs_root)):
        assert _signatures.quick(base) == index._py_quick_signature(base)
        assert _signatures.full(base, watched) == index._py_signature(base, watched)
    assert _signatures.full(str(run), "x" * 5000) == "-"
    assert _signatures.quick(str(run) + "/" + "y" * 5000) is None


def test_a_run_with_a_bad_parse_pattern_of_its_own_is_flagged_and_the_others_load(runs_root):
    make_run(runs_root, {"a": 1}, {"acc": 0.5})
    make_run(runs_root, {"a": 2, "expman": {"parse": {"bad": "(unclosed"}}}, {"acc": 0.7}, stdout="x\n")
    frame = load_runs(runs_root)
    assert frame["results.acc"].tolist() == [0.5, 0.7]
    assert frame["partial"].tolist() == [False, True]
    assert "config.json" in frame["problems"][1] and "regular expression" in frame["problems"][1]


def test_stdout_is_watched_only_for_runs_that_parse_it(runs_root):
    parsing = make_run(runs_root, {"expman": {"parse": {"acc": "acc=(@float@)"}}}, stdout="acc=0.5\n")
    plain = make_run(runs_root, {"a": 1}, {"acc": 1.0}, stdout="hello\n")
    with RunsIndex(runs_root) as index:
        assert index.refresh() == 2
        with open(plain / "logs" / "stdout.log", "a") as f:
            f.write("more output, no metric\n")
        assert index.refresh() == 0
        with open(parsing / "logs" / "stdout.log", "a") as f:
            f.write("acc=0.75\n")
        assert index.refresh() == 1
    assert load_runs(runs_root)["results.acc"].tolist() == [0.75, 1.0]


def _refresh_slowly(root: str) -> None:
    with RunsIndex(Path(root)) as index:
        index.refresh()


def test_a_refresher_killed_at_any_moment_leaves_an_index_the_next_one_completes(runs_root):
    _sweep(runs_root, 600)
    ctx = multiprocessing.get_context("fork")
    killed = 0
    for delay in (0.01, 0.05, 0.1, 0.2, 0.4):
        shutil.rmtree(runs_root / INDEX_DIR, ignore_errors=True)
        child = ctx.Process(target=_refresh_slowly, args=(str(runs_root),))
        child.start()
        child.join(delay)
        if child.is_alive():
            os.kill(child.pid, 9)
            killed += 1
        child.join()
        _same(_truth(runs_root), _indexed(runs_root))
    assert killed >= 2


def test_a_run_whose_run_json_went_away_leaves_the_index(runs_root):
    runs = _sweep(runs_root, 3)
    assert len(_indexed(runs_root)) == 3
    (runs[1] / "run.json").unlink()  # as gc leaves it for a moment, or a hand
    assert set(_indexed(runs_root)) == {runs[0].name, runs[2].name}


def test_an_index_that_cannot_be_written_is_one_line(runs_root, capsys):
    _sweep(runs_root, 2)
    assert main(["query", "SELECT count(*) FROM runs"]) == 0
    make_run(runs_root, {"a": 3}, {"acc": 1})
    (index_file,) = (runs_root / INDEX_DIR).glob("*.sqlite")
    blocker = RunsIndex(runs_root)
    blocker.db.execute("BEGIN IMMEDIATE")  # holds the write lock, as a stopped refresher would
    try:
        import expman.results.index as index_module

        real = index_module._BUSY_TIMEOUT_MS
        index_module._BUSY_TIMEOUT_MS = 100
        try:
            capsys.readouterr()
            assert main(["query", "SELECT count(*) FROM runs"]) == 35
        finally:
            index_module._BUSY_TIMEOUT_MS = real
    finally:
        blocker.db.execute("ROLLBACK")
        blocker.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "database is locked" in err and str(index_file) in err.replace("\n", "")
    assert main(["query", "SELECT count(*) AS n FROM runs", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 3}]


def test_reruns_are_listed_but_are_no_samples_of_tables(runs_root, capsys):
    original = make_run(runs_root, {"lr": 0.1, "seed": 1}, {"acc": 0.5})
    make_run(runs_root, {"lr": 0.1, "seed": 2}, {"acc": 0.7})
    rerun = make_run(runs_root, {"lr": 0.1, "seed": 1}, {"acc": 0.5})
    record = json.loads((rerun / "run.json").read_text())
    (rerun / "run.json").write_text(json.dumps({**record, "rerun_of": original.name}))
    assert len(load_runs(runs_root)) == 3 and len(load_runs(runs_root, reruns=False)) == 2
    for extra in ([], ["--no-cache"]):  # from the index's rows, and from a frame
        assert main(["table", "--value", "acc", "--format", "json", *extra]) == 0
        (cell,) = json.loads(capsys.readouterr().out)["cells"]
        assert cell["n"] == 2 and cell["center"] == pytest.approx(0.6)


def test_a_bool_in_one_run_leaves_the_integers_of_others_alone(runs_root, capsys):
    make_run(runs_root, {"early_stop": False}, '{"acc": NaN, "ok": true}')
    make_run(runs_root, {"early_stop": 5}, '{"acc": 0.5, "ok": 1}')
    make_run(runs_root, {"early_stop": 1}, '{"ok": false}')
    for cache in (True, False):  # through the index, and straight from the files
        frame = load_runs(runs_root, cache=cache)
        assert frame["config.early_stop"].tolist() == [False, 5, 1]
        assert [type(v) for v in frame["config.early_stop"]] == [bool, int, int]
        assert frame["results.ok"].tolist() == [True, 1, False]
        assert math.isnan(frame["results.acc"][0]) and frame["results.acc"][1] == 0.5
    assert main(["table", "--rows", "early_stop", "--value", "acc", "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4  # a header and three rows: 5 and 1 apart


def test_one_run_with_odd_or_too_many_keys_leaves_the_others_readable(runs_root, capsys):
    make_run(runs_root, {"a": 1}, '{"acc": 0.5, "odd\\u0000key": 1, "s\\ud800": "x\\ud800y"}')
    per_class = {f"c{i}": i for i in range(2100)}
    make_run(runs_root, {"a": 2}, {"acc": 0.6, "per_class": per_class})
    make_run(runs_root, {"a": 3}, {"acc": 0.7})
    frame = load_runs(runs_root)
    assert frame["results.acc"].tolist() == [0.5, 0.6, 0.7]
    assert frame["partial"].tolist() == [False, True, False]
    assert "left out of the runs index" in frame["problems"][1]
    assert frame["results.odd\\x00key"][0] == 1 and frame["results.s\\ud800"][0] == "x\\ud800y"
    assert main(["table", "--value", "acc", "--rows", "a", "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert load_runs(runs_root, cache=False)["results.per_class.c2099"][1] == 2099  # the files have them all


def test_a_directory_named_like_an_event_file_is_no_event_file(runs_root):
    run = make_run(runs_root, {"a": 1}, {"acc": 1})
    (run / "output" / "tfevents").mkdir()
    write_events(run / "output" / "tfevents", scalars("loss", range(3)))
    frame = load_runs(runs_root)
    assert frame["tb:tfevents/loss:last"][0] == 1.0 and not frame["partial"][0]
    assert len(load_scalars(runs_root)) == 3
