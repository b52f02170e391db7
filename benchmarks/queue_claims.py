"""Claims per second of expman's job queue with 1, 8 and 32 worker processes, on a SQLite
file and on a PostgreSQL server (Debian's, started here with its default durability).

Each worker process claims a job and marks it succeeded, until the queue is empty; the
clock runs from the moment all workers are connected until the last one is done. Targets:
SQLite >= 500 claims/s and PostgreSQL >= 2,000 claims/s with 8 workers.

    python benchmarks/queue_claims.py [--jobs 3000] [--workers 1 8 32]

Needs root (PostgreSQL runs as the postgres user) and Debian's postgresql (scripts/setup).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

# The repository, for the tests' PostgreSQL daemon helper.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from expman.queue import JobState, NewJob, open_queue  # noqa: E402
from tests.daemons import start_postgres  # noqa: E402

TARGETS = {("sqlite", 8): 500.0, ("postgresql", 8): 2000.0}


def claimer(url: str, ready: multiprocessing.Barrier, counts: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue = open_queue(url, application_name="bench-claimer")
    ready.wait()
    claimed = 0
    while (job := queue.claim("bench")) is not None:
        queue.finish(job, JobState.SUCCEEDED)
        claimed += 1
    counts.put(claimed)
    queue.close()


def measure(url: str, jobs: int, workers: int) -> float:
    queue = open_queue(url)
    queue.add([NewJob(f"k{i}", f"r{i}", f"/runs/r{i}", "", "bench", 0, 3, 600.0, 0.0) for i in range(jobs)])
    ready = multiprocessing.Barrier(workers + 1)
    counts: multiprocessing.Queue[int] = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=claimer, args=(url, ready, counts)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    ready.wait()
    start = time.perf_counter()
    total = sum(counts.get() for _ in procs)
    elapsed = time.perf_counter() - start
    for proc in procs:
        proc.join()
    assert total == jobs, (total, jobs)
    assert queue.counts() == {"succeeded": jobs}
    queue.close()
    return jobs / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="expman-bench-queue-"))
    work.chmod(0o755)  # the postgres user reaches its data directory inside
    postgres = start_postgres(work / "postgres", durable=True)
    results: dict[tuple[str, int], float] = {}
    try:
        for workers in args.workers:
            for kind in ("sqlite", "postgresql"):
                name = f"w{workers}"
                url = f"sqlite://{work / name}.sqlite" if kind == "sqlite" else postgres.create_database(name)
                results[kind, workers] = measure(url, args.jobs, workers)
                print(f"{kind:10} {workers:2} workers: {results[kind, workers]:8.0f} claims/s", flush=True)
    finally:
        postgres.stop()
    print("\n| database | workers | claims/s | target | ratio to target |\n|---|---|---|---|---|")
    failed = False
    for (kind, workers), rate in results.items():
        target = TARGETS.get((kind, workers))
        ratio = f"{rate / target:.2f}x" if target else ""
        failed |= bool(target and rate < target)
        print(f"| {kind} | {workers} | {rate:.0f} | {target or ''} | {ratio} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
