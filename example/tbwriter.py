"""A stdlib-only TensorBoard scalar writer: TFRecord framing with masked CRC32C around
Event protos carrying simple_value summaries. Enough for `tensorboard --logdir`."""

from __future__ import annotations

import os
import socket
import struct
import time


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + body


class ScalarWriter:
    """Appends scalars to ``logdir/events.out.tfevents.<time>.<host>``."""

    def __init__(self, logdir: str) -> None:
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._file = open(os.path.join(logdir, name), "wb")
        self._write(_event(time.time(), 0, _length_delimited(3, b"brain.Event:2")))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        summary_value = _length_delimited(1, tag.encode()) + b"\x15" + struct.pack("<f", value)
        summary = _length_delimited(1, summary_value)
        self._write(_event(time.time(), step, _length_delimited(5, summary)))

    def close(self) -> None:
        self._file.close()

    def _write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)))
        self._file.write(record + struct.pack("<I", masked_crc32c(record)))
        self._file.flush()
