"""Run directories made directly, as the results side must read them without a submitter,
and event files written by TensorBoard's own writer (a test dependency only)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

_counter = iter(range(10**6))


def make_run(
    root: Path,
    config: dict[str, Any],
    results: Any = None,
    status: str = "succeeded",
    commit: str = "a" * 40,
    branch: str = "experiments",
    stdout: str | None = None,
    run_id: str | None = None,
) -> Path:
    """A run directory with run.json, config.json, and optionally results.json and stdout."""
    run_id = run_id or f"20261122-120000-{next(_counter):03d}-test"
    run = root / run_id
    (run / "output").mkdir(parents=True)
    (run / "logs").mkdir()
    record = {
        "run_id": run_id,
        "status": status,
        "schema_version": 1,
        "git": {"commit": commit, "branch": branch, "subject": "a commit"},
        "backend": "process",
        "queued_at": "2026-11-22T12:00:00+00:00",
    }
    (run / "run.json").write_text(json.dumps(record))
    (run / "config.json").write_text(json.dumps(config))
    if results is not None:
        text = results if isinstance(results, str) else json.dumps(results)
        (run / "output" / "results.json").write_text(text)
    if stdout is not None:
        (run / "logs" / "stdout.log").write_text(stdout)
    return run


def scalar_event(tag: str, step: int, value: float, wall_time: float | None = None) -> event_pb2.Event:
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
    return event_pb2.Event(wall_time=wall_time or time.time(), step=step, summary=summary)


def tensor_event(
    tag: str, step: int, value: float, dtype: str = "float", raw: bool = True, metadata: bool = True
) -> event_pb2.Event:
    """A TF2-style scalar: a rank-0 tensor of the 'scalars' plugin, as tf.summary.scalar writes."""
    code, fmt, field = {
        "float": (types_pb2.DT_FLOAT, "<f", "float_val"),
        "double": (types_pb2.DT_DOUBLE, "<d", "double_val"),
        "half": (types_pb2.DT_HALF, "<e", "half_val"),
        "int32": (types_pb2.DT_INT32, "<i", "int_val"),
        "int64": (types_pb2.DT_INT64, "<q", "int64_val"),
        "int8": (types_pb2.DT_INT8, "<b", "int_val"),
    }[dtype]
    tensor = tensor_pb2.TensorProto(dtype=code, tensor_shape=tensor_shape_pb2.TensorShapeProto())
    if raw:
        tensor.tensor_content = struct.pack(fmt, int(value) if dtype.startswith("int") else value)
    elif dtype == "half":
        tensor.half_val.append(struct.unpack("<H", struct.pack("<e", value))[0])
    else:
        getattr(tensor, field).append(int(value) if dtype.startswith("int") else value)
    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    item = summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta if metadata else None)
    return event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[item]))


def write_events(logdir: Path, events: list[event_pb2.Event], filename_suffix: str = "") -> Path:
    """Events written by TensorBoard's EventFileWriter; returns the file."""
    before = set(logdir.glob("*tfevents*")) if logdir.exists() else set()
    writer = EventFileWriter(str(logdir), filename_suffix=filename_suffix)
    for event in events:
        writer.add_event(event)
    writer.close()
    (path,) = set(logdir.glob("*tfevents*")) - before
    return path


def scalars(tag: str, steps: range, fn=lambda s: s * 0.5) -> list[event_pb2.Event]:
    return [scalar_event(tag, s, fn(s)) for s in steps]
