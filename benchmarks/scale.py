"""Looking at many runs: expman's listing, query, table and report commands at 100, 1,000 and
10,000 run directories, cold and warm, against MLflow's ``search_runs`` on the same runs, in
one run.

  corpus    N generated run directories (benchmarks/scale_corpus.py; made once per N and
            kept under --corpus while its marker matches): realistic records, nested
            configs from sweeps of 5 seeds, results.json with 20 keys, small event files.
  expman    each command as a whole ``python -m expman`` in a fresh process, median of
            --rounds with min–max: cold (``<runs_root>/.expman-index`` and ``.expman-cache``
            deleted before each round: the index is built from nothing) and warm (after one
            untimed run); peak RSS of the child (wait4). ``runs`` is offline (no host or
            Slurm asked). A command this checkout does not have (``expman CMD --help``
            fails) prints n/a.
  MLflow    the same N runs logged (once per corpus, kept) by benchmarks/scale_mlflow.py
            into an MLflow file store (a process pool) and a SQLite store (one writer):
            params = the flattened config, metrics = the numeric results, tags = status,
            commit, branch, backend, host, sweep. Then ``mlflow.search_runs`` with a filter and of all runs, median of
            --rounds in one process after its import, against ``expman runs --where ...
            --format json`` and ``expman runs --format json`` (whole processes, warm); the
            ratio is MLflow's time over expman's (above 1: expman is faster).

MLflow is installed in a venv of its own (its pins would disturb expman's) and is run with
--mlflow-python; without it that column is skipped and says so:

    /usr/bin/python3 -m venv /work/venvs/mlflow && /work/venvs/mlflow/bin/pip install mlflow
    python benchmarks/scale.py --mlflow-python /work/venvs/mlflow/bin/python
    python benchmarks/scale.py --runs 100,1000 --rounds 3      # the growth, quickly

Targets (issue 15, at 10,000 runs) are printed next to each figure; nothing is asserted
about time. Needs tensorboard's protobuf classes (pip install -e '.[test]'); no Docker.
The corpus takes ~1 GB of small files at 10,000 runs: keep --corpus out of the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scale_corpus import GENERATOR, ensure_corpus

ROOT = Path(__file__).resolve().parents[1]
MLFLOW_SIDE = Path(__file__).resolve().parent / "scale_mlflow.py"
MB = 1_000_000
INDEX_DIR, CACHE_DIR = ".expman-index", ".expman-cache"
WAYS = ("cold", "warm")
FILTER = {"config": ("train.learning_rate", 0.01), "results": ("eval.accuracy", 0.5)}
QUERY = (
    'SELECT "config.train.env_name" AS game, "config.model.network" AS network, '
    '"config.train.learning_rate" AS lr, count(*) AS runs, avg("results.eval.accuracy") AS accuracy '
    "FROM runs WHERE status = 'succeeded' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)


# --- expman, whole commands ------------------------------------------------------------------


@dataclass
class Command:
    """An expman command line to time; ``target`` says what issue 15 asks of it at 10,000 runs."""

    label: str
    argv: list[str]
    target: str
    output: str | None = None  # a file the command writes (its size is shown)


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    peak_rss: list[int] = field(default_factory=list)
    error: str | None = None


def commands(place: Path) -> list[Command]:
    (key, value), (result, floor) = FILTER["config"], FILTER["results"]
    where = ["--where", f"{key}={value}", "--where", f"{result}>{floor}"]
    table = ["--rows", "train.env_name,model.network", "--cols", "train.learning_rate", "--value", "eval.accuracy"]
    report = str(place / "report.html")
    return [
        Command("runs --limit 40 (newest screenful)", ["runs", "--offline", "--limit", "40"], "warm <= 0.3 s"),
        Command("runs --format json (all)", ["runs", "--offline", "--format", "json"], "<= 2 s, <= 300 MB"),
        Command("runs --where (filter) --format json", ["runs", "--offline", "--format", "json", *where], ""),
        Command("query GROUP BY", ["query", QUERY], "warm <= 0.3 s; cold (index from nothing) <= 3 s"),
        Command("table (markdown)", ["table", *table, "--format", "markdown"], "warm <= 0.5 s"),
        Command("report -o report.html", ["report", "-o", report], "<= 10 s", output=report),
    ]


def child_env(runs_root: Path) -> dict[str, str]:
    """The children import expman from this checkout, whatever is installed."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "EXPMAN_RUNS_ROOT": str(runs_root), "COLUMNS": "200"}


def run_child(argv: list[str], env: dict[str, str], out: Path) -> tuple[float, int, int, str]:
    """Seconds from start to exit, peak RSS in bytes (the child's own, from wait4), exit code
    and the last line of its stderr."""
    with open(out, "wb") as stdout, tempfile.TemporaryFile() as stderr:
        begin = time.perf_counter()
        child = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env, cwd=out.parent)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - begin
        child.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        lines = stderr.read().decode(errors="replace").strip().splitlines()
    return elapsed, usage.ru_maxrss * 1024, child.returncode, lines[-1] if lines else ""


def exists(name: str, env: dict[str, str], place: Path) -> bool:
    return run_child([sys.executable, "-m", "expman", name, "--help"], env, place / "help.txt")[2] == 0


def forget(runs_root: Path) -> None:
    """What makes a command cold: no index, no results cache (the files stay in the page cache)."""
    for name in (INDEX_DIR, CACHE_DIR):
        shutil.rmtree(runs_root / name, ignore_errors=True)


def time_command(command: Command, runs_root: Path, rounds: int, cold: bool) -> Timing:
    env, place = child_env(runs_root), runs_root.parent
    argv = [sys.executable, "-m", "expman", *command.argv]
    timing = Timing()
    if not cold:
        run_child(argv, env, place / "out.txt")
    for _ in range(rounds):
        if cold:
            forget(runs_root)
        seconds, rss, code, last = run_child(argv, env, place / "out.txt")
        if code != 0:
            return Timing(error=f"exit {code}: {last}")
        timing.seconds.append(seconds)
        timing.peak_rss.append(rss)
    return timing


def measure_expman(runs_root: Path, rounds: int) -> dict[str, dict[str, Timing | None]]:
    """Per command label: cold and warm timings; None for a command this checkout lacks."""
    env, place = child_env(runs_root), runs_root.parent
    measured: dict[str, dict[str, Timing | None]] = {}
    for command in commands(place):
        if not exists(command.argv[0], env, place):
            measured[command.label] = {"cold": None, "warm": None}
            continue
        measured[command.label] = {way: time_command(command, runs_root, rounds, way == "cold") for way in WAYS}
        print(f"  measured {command.label}", flush=True)
    forget(runs_root)
    return measured


def mlflow_filter() -> str:
    (key, value), (result, floor) = FILTER["config"], FILTER["results"]
    return f'params."{key}" = \'{value}\' and metrics."{result}" > {floor}'


@dataclass
class Store:
    uri: str
    path: Path
    processes: int  # writers while logging: SQLite takes one (concurrent writers would lock it)

    def remove(self) -> None:
        if self.path.is_dir():
            shutil.rmtree(self.path)
        else:
            self.path.unlink(missing_ok=True)


def mlflow_stores(place: Path) -> dict[str, Store]:
    files, database = place / "mlruns", place / "mlflow.sqlite"
    return {
        "file store": Store(files.as_uri(), files, os.cpu_count() or 2),
        "SQLite store": Store(f"sqlite:///{database}", database, 1),
    }


def call_mlflow(python: str, *args: str) -> dict[str, Any]:
    """scale_mlflow.py run by MLflow's python; its JSON answer."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([python, str(MLFLOW_SIDE), *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise RuntimeError(f"MLflow ({python} {args[0]}): {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ensure_mlflow(python: str, place: Path, runs_root: Path, runs: int) -> dict[str, Store]:
    """Both stores holding the corpus's runs, logged once per corpus (a marker per store)."""
    stores = mlflow_stores(place)
    place.mkdir(parents=True, exist_ok=True)
    for name, store in stores.items():
        marker = place / f"{store.path.name}.json"
        spec = {"runs": runs, "generator": GENERATOR, "python": python}
        if marker.exists() and json.loads(marker.read_text()) == spec:
            continue
        store.remove()  # a half-logged store of a killed run, or one of another corpus
        started = time.perf_counter()
        logged = call_mlflow(python, "log", store.uri, str(runs_root), "--processes", str(store.processes))["logged"]
        marker.write_text(json.dumps(spec))
        print(f"logged {logged:,} runs into MLflow's {name} in {time.perf_counter() - started:.0f} s", flush=True)
    return stores


def measure_mlflow(python: str, place: Path, runs_root: Path, runs: int, rounds: int) -> dict[str, dict[str, Any]]:
    """Per store: search_runs times (filter, all), rows, import time and version."""
    stores = ensure_mlflow(python, place, runs_root, runs)
    search = ["--rounds", str(rounds), "--filter", mlflow_filter()]
    return {name: call_mlflow(python, "search", store.uri, *search) for name, store in stores.items()}


# The expman side of the in-process comparison: load_runs, the Python API that returns the
# same kind of DataFrame search_runs does, timed in a fresh process after its import and one
# untimed call (warm, as the MLflow side's store is after its first query).
LOAD_RUNS_PROBE = """
import json, sys, time
from expman.results import load_runs
root, rounds, where = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
load_runs(root)
out = {"filter": [], "all": []}
for _ in range(rounds):
    for name, given in (("filter", where), ("all", [])):
        begin = time.perf_counter()
        frame = load_runs(root, where=given)
        out[name].append(time.perf_counter() - begin)
        out[name + "_rows"] = len(frame)
print(json.dumps(out))
"""


def measure_load_runs(runs_root: Path, rounds: int) -> dict[str, Any]:
    (key, value), (result, floor) = FILTER["config"], FILTER["results"]
    where = json.dumps([f"{key}={value}", f"{result}>{floor}"])
    argv = [sys.executable, "-c", LOAD_RUNS_PROBE, str(runs_root), str(rounds), where]
    done = subprocess.run(argv, env=child_env(runs_root), capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


# --- report ------------------------------------------------------------------------------------


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} s ({min(values):.{digits}f}–{max(values):.{digits}f})"


def cell(timing: Timing | None) -> str:
    if timing is None:
        return "n/a"
    return f"failed: {timing.error}" if timing.error else spread(timing.seconds)


def report_expman(runs: int, rounds: int, measured: dict[str, dict[str, Timing | None]], place: Path) -> None:
    print()
    print(f"expman, {runs:,} runs: each command a fresh process, median of {rounds} rounds (min–max)")
    print(f"  {'command':<38}{'cold (no index, no cache)':<28}{'warm':<28}{'peak RSS':>9}  target at 10,000 runs")
    for command in commands(place):
        cold, warm = measured[command.label]["cold"], measured[command.label]["warm"]
        peaks = [rss for t in (cold, warm) if t is not None for rss in t.peak_rss]
        peak = f"{max(peaks) / MB:.0f} MB" if peaks else ""
        print(f"  {command.label:<38}{cell(cold):<28}{cell(warm):<28}{peak:>9}  {command.target}")
        if command.output and warm is not None and not warm.error and Path(command.output).exists():
            print(
                f"  {'':<38}{command.output}: {Path(command.output).stat().st_size / MB:.1f} MB (<= 5 MB at 1,000 runs)"
            )


def ratio(theirs: list[float], ours: list[float] | None) -> str:
    return f"{statistics.median(theirs) / statistics.median(ours):.1f}x" if ours else "n/a"


def comparison_row(who: str, rows: int, one_process: str, first: str, whole: str, second: str) -> None:
    print(f"    {who:<22}{rows:>7,}  {one_process:<36}{first:>6}  {whole:<40}{second:>6}")


def report_mlflow(
    measured: dict[str, dict[str, Timing | None]], probe: dict[str, Any], mlflow: dict[str, dict[str, Any]]
) -> None:
    """MLflow's search_runs against expman's load_runs in one process after the imports, and
    as whole processes (MLflow's: its import plus the call) against the warm expman command."""
    version = next(iter(mlflow.values()))["version"]
    print(f"  against MLflow {version} search_runs, the same runs (ratio = MLflow / expman: above 1, expman is faster)")
    header = f"{'in one process, after import':<36}{'ratio':>6}  {'a whole process':<40}{'ratio':>6}"
    print(f"    {'':<22}{'rows':>7}  {header}")
    for way, label, title in (
        ("filter", "runs --where (filter) --format json", f"filter {mlflow_filter()}"),
        ("all", "runs --format json (all)", "all runs"),
    ):
        print(f"  {title}")
        command = measured[label]["warm"]
        ours = command.seconds if command and not command.error else None
        whole = f"{cell(command)} {label.split(' (')[0]}"
        comparison_row("expman", probe[way + "_rows"], f"{spread(probe[way], 3)} load_runs", "", whole, "")
        for name, result in mlflow.items():
            calls, processes = result[way], [result["import_s"] + t for t in result[way]]
            one, whole = spread(calls, 3), f"{spread(processes)} import + call"
            comparison_row(
                f"MLflow {name}", result[way + "_rows"], one, ratio(calls, probe[way]), whole, ratio(processes, ours)
            )


def report_growth(all_measured: dict[int, dict[str, dict[str, Timing | None]]]) -> None:
    sizes = sorted(all_measured)
    print()
    print("growth: medians, cold / warm")
    print(f"  {'command':<38}" + "".join(f"{n:>22,}" for n in sizes))
    for label in next(iter(all_measured.values())):
        row = []
        for n in sizes:
            cold, warm = all_measured[n][label]["cold"], all_measured[n][label]["warm"]
            ok = [t for t in (cold, warm) if t is not None and not t.error]
            row.append(" / ".join(f"{statistics.median(t.seconds):.2f}" for t in ok) if len(ok) == 2 else "n/a")
        print(f"  {label:<38}" + "".join(f"{r:>22}" for r in row))


def bench_size(args: argparse.Namespace, runs: int) -> dict[str, dict[str, Timing | None]]:
    place = args.corpus / str(runs)
    runs_root = ensure_corpus(place, runs)
    measured = measure_expman(runs_root, args.rounds)
    report_expman(runs, args.rounds, measured, place)
    missing = mlflow_missing(args.mlflow_python)
    if missing:
        print(f"  MLflow: skipped ({missing}; see this script's docstring)")
        return measured
    try:
        mlflow = measure_mlflow(args.mlflow_python, place / "mlflow", runs_root, runs, args.rounds)
    except RuntimeError as exc:
        print(f"  MLflow: failed: {exc}")
        return measured
    report_mlflow(measured, measure_load_runs(runs_root, args.rounds), mlflow)
    return measured


def mlflow_missing(python: str | None) -> str | None:
    """Why MLflow cannot be measured with ``python``; None when it can."""
    if python is None:
        return "no --mlflow-python"
    try:
        found = subprocess.run([python, "-c", "import mlflow"], capture_output=True).returncode == 0
    except OSError as exc:
        return f"--mlflow-python {python}: {exc.strerror}"
    return None if found else f"{python} cannot import mlflow"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="100,1000,10000", help="corpus sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per figure")
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/expman-scale-corpus"), help="kept between runs")
    parser.add_argument("--mlflow-python", help="the python of a venv with mlflow installed")
    args = parser.parse_args()
    sizes = [int(n.replace("_", "")) for n in args.runs.split(",")]
    print(f"expman from {ROOT}; corpus under {args.corpus}; {os.cpu_count()} cores", flush=True)
    all_measured = {runs: bench_size(args, runs) for runs in sizes}
    if len(sizes) > 1:
        report_growth(all_measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
