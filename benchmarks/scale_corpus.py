"""Generated run directories for benchmarks/scale.py, or on their own: N runs shaped like
real ones, written by a process pool into ``<corpus>/<N>/runs`` and kept while the marker
``<corpus>/<N>/corpus.json`` matches (a changed generator or N makes them again).

Each run has run.json as a queued run of a local or process worker writes it (git, image,
host facts, attempts, queue, a sweep combination or a search point; ~92% succeeded, the rest
failed or cancelled, every 37th retried once, the newest 0.5% queued), config.json with
nested keys (sweeps of 4 learning rates x 3 networks x 5 seeds per commit, one commit per 60
runs, over 9 games), results.json with 20 keys for a succeeded run, logs, a code.tar per
commit (hard links), an event file of 3 tags x 50 steps, and on every 25th run
annotations.json (tags and notes). The event records are framed here (length, masked
CRC32C, the serialized Event), so no TensorFlow is needed, only tensorboard's protobuf
classes (and the compiled reader's CRC when it was built).

    python benchmarks/scale_corpus.py --runs 10000 [--corpus /tmp/expman-scale-corpus]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import random
import shutil
import struct
import sys
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:  # the compiled reader's CRC, ~50x the pure-Python one that stands in without it
    from expman.results._tfevents import masked_crc32c  # noqa: E402
except ImportError:
    from expman.results.tfevents import masked_crc32c  # noqa: E402

GENERATOR = 3  # bump when the corpus changes shape: a stale corpus is made again
SWEEP_SIZE = 60
LEARNING_RATES = (0.0003, 0.001, 0.003, 0.01)
NETWORKS = ("nature_cnn", "impala", "lstm")
GAMES = ("pong", "breakout", "seaquest", "qbert", "enduro", "beamrider", "spaceinvaders", "asteroids", "mspacman")
HOSTS = ("vm", "gpu1", "gpu2", "gpu3")
TAGS = ("loss", "eprewmean", "entropy")
STEPS = 50
MB = 1_000_000


class RunPlan:
    """What run ``index`` of ``total`` is: its sweep, point, fate and how good it came out."""

    def __init__(self, index: int, total: int) -> None:
        self.index, self.rng = index, random.Random(index)
        self.sweep, point = divmod(index, SWEEP_SIZE)
        self.seed = point % 5
        self.learning_rate = LEARNING_RATES[point // 5 % len(LEARNING_RATES)]
        self.network = NETWORKS[point // 20]
        self.game = GAMES[self.sweep % len(GAMES)]
        self.commit = hashlib.sha1(f"commit {self.sweep}".encode()).hexdigest()
        self.searched = self.sweep % 10 == 9  # every tenth commit ran a search, not a grid
        self.host = HOSTS[self.sweep % len(HOSTS)]
        self.backend = "process" if self.sweep % 4 == 3 else "local"
        self.queued_at = datetime(2026, 1, 5, tzinfo=UTC) + timedelta(seconds=97 * index)
        self.status = self._fate(total)
        self.run_id = f"{self.queued_at:%Y%m%d-%H%M%S}-{index % 1000:03d}-{self.rng.getrandbits(16):04x}"
        self.quality = self._quality()

    def _fate(self, total: int) -> str:
        if self.index >= total - max(1, total // 200):
            return "queued"
        roll = self.rng.random()
        return "succeeded" if roll < 0.92 else "failed" if roll < 0.97 else "cancelled"

    def _quality(self) -> float:
        """An optimum learning rate per network, harder games, noise per seed: the results
        and the curves of the event file both follow it."""
        best = {"nature_cnn": 0.003, "impala": 0.001, "lstm": 0.0003}[self.network]
        miss = abs(LEARNING_RATES.index(self.learning_rate) - LEARNING_RATES.index(best))
        return max(0.05, 0.9 - 0.15 * miss - 0.02 * GAMES.index(self.game) + self.rng.gauss(0, 0.03))


def make_config(plan: RunPlan) -> dict[str, Any]:
    expman = {
        "branch": "experiments",
        "command": ["python3", "train.py"],
        "resources": {"cpus": 2, "memory": "8g", "gpus": 0 if plan.backend == "process" else 1, "timeout": "2h"},
    }
    return {
        "expman": expman,
        "model": {"network": plan.network, "hidden_sizes": [256, 256], "activation": "relu", "dropout": 0.1},
        "train": {
            "env_name": plan.game,
            "learning_rate": plan.learning_rate,
            "train_seed": plan.seed,
            "steps": 1_000_000,
            "batch_size": 256,
            "gamma": 0.99,
            "optimizer": {"name": "adam", "eps": 1e-8, "betas": [0.9, 0.999]},
            "schedule": {"warmup_steps": 1000, "decay": "cosine"},
        },
        "eval": {"eval_seed": 1000 + plan.seed, "episodes": 100, "deterministic": True},
        "data": {"frame_stack": 4, "frame_skip": 4, "sticky_actions": 0.25},
    }


def make_results(plan: RunPlan) -> dict[str, Any]:
    """Twenty keys, as a training script of an RL paper writes them."""
    q, rng = plan.quality, plan.rng
    mean = 21 * q + rng.gauss(0, 0.5)
    evaluation = {
        "accuracy": round(q, 4),
        "mean_return": mean,
        "std_return": abs(rng.gauss(3, 0.5)),
        "median_return": mean + rng.gauss(0, 0.3),
        "min_return": mean - 8,
        "max_return": mean + 6,
        "success_rate": min(1.0, q * 1.05),
        "episodes": 100,
        "mean_length": int(2000 + 3000 * q),
    }
    train = {
        "final_loss": (1 - q) * 2 + abs(rng.gauss(0, 0.05)),
        "best_return": mean + 4,
        "fps": rng.uniform(800, 2400),
        "steps": 1_000_000,
        "updates": 3906,
        "wall_time_s": rng.uniform(600, 3600),
        "entropy": rng.uniform(0.1, 1.2),
        "value_loss": rng.uniform(0.01, 0.5),
        "policy_loss": rng.uniform(-0.05, 0.05),
        "kl": rng.uniform(0.001, 0.02),
    }
    return {"eval": evaluation, "train": train, "best_step": rng.randrange(0, 1_000_000, 10_000)}


def event_record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC32C, the data, its masked CRC32C."""
    head = struct.pack("<Q", len(data))
    return head + struct.pack("<I", masked_crc32c(head)) + data + struct.pack("<I", masked_crc32c(data))


def varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def scalar_event(wall_time: float, step: int, tag: str, value: float) -> bytes:
    """tensorflow.Event{wall_time, step, summary{value{tag, simple_value}}}, serialized by hand:
    building protobuf objects was most of the corpus's generation time."""
    item = field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", value)
    step_field = b"\x10" + varint(step) if step else b""  # proto3 leaves a zero out
    return b"\x09" + struct.pack("<d", wall_time) + step_field + field_bytes(5, field_bytes(1, item))


def event_file(plan: RunPlan, wall_time: float) -> bytes:
    """A TensorBoard event file: the version record, then TAGS x STEPS scalars."""
    version = b"\x09" + struct.pack("<d", wall_time) + field_bytes(3, b"brain.Event:2")
    chunks = [event_record(version)]
    q = plan.quality
    for step in range(STEPS):
        progress = (step + 1) / STEPS
        values = {"loss": (1 - q * progress) * 2, "eprewmean": 21 * q * progress, "entropy": 1.5 - progress}
        for tag in TAGS:
            event = scalar_event(wall_time + step * 20, step * 20_000, tag, values[tag] + plan.rng.gauss(0, 0.05))
            chunks.append(event_record(event))
    return b"".join(chunks)


def host_facts(host: str) -> dict[str, Any]:
    gpus = [] if host == "vm" else [{"name": "NVIDIA A100-SXM4-40GB", "memory_mb": 40960, "driver": "550.54.15"}]
    return {
        "cpu_count": 2 if host == "vm" else 32,
        "cpu_model": "Intel(R) Xeon(R) Processor",
        "gpus": gpus,
        "hostname": host,
        "kernel": "6.1.0-18-amd64",
        "memory_bytes": 25324732416 if host == "vm" else 270_000_000_000,
        "os": "Debian GNU/Linux 12 (bookworm)",
    }


def git_info(plan: RunPlan) -> dict[str, Any]:
    return {
        "author": "A. Researcher",
        "author_email": "researcher@example.org",
        "branch": "experiments",
        "commit": plan.commit,
        "commit_date": (plan.queued_at - timedelta(minutes=3)).isoformat(),
        "export_attributes": None,
        "remote_url": "git@example.org:lab/atari-agents.git",
        "repository": "/home/researcher/src/atari-agents",
        "subject": f"Set train.env_name = {plan.game}" if plan.sweep % 3 else "Sweep learning rate and network",
    }


def image_info(plan: RunPlan) -> dict[str, Any]:
    if plan.backend == "process":
        return dict.fromkeys(("dockerfile", "dockerfile_hash", "engine_version", "image_id", "image_tag"))
    return {
        "dockerfile": "Dockerfile",
        "dockerfile_hash": hashlib.sha256(b"Dockerfile").hexdigest(),
        "engine_version": "20.10.24+dfsg1",
        "image_id": "sha256:" + hashlib.sha256(plan.commit.encode()).hexdigest(),
        "image_tag": f"expman/atari-agents:{plan.commit[:12]}",
    }


def placement(plan: RunPlan, config_hash: str) -> dict[str, Any]:
    """How the run was queued: a sweep combination or a search point, and its queue job."""
    key = hashlib.sha256(f"{plan.commit}{config_hash}".encode()).hexdigest()
    queue = {"url": "sqlite:///home/researcher/runs/.queue.sqlite", "key": key}
    point = plan.index % SWEEP_SIZE
    if plan.searched:
        study = f"search-{plan.commit[:8]}-{config_hash[:8]}"
        params = {"train.learning_rate": plan.learning_rate, "model.network": plan.network}
        return {"queue": queue, "sweep": None, "search": {"study": study, "trial": point, "params": params}}
    values = {"model.network": plan.network, "train.learning_rate": plan.learning_rate}
    label = f"model.network={plan.network} train.learning_rate={plan.learning_rate} seed {plan.seed}"
    sweep = {"id": f"{plan.commit[:8]}-{config_hash[:8]}", "index": point, "count": SWEEP_SIZE}
    sweep.update(repeat=plan.seed, values=values, label=label)
    return {"queue": queue, "sweep": sweep, "search": None}


def timeline(plan: RunPlan, results: dict[str, Any] | None) -> dict[str, Any]:
    """The times, exit and attempts of the run's fate (a retried run failed once first)."""
    if plan.status == "queued":
        return {"attempts": []}
    started = plan.queued_at + timedelta(seconds=plan.rng.uniform(5, 120))
    duration_s = round(results["train"]["wall_time_s"] if results else plan.rng.uniform(30, 900), 3)
    ended = started + timedelta(seconds=duration_s)
    exit_code = {"succeeded": 0, "failed": 1, "cancelled": -15}[plan.status]
    reason = {"failed": "the program exited with 1", "cancelled": "cancelled by researcher"}.get(plan.status)
    worker = f"{plan.host}-{4000 + plan.sweep % 900}-{plan.commit[:4]}"
    attempt = {"attempt": 1, "started_at": started.isoformat(), "worker": worker, "host": plan.host}
    attempt.update(environment={}, ended_at=ended.isoformat(), status=plan.status, reason=reason, exit_code=exit_code)
    attempts = [attempt]
    if plan.index % 37 == 0:
        lost = {**attempt, "status": "queued", "reason": "its worker stopped heartbeating", "exit_code": None}
        attempts = [lost, {**attempt, "attempt": 2}]
    return {
        "attempts": attempts,
        "started_at": started.isoformat(),
        "ended_at": ended.isoformat(),
        "duration_s": duration_s,
        "exit_code": exit_code,
        "reason": reason,
        "oom_killed": False,
        "peak_memory_bytes": plan.rng.randrange(800, 6000) * MB,
    }


def make_record(plan: RunPlan, config: dict[str, Any], results: dict[str, Any] | None) -> dict[str, Any]:
    """run.json as a queued run of a local or process worker writes it (record.RunRecord's fields)."""
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    ran = plan.status != "queued"
    record: dict[str, Any] = {
        "backend": plan.backend,
        "cancel_requested_at": None,
        "checkpoint": None,
        "command": config["expman"]["command"],
        "config_hash": config_hash,
        "container_id": hashlib.sha256(plan.run_id.encode()).hexdigest() if ran and plan.backend == "local" else None,
        "environment": {"LANG": "C.UTF-8", "SHELL": "/bin/bash", "TERM": "xterm"},
        "git": git_info(plan),
        "host": plan.host if ran else None,
        "host_facts": host_facts(plan.host),
        "image": image_info(plan),
        "job_id": None,
        "pid": 40000 + plan.index % 20000 if ran and plan.backend == "process" else None,
        "queued_at": plan.queued_at.isoformat(),
        "remote": None,
        "resources": {"cpus": 2, "gpus": 0, "kill_grace_s": 30.0, "memory_bytes": 8 << 30, "timeout_s": 7200.0},
        "restored": None,
        "run_id": plan.run_id,
        "schema_version": 1,
        "slurm": None,
        "snapshot": None,
        "ssh_host": None,
        "status": plan.status,
        "submitter": {"argv": ["expman", "schedule"], "expman_version": "0.1.0", "gid": 1000, "uid": 1000},
        "supervisor": None,
        "warnings": [],
        "duration_s": None,
        "ended_at": None,
        "exit_code": None,
        "oom_killed": None,
        "peak_memory_bytes": None,
        "reason": None,
        "started_at": None,
    }
    record["submitter"].update(python_version="3.11.2", user="researcher")
    record.update(placement(plan, config_hash))
    record.update(timeline(plan, results))
    return dict(sorted(record.items()))


def code_archive(commit: str) -> bytes:
    """A small code.tar, as git archive makes it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, size in (("train.py", 6000), ("config.json", 900), ("Dockerfile", 200), ("agents/ppo.py", 14000)):
            info = tarfile.TarInfo(f"{name}")
            info.size, info.mtime = size, 1_767_225_600
            tar.addfile(info, io.BytesIO((commit * (size // 40 + 1)).encode()[:size]))
    return buffer.getvalue()


def dump(path: Path, document: Any) -> None:
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))


def write_run(runs_root: Path, archives: Path, plan: RunPlan) -> None:
    config = make_config(plan)
    results = make_results(plan) if plan.status == "succeeded" else None
    record = make_record(plan, config, results)
    run = runs_root / plan.run_id
    (run / "output").mkdir(parents=True)
    (run / "logs").mkdir()
    os.link(archives / f"{plan.commit}.tar", run / "code.tar")
    dump(run / "config.json", config)
    if plan.index % 25 == 0:
        note = {"at": record["queued_at"], "text": f"baseline for {plan.game}, see table 2"}
        dump(run / "annotations.json", {"tags": {"paper": "table2", "keep": "yes"}, "notes": [note]})
    if plan.status != "queued":
        wall_time = datetime.fromisoformat(record["started_at"]).timestamp()
        (run / "output" / "tb").mkdir()
        name = f"events.out.tfevents.{int(wall_time)}.{plan.host}.{40000 + plan.index % 20000}.0"
        (run / "output" / "tb" / name).write_bytes(event_file(plan, wall_time))
        lines = [f"step {s * 20_000} loss {2 - s / STEPS:.3f}" for s in range(0, STEPS, 5)]
        (run / "logs" / "stdout.log").write_text("\n".join(lines) + "\n")
        (run / "logs" / "stderr.log").write_text("" if plan.status == "succeeded" else "Traceback ...\n")
        if plan.backend == "local":
            (run / "logs" / "build.log").write_text("Step 1/4 : FROM expman-base:bookworm\n ---> Using cache\n")
    if results is not None:
        dump(run / "output" / "results.json", results)
    dump(run / "run.json", record)  # last: a directory is a run once it has its record


def write_chunk(job: tuple[Path, Path, range, int]) -> int:
    runs_root, archives, indices, total = job
    for index in indices:
        write_run(runs_root, archives, RunPlan(index, total))
    return len(indices)


def ensure_corpus(place: Path, runs: int) -> Path:
    """``place/runs`` holding ``runs`` generated runs; made again unless its marker matches."""
    marker, runs_root, archives = place / "corpus.json", place / "runs", place / "archives"
    spec = {"runs": runs, "generator": GENERATOR}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return runs_root
    shutil.rmtree(place, ignore_errors=True)
    runs_root.mkdir(parents=True)
    archives.mkdir()
    for sweep in range((runs + SWEEP_SIZE - 1) // SWEEP_SIZE):
        commit = RunPlan(sweep * SWEEP_SIZE, runs).commit
        (archives / f"{commit}.tar").write_bytes(code_archive(commit))
    started = time.perf_counter()
    chunks = [(runs_root, archives, range(i, min(i + 250, runs)), runs) for i in range(0, runs, 250)]
    with multiprocessing.Pool() as pool:
        written = sum(pool.imap_unordered(write_chunk, chunks))
    marker.write_text(json.dumps(spec))
    print(f"generated {written:,} runs in {time.perf_counter() - started:.1f} s under {runs_root}", flush=True)
    return runs_root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/expman-scale-corpus"))
    args = parser.parse_args()
    print(ensure_corpus(args.corpus / str(args.runs), args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
