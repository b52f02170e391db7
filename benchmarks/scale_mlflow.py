"""The MLflow side of benchmarks/scale.py, run by the python of a venv with mlflow installed
(scale.py's --mlflow-python): MLflow's pins stay out of expman's environment, and this file
imports nothing of expman.

    PYTHON benchmarks/scale_mlflow.py log STORE_URI RUNS_ROOT [--processes N]
    PYTHON benchmarks/scale_mlflow.py search STORE_URI --rounds N --filter "params.x = '1'"

``log`` logs every run directory under RUNS_ROOT into the store's experiment "expman-scale"
(params = the flattened config.json, metrics = the numeric values of results.json, tags =
run id, status, backend, host, commit, branch, sweep; start and end times and the final
status from run.json), ``--processes`` at a time. ``search`` times ``mlflow.search_runs``
with the filter and of all runs, in this one process after its import, and prints the times
and row counts as one JSON line. The file store is in maintenance mode in MLflow 3, so
MLFLOW_ALLOW_FILE_STORE is set.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED", "lost": "FAILED"}
EXPERIMENT = "expman-scale"


def flatten(node: dict[str, Any], prefix: str = "", flat: dict[str, Any] | None = None) -> dict[str, Any]:
    """Dotted keys, as expman flattens a config: a list or an empty object is one value, as compact JSON."""
    flat = {} if flat is None else flat
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flatten(value, name + ".", flat)
        else:
            flat[name] = json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else value
    return flat


def millis(stamp: str | None) -> int | None:
    return int(datetime.fromisoformat(stamp).timestamp() * 1000) if stamp else None


def numbers(flat: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def read_run(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, float], dict[str, str]]:
    """The record, params (the flattened config), metrics (numeric results), tags (record fields)."""
    record = json.loads((path / "run.json").read_text())
    params = flatten(json.loads((path / "config.json").read_text()))
    results = path / "output" / "results.json"
    metrics = numbers(flatten(json.loads(results.read_text()))) if results.exists() else {}
    tags = {k: str(record[k]) for k in ("run_id", "status", "backend", "host")}
    tags.update(commit=record["git"]["commit"], branch=record["git"]["branch"])
    tags["sweep"] = (record["sweep"] or {}).get("id", "")
    return record, params, metrics, tags


def log_runs(job: tuple[str, str, list[str]]) -> int:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri, experiment_id, paths = job
    client = MlflowClient(tracking_uri=uri)
    for path in map(Path, paths):
        record, params, metrics, tags = read_run(path)
        started = millis(record["started_at"] or record["queued_at"])
        run = client.create_run(experiment_id, start_time=started, run_name=record["run_id"]).info.run_id
        client.log_batch(
            run,
            metrics=[Metric(k, v, started, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        if record["status"] in STATUS:
            client.set_terminated(run, status=STATUS[record["status"]], end_time=millis(record["ended_at"]))
    return len(paths)


def log(uri: str, runs_root: Path, processes: int) -> int:
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient(tracking_uri=uri).create_experiment(EXPERIMENT)
    paths = sorted(str(p) for p in runs_root.iterdir() if (p / "run.json").is_file())
    jobs = [(uri, experiment_id, paths[i : i + 200]) for i in range(0, len(paths), 200)]
    if processes > 1:
        with multiprocessing.Pool(processes) as pool:
            return sum(pool.imap_unordered(log_runs, jobs))
    return sum(map(log_runs, jobs))


def search(uri: str, rounds: int, filter_string: str) -> dict[str, Any]:
    begin = time.perf_counter()
    import mlflow

    imported = time.perf_counter() - begin
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    out: dict[str, Any] = {"import_s": imported, "version": mlflow.__version__, "filter": [], "all": []}
    for _ in range(rounds):
        for name, given in (("filter", filter_string), ("all", None)):
            begin = time.perf_counter()
            frame = mlflow.search_runs(experiment_ids=[experiment_id], filter_string=given or "")
            out[name].append(time.perf_counter() - begin)
            out[name + "_rows"] = len(frame)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    log_parser = commands.add_parser("log", help="log every run under RUNS_ROOT")
    log_parser.add_argument("store")
    log_parser.add_argument("runs_root", type=Path)
    log_parser.add_argument("--processes", type=int, default=1)
    search_parser = commands.add_parser("search", help="time search_runs")
    search_parser.add_argument("store")
    search_parser.add_argument("--rounds", type=int, default=5)
    search_parser.add_argument("--filter", required=True)
    args = parser.parse_args()
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if args.command == "log":
        print(json.dumps({"logged": log(args.store, args.runs_root, args.processes)}))
    else:
        print(json.dumps(search(args.store, args.rounds, args.filter)))


if __name__ == "__main__":
    main()
