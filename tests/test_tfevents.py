"""The event-file reader against TensorBoard's own reader, on files written by TensorBoard's
writer, by a TF2-style tensor writer, and damaged by hand. Both implementations (compiled
and pure Python) must give identical results."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from expman.results.scalars import event_files, read_run_scalars
from expman.results.tfevents import has_compiled_reader, parse_events, read_event_file

from .results_helpers import scalar_event, scalars, tensor_event, write_events

IMPLEMENTATIONS = [pytest.param(True, id="compiled"), pytest.param(False, id="python")]


def test_the_compiled_reader_was_built():
    assert has_compiled_reader(), "expman.results._tfevents was not built; is a C compiler installed?"


def accumulator(path: Path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def reference_scalars(path: Path) -> dict[str, list[tuple[int, float, float]]]:
    acc = accumulator(path)
    found = {tag: [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    for tag in acc.Tags()["tensors"]:
        found[tag] = [(e.step, e.wall_time, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
    return found


def ours(path: Path, compiled: bool) -> dict[str, list[tuple[int, float, float]]]:
    result = read_event_file(path, compiled=compiled)
    offsets = np.concatenate(([0], np.cumsum(result.counts)))
    return {
        tag: list(
            zip(result.steps[a:b].tolist(), result.wall_times[a:b].tolist(), result.values[a:b].tolist(), strict=True)
        )
        for tag, a, b in zip(result.tags, offsets[:-1], offsets[1:], strict=True)
    }


def same(a: dict, b: dict) -> bool:
    def norm(points):
        return [(s, w, "nan" if math.isnan(v) else v) for s, w, v in points]

    return a.keys() == b.keys() and all(norm(a[k]) == norm(b[k]) for k in a)


@pytest.mark.parametrize("compiled", IMPLEMENTATIONS)
def test_simple_values_match_tensorboard_every_point_kept(tmp_path, compiled):
    events = []
    for step in range(12_000):  # more than EventAccumulator's default 10,000-point reservoir
        events += [scalar_event("loss", step, 1 / (step + 1)), scalar_event("eval/acc", step, step % 7)]
    events.append(scalar_event("odd", 3, float("nan")))
    events.append(scalar_event("odd", 4, float("inf")))
    path = write_events(tmp_path, events)
    expected = reference_scalars(path)
    assert len(expected["loss"]) == 12_000
    assert same(ours(path, compiled), expected)


@pytest.mark.parametrize("compiled", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", ["float", "double", "half", "int32", "int64", "int8"])
@pytest.mark.parametrize("raw", [True, False], ids=["tensor_content", "typed_field"])
def test_tf2_tensor_scalars_match_tensorboard(tmp_path, compiled, dtype, raw):
    values = [0.0, 1.5, -2.0, 3.0, 100.0, -7.0] if not dtype.startswith("int") else [0, 1, -2, 3, 100, -7]
    # metadata only with the first value, as TF1-era writers send it
    events = [tensor_event("score", i, v, dtype, raw, metadata=(i == 0)) for i, v in enumerate(values * 3)]
    path = write_events(tmp_path, events)
    expected = reference_scalars(path)
    assert len(expected["score"]) == 18
    assert same(ours(path, compiled), expected)


@pytest.mark.parametrize("compiled", IMPLEMENTATIONS)
def test_tensors_of_other_plugins_and_non_scalars_are_not_scalars(tmp_path, compiled):
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

    vector = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)]),
        float_val=[1, 2, 3],
    )
    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    hist_meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="histo"))
    one = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    event = tensor_event("kept", 0, 2.5)
    event.summary.value.add(tag="vector", tensor=vector, metadata=meta)
    event.summary.value.add(tag="histogram", tensor=one, metadata=hist_meta)
    path = write_events(tmp_path, [event])
    assert ours(path, compiled) == {"kept": [(0, event.wall_time, 2.5)]}


def damaged_copy(tmp_path: Path, how: str) -> tuple[Path, int]:
    """An event file of 50 'x' points damaged ``how``; returns it and the intact points."""
    source = write_events(tmp_path / "source", scalars("x", range(50)))
    data = bytearray(source.read_bytes())
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 16 + struct.unpack_from("<Q", data, pos)[0]
    # record 0 is the file_version event; record i >= 1 holds step i - 1
    if how == "truncated":
        data = data[: offsets[-1] + 20]
        intact = 49
    elif how == "zero_tail":
        data += bytes(4096)
        intact = 50
    elif how == "crc_mid":
        data[offsets[30] + 20] ^= 0xFF
        intact = 29
    elif how == "header_crc_mid":
        data[offsets[30] + 9] ^= 0xFF
        intact = 29
    elif how == "half_header":
        data += data[offsets[5] : offsets[5] + 7]
        intact = 50
    path = tmp_path / "damaged" / source.name
    path.parent.mkdir()
    path.write_bytes(bytes(data))
    return path, intact


@pytest.mark.parametrize("compiled", IMPLEMENTATIONS)
@pytest.mark.parametrize("how", ["truncated", "zero_tail", "crc_mid", "header_crc_mid", "half_header"])
def test_damaged_files_keep_every_intact_record_and_say_why(tmp_path, compiled, how):
    path, intact = damaged_copy(tmp_path, how)
    result = read_event_file(path, compiled=compiled)
    assert result.counts == [intact]
    assert result.steps.tolist() == list(range(intact))
    words = {"truncated": "truncated", "zero_tail": "zero-filled", "crc_mid": "CRC", "header_crc_mid": "CRC"}
    assert words.get(how, "truncated") in result.problem
    reference = reference_scalars(path)  # TensorBoard stops at the same record
    assert [p[0] for p in reference["x"]] == list(range(intact))


@pytest.mark.parametrize("compiled", IMPLEMENTATIONS)
def test_a_file_being_written_is_read_to_its_last_complete_record(tmp_path, compiled):
    path = write_events(tmp_path, scalars("x", range(10)))
    data = path.read_bytes()
    seen = []
    for cut in range(0, len(data) + 1, 7):
        result = parse_events(data[:cut], compiled=compiled)
        seen.append(result.counts[0] if result.counts else 0)
        assert result.consumed <= cut
    assert seen == sorted(seen) and seen[-1] <= 10
    assert parse_events(data, compiled=compiled).problem is None


@pytest.mark.parametrize("compiled", IMPLEMENTATIONS)
def test_crc_check_can_be_turned_off(tmp_path, compiled):
    path, _ = damaged_copy(tmp_path, "crc_mid")
    checked = parse_events(path.read_bytes(), check_crc=True, compiled=compiled)
    unchecked = parse_events(path.read_bytes(), check_crc=False, compiled=compiled)
    assert checked.counts == [29] and unchecked.counts == [50]


def test_nested_directories_become_part_of_the_key(tmp_path):
    write_events(tmp_path / "tb" / "train", scalars("loss", range(5)))
    write_events(tmp_path / "tb" / "eval", scalars("loss", range(3)))
    write_events(tmp_path, scalars("top", range(2)))
    run = read_run_scalars(tmp_path, event_files(tmp_path))
    assert dict(zip(run.keys, run.counts.tolist(), strict=True)) == {"top": 2, "tb/eval/loss": 3, "tb/train/loss": 5}


def test_restarted_run_keeps_latest_write_per_step_or_all_like_tensorboard(tmp_path):
    logdir = tmp_path / "tb"
    write_events(logdir, scalars("r", range(0, 100), lambda s: 1.0), filename_suffix=".a")
    # resumed from the step-60 checkpoint: a new file, steps going backwards
    write_events(logdir, scalars("r", range(60, 150), lambda s: 2.0), filename_suffix=".b")
    last = read_run_scalars(tmp_path, event_files(tmp_path))
    steps, values = last.column("tb/r")
    assert steps.tolist() == list(range(150))
    assert values.tolist() == [1.0] * 60 + [2.0] * 90
    all_steps, all_values = read_run_scalars(tmp_path, event_files(tmp_path), keep="all").column("tb/r")
    assert all_steps.tolist() == list(range(100)) + list(range(60, 150))
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()  # TensorBoard keeps every write of a directory's files, in file order
    assert [(e.step, e.value) for e in acc.Scalars("r")] == list(
        zip(all_steps.tolist(), all_values.tolist(), strict=True)
    )


def test_restart_within_one_file(tmp_path):
    events = scalars("r", range(10), lambda s: 1.0) + scalars("r", range(5, 12), lambda s: 2.0)
    write_events(tmp_path, events)
    steps, values = read_run_scalars(tmp_path, event_files(tmp_path)).column("r")
    assert steps.tolist() == list(range(12))
    assert values.tolist() == [1.0] * 5 + [2.0] * 7
