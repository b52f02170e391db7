"""Scalars from TensorBoard event files, every point kept, without TensorBoard.

An event file is a sequence of TFRecords (length, masked CRC32C of the length, an Event
protobuf, masked CRC32C of the Event). A scalar is a Summary.Value with `simple_value`,
or a one-element tensor (float, double, half, bfloat16, integer) of the 'scalars' plugin
as TF2 writes them; the plugin is named in the value's metadata, which writers may send
only with a tag's first value. Reading stops at the first damaged record (truncated,
zero-filled, CRC mismatch) and keeps everything before it, naming the problem.

The work is done by the compiled `_tfevents` module when the install could build it,
else by the pure-Python reader below, which follows the same rules.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    from expman.results import _tfevents
except ImportError:  # no C compiler at install time
    _tfevents = None

EVENT_FILE_MARKER = "tfevents"


@dataclass
class FileScalars:
    """The scalars of one event file, grouped by tag in order of first appearance."""

    tags: list[str]
    counts: list[int]
    steps: np.ndarray
    wall_times: np.ndarray
    values: np.ndarray
    monotonic: list[bool]
    consumed: int
    records: int
    problem: str | None


def read_event_file(path: Path, check_crc: bool = True, compiled: bool = True) -> FileScalars:
    """Every scalar of the file at `path`; `compiled=False` forces the pure-Python reader."""
    data = path.read_bytes()
    return parse_events(data, check_crc, compiled)


def parse_events(data: bytes, check_crc: bool = True, compiled: bool = True) -> FileScalars:
    parse = _tfevents.parse if compiled and _tfevents is not None else _parse
    tags, counts, steps, walls, values, monotonic, consumed, records, problem = parse(data, check_crc)
    return FileScalars(
        tags,
        counts,
        np.frombuffer(steps, dtype="<i8"),
        np.frombuffer(walls, dtype="<f8"),
        np.frombuffer(values, dtype="<f8"),
        monotonic,
        consumed,
        records,
        problem,
    )


def has_compiled_reader() -> bool:
    return _tfevents is not None


# ---- pure-Python reader ---------------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def masked_crc32c(data: bytes | memoryview) -> int:
    crc = 0xFFFFFFFF
    for byte in bytes(data):
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _Malformed(Exception):
    pass


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
    raise _Malformed


def _fields(buf: bytes, pos: int, end: int):
    """Yields (number, wire, value) with value an int for scalar wires, (start, stop) for bytes."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if end - pos < size:
                raise _Malformed
            yield number, wire, int.from_bytes(buf[pos : pos + size], "little")
            pos += size
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise _Malformed
            yield number, wire, (pos, pos + length)
            pos += length
        else:
            raise _Malformed


_VALUE_FIELD = {1: (5, 5), 2: (6, 1), 3: (7, 0), 4: (7, 0), 5: (7, 0), 6: (7, 0), 17: (7, 0)}
_VALUE_FIELD |= {9: (10, 0), 14: (13, 0), 19: (13, 0), 22: (16, 0), 23: (17, 0)}
_RAW_SIZE = {1: 4, 2: 8, 3: 4, 4: 1, 5: 2, 6: 1, 9: 8, 14: 2, 17: 2, 19: 2, 22: 4, 23: 8}


def _element(dtype: int, raw: bytes | None, bits: int | None) -> float | None:
    if raw:
        if len(raw) != _RAW_SIZE[dtype]:
            return None
        bits = int.from_bytes(raw, "little")
        signed_small = True
    elif bits is None:
        return None
    else:
        signed_small = False
    if dtype == 1:
        return float(struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0])
    if dtype == 2:
        return float(struct.unpack("<d", struct.pack("<Q", bits))[0])
    if dtype == 19:
        return float(struct.unpack("<e", struct.pack("<H", bits & 0xFFFF))[0])
    if dtype == 14:
        return float(struct.unpack("<f", struct.pack("<I", (bits & 0xFFFF) << 16))[0])
    width = {4: 8, 17: 16, 22: 32, 23: 64}.get(dtype)
    if width:
        return float(bits & ((1 << width) - 1))
    width = {6: 8, 5: 16}.get(dtype, 32) if signed_small else 32
    width = 64 if dtype == 9 else width
    bits &= (1 << width) - 1
    return float(bits - (1 << width) if bits >> (width - 1) else bits)


def _shape_elements(buf: bytes, start: int, end: int) -> int:
    elements = 1
    for number, wire, value in _fields(buf, start, end):
        if number == 3 and wire == 0 and value:
            return -1
        if number == 2 and wire == 2:
            size = 0
            for n2, w2, v2 in _fields(buf, *value):
                if n2 == 1 and w2 == 0:
                    size = v2 - (1 << 64) if v2 >> 63 else v2
            elements *= size
    return elements


def _tensor_scalar(buf: bytes, start: int, end: int) -> float | None:
    dtype, elements, raw = 0, 1, None
    fields = list(_fields(buf, start, end))
    for number, wire, value in fields:
        if number == 1 and wire == 0:
            dtype = value
        elif number == 2 and wire == 2:
            elements = _shape_elements(buf, *value)
        elif number == 4 and wire == 2:
            raw = buf[value[0] : value[1]]
    if elements != 1 or dtype not in _VALUE_FIELD:
        return None
    vnum, vwire = _VALUE_FIELD[dtype]
    bits = None
    for number, wire, value in fields:
        if number != vnum:
            continue
        if wire == vwire:
            bits = value
        elif wire == 2 and value[0] < value[1]:
            pos = value[0]
            if vwire == 0:
                bits = _varint(buf, pos, value[1])[0]
            elif value[1] - pos >= (4 if vwire == 5 else 8):
                bits = int.from_bytes(buf[pos : pos + (4 if vwire == 5 else 8)], "little")
        if wire in (vwire, 2):
            break
    return _element(dtype, raw, bits)


def _plugin_kind(buf: bytes, start: int, end: int) -> int:
    for number, wire, value in _fields(buf, start, end):
        if number == 1 and wire == 2:
            for n2, w2, v2 in _fields(buf, *value):
                if n2 == 1 and w2 == 2:
                    return 1 if buf[v2[0] : v2[1]] == b"scalars" else 2
    return 0


class _Columns:
    def __init__(self) -> None:
        self.points: dict[bytes, list[tuple[int, float, float]]] = {}
        self.plugin: dict[bytes, int] = {}

    def value(self, buf: bytes, start: int, end: int, step: int, wall: float) -> None:
        tag = meta = tensor = simple = None
        for number, wire, value in _fields(buf, start, end):
            if number == 1 and wire == 2:
                tag = buf[value[0] : value[1]]
            elif number == 2 and wire == 5:
                simple = value
            elif number == 9 and wire == 2:
                meta = value
            elif number == 8 and wire == 2:
                tensor = value
        if tag is None or (simple is None and tensor is None):
            return
        points = self.points.setdefault(tag, [])
        if simple is not None:
            points.append((step, wall, struct.unpack("<f", struct.pack("<I", simple))[0]))
            return
        kind = _plugin_kind(buf, *meta) if meta else 0
        if kind:
            self.plugin[tag] = kind
        scalar = _tensor_scalar(buf, *tensor) if self.plugin.get(tag) == 1 and tensor else None
        if scalar is not None:
            points.append((step, wall, scalar))

    def event(self, buf: bytes, start: int, end: int) -> None:
        wall, step, summaries = 0.0, 0, []
        for number, wire, value in _fields(buf, start, end):
            if number == 1 and wire == 1:
                wall = struct.unpack("<d", struct.pack("<Q", value))[0]
            elif number == 2 and wire == 0:
                step = value - (1 << 64) if value >> 63 else value
            elif number == 5 and wire == 2:
                summaries.append(value)
        for summary in summaries:
            for number, wire, value in _fields(buf, *summary):
                if number == 1 and wire == 2:
                    start, stop = value
                    self.value(buf, start, stop, step, wall)


def _problem(buf: bytes, pos: int, check: bool) -> str | None:
    left = len(buf) - pos
    if not any(buf[pos : pos + 12]):
        return f"zero-filled tail at byte {pos}"
    if left < 12:
        return f"truncated record header at byte {pos}"
    if check and masked_crc32c(buf[pos : pos + 8]) != int.from_bytes(buf[pos + 8 : pos + 12], "little"):
        return f"record header CRC mismatch at byte {pos}"
    length = int.from_bytes(buf[pos : pos + 8], "little")
    if length > left - 12 or left - 12 - length < 4:
        return f"truncated record at byte {pos} (file still being written?)"
    data = buf[pos + 12 : pos + 12 + length]
    if check and masked_crc32c(data) != int.from_bytes(buf[pos + 12 + length : pos + 16 + length], "little"):
        return f"record data CRC mismatch at byte {pos}"
    return None


def _parse(buf: bytes, check: bool) -> tuple:
    columns, pos, records, problem = _Columns(), 0, 0, None
    while pos < len(buf):
        stop = _problem(buf, pos, check)
        if stop:
            problem = stop
            break
        length = int.from_bytes(buf[pos : pos + 8], "little")
        try:
            columns.event(buf, pos + 12, pos + 12 + length)
        except _Malformed:
            problem = problem or f"malformed event skipped at byte {pos}"
        pos += 16 + length
        records += 1
    return _columns_result(columns, pos, records, problem)


def _columns_result(columns: _Columns, pos: int, records: int, problem: str | None) -> tuple:
    kept = [(tag, points) for tag, points in columns.points.items() if points]
    flat = [point for _, points in kept for point in points]
    steps = np.array([p[0] for p in flat], dtype="<i8").tobytes()
    walls = np.array([p[1] for p in flat], dtype="<f8").tobytes()
    values = np.array([p[2] for p in flat], dtype="<f8").tobytes()
    monotonic = [all(a[0] < b[0] for a, b in zip(points, points[1:], strict=False)) for _, points in kept]
    tags = [tag.decode("utf-8", "replace") for tag, _ in kept]
    return tags, [len(p) for _, p in kept], steps, walls, values, monotonic, pos, records, problem


__all__ = ["EVENT_FILE_MARKER", "FileScalars", "read_event_file", "parse_events", "has_compiled_reader"]
