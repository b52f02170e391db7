"""Loading results: expman against TensorBoard's EventAccumulator and stdlib json, in one run.

Generates (once; reused from --corpus) 450 run directories, each with a ~400 KB
results.json and 6 tags x 2,000 steps of scalars written by TensorBoard's own
EventFileWriter (5.4 M scalars, ~300 MB), then measures, median of --repeats:

  scalars cold   load_scalars with no cache entries yet (it parses every file, CRC on,
                 and writes the cache), and with the cache disabled, against
                 EventAccumulator(size_guidance={'scalars': 0}) + a DataFrame;
                 the point counts and values must be identical
  scalars warm   load_scalars with the cache filled, against the same
  results.json   load_runs(scalar_stats=()) cold and warm, against json.load of every file
  memory         peak RSS growth of a fresh process loading all scalars, against the
                 size of the loaded frame (float64 values, int64 steps, category codes)

Prints times and ratios; asserts nothing about time (targets: cold >= 100x, warm >= 500x,
results.json >= 2.5x, memory <= 2x). Needs tensorboard (pip install -e '.[test]').

    python benchmarks/load_results.py                 # the full corpus, ~10 min
    python benchmarks/load_results.py --runs 40       # a quick look
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from expman.results import load_runs, load_scalars
from expman.results.cache import CACHE_DIR
from expman.results.tfevents import has_compiled_reader

TAGS = ["eprewmean", "eplenmean", "loss/policy", "loss/value", "entropy", "fps"]


def make_run(args: tuple[Path, int, int, int]) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    root, index, steps, n_tags = args
    rng = random.Random(index)
    run = root / f"20261122-000000-{index:03d}-bench"
    (run / "output" / "tb").mkdir(parents=True, exist_ok=True)
    (run / "logs").mkdir(exist_ok=True)
    config = {"model": {"network": ["cnn", "impala", "lstm", "mlp", "rnn"][index % 5]}}
    config["train"] = {"env_name": f"game{index // 5 % 18}", "train_seed": index // 90}
    record = {"run_id": run.name, "status": "succeeded", "git": {"commit": "0" * 40, "branch": "experiments"}}
    (run / "run.json").write_text(json.dumps(record))
    (run / "config.json").write_text(json.dumps(config))
    returns = [[rng.gauss(100, 30) for _ in range(10_000)] for _ in range(2)]
    results = {"eval": {"mean": statistics.fmean(returns[0]), "episode_returns": returns[0]}}
    results["train"] = {"episode_returns": returns[1], "fps": rng.uniform(500, 2000), "steps": steps * 1000}
    (run / "output" / "results.json").write_text(json.dumps(results))
    writer = EventFileWriter(str(run / "output" / "tb"))
    for step in range(steps):
        for tag in TAGS[:n_tags]:
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=rng.random())])
            writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    writer.close()


def ensure_corpus(root: Path, runs: int, steps: int, n_tags: int) -> None:
    marker = root / "corpus.json"
    spec = {"runs": runs, "steps": steps, "tags": n_tags}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.perf_counter()
    print(f"generating {runs} runs x {n_tags} tags x {steps} steps with TensorBoard's writer ...", flush=True)
    with multiprocessing.Pool() as pool:
        for done, _ in enumerate(pool.imap_unordered(make_run, [(root, i, steps, n_tags) for i in range(runs)]), 1):
            if done % 50 == 0:
                print(f"  {done}/{runs}", flush=True)
    marker.write_text(json.dumps(spec))
    print(f"generated in {time.perf_counter() - started:.0f}s", flush=True)


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "run.json").exists())


def event_accumulator_frame(root: Path) -> pd.DataFrame:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    frames = []
    for run in run_dirs(root):
        acc = EventAccumulator(str(run / "output" / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            events = acc.Scalars(tag)
            frames.append(
                pd.DataFrame(
                    {
                        "run_id": run.name,
                        "tag": "tb/" + tag,
                        "step": [e.step for e in events],
                        "wall_time": [e.wall_time for e in events],
                        "value": [e.value for e in events],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def stdlib_json(root: Path) -> list:
    documents = []
    for run in run_dirs(root):
        with open(run / "output" / "results.json") as f:
            documents.append(json.load(f))
    return documents


def timed(fn, repeats: int, before=None) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        if before:
            before()
        result = None
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def same_points(ours: pd.DataFrame, theirs: pd.DataFrame) -> bool:
    keys = ["run_id", "tag", "step"]
    a = ours.astype({"run_id": str, "tag": str}).sort_values(keys, kind="stable").reset_index(drop=True)
    b = theirs.sort_values(keys, kind="stable").reset_index(drop=True)
    if len(a) != len(b):
        return False
    columns = ("run_id", "tag", "step", "wall_time", "value")
    return all(np.array_equal(a[c].to_numpy(), b[c].to_numpy()) for c in columns)


def memory_probe(root: Path, mode: str) -> dict:
    """In a fresh process: RSS growth while loading every scalar, against the frame's size."""
    code = (
        "import json, sys\n"
        "from expman.results import load_scalars\n"
        "def rss(field):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(field): return int(line.split()[1]) * 1024\n"
        "before = rss('VmRSS:')\n"
        f"frame = load_scalars(sys.argv[1], cache={mode != 'no-cache'!r})\n"
        "peak = rss('VmHWM:')\n"
        "size = int(frame.memory_usage(deep=True).sum())\n"
        "print(json.dumps({'growth': peak - before, 'frame': size, 'points': len(frame)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=450)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--tags", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/expman-bench-corpus"))
    args = parser.parse_args()
    root = args.corpus / f"runs-{args.runs}x{args.tags}x{args.steps}"
    ensure_corpus(root, args.runs, args.steps, args.tags)
    size = sum(f.stat().st_size for f in root.rglob("*tfevents*"))
    print(f"corpus: {root} ({args.runs} runs, {size / 1e6:.0f} MB of event files)")
    print(f"compiled reader: {has_compiled_reader()}")

    def drop_cache() -> None:
        shutil.rmtree(root / CACHE_DIR, ignore_errors=True)

    ea_s, ea_frame = timed(lambda: event_accumulator_frame(root), args.repeats)
    print(f"EventAccumulator + DataFrame: {ea_s:.2f}s, {len(ea_frame):,} points", flush=True)
    cold_s, cold_frame = timed(lambda: load_scalars(root), args.repeats, before=drop_cache)
    nocache_s, nocache_frame = timed(lambda: load_scalars(root, cache=False), args.repeats)
    warm_s, warm_frame = timed(lambda: load_scalars(root), args.repeats)
    identical = all(same_points(f, ea_frame) for f in (cold_frame, nocache_frame, warm_frame))
    del ea_frame, cold_frame, nocache_frame, warm_frame

    json_s, _ = timed(lambda: stdlib_json(root), args.repeats)
    rows_cold_s, _ = timed(lambda: load_runs(root, scalar_stats=(), cache=False), args.repeats)
    load_runs(root, scalar_stats=())
    rows_warm_s, _ = timed(lambda: load_runs(root, scalar_stats=()), args.repeats)

    drop_cache()
    memory = {mode: memory_probe(root, mode) for mode in ("cold", "warm", "no-cache")}

    print()
    print(f"{'measure':<44}{'seconds':>10}{'ratio':>10}  target")
    print(f"{'scalars: EventAccumulator + DataFrame':<44}{ea_s:>10.3f}")
    print(f"{'scalars: expman cold (parse, CRC, cache write)':<44}{cold_s:>10.3f}{ea_s / cold_s:>9.0f}x  >= 100x")
    print(f"{'scalars: expman, cache disabled':<44}{nocache_s:>10.3f}{ea_s / nocache_s:>9.0f}x  >= 100x")
    print(f"{'scalars: expman warm cache':<44}{warm_s:>10.3f}{ea_s / warm_s:>9.0f}x  >= 500x")
    print(f"{'  identical point counts and values':<44}{str(identical):>10}")
    print(f"{'results.json: stdlib json.load':<44}{json_s:>10.3f}")
    print(f"{'results.json: expman load_runs, no cache':<44}{rows_cold_s:>10.3f}{json_s / rows_cold_s:>9.1f}x  >= 2.5x")
    print(f"{'results.json: expman load_runs, warm cache':<44}{rows_warm_s:>10.3f}{json_s / rows_warm_s:>9.1f}x")
    for mode, m in memory.items():
        label, ratio = f"peak memory growth / frame size ({mode})", m["growth"] / m["frame"]
        print(f"{label:<44}{m['growth'] / 1e6:>8.0f}MB{ratio:>9.2f}x  <= 2x (frame {m['frame'] / 1e6:.0f} MB)")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
