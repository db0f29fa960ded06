"""Scalar summaries in TensorBoard's event-file format, without TensorFlow or TensorBoard.

``optimus train --tensorboard`` writes the metrics of every outer step (the columns of
``log.csv``) into ``OUT/tensorboard/``; ``tensorboard --logdir OUT/tensorboard`` (installed
separately: it is no dependency of Optimus) shows them while the run goes on.

The format is TensorFlow's record file: each record is

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

(little-endian), ``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2^32`` with the
CRC-32C (Castagnoli) checksum, and ``data`` a serialised ``tensorflow.Event`` protocol
buffer: ``wall_time`` (field 1, double), ``step`` (2, int64), and either ``file_version``
(3, string; the first record, ``"brain.Event:2"``) or ``summary`` (5) holding repeated
``Value`` messages with ``tag`` (1, string) and ``simple_value`` (2, float). The few protobuf
fields needed are encoded here by hand. A resumed run opens a new file that begins with a
``session_log`` (field 7) START event at the step it resumes from; TensorBoard's reader then
purges the events at and after that step that the killed run had written (steps after its
last checkpoint, which the resumed run redoes).
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["EventWriter", "read_events", "crc32c"]


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of ``data``."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64  # int64 two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + body


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + data
        + struct.pack("<I", _masked_crc(data))
    )


class EventWriter:
    """Append scalar summaries to a new event file in ``logdir`` (created if missing).

    Use as a context manager, or call :meth:`close`. Every :meth:`scalars` call is flushed,
    so a killed run loses nothing that was written.
    """

    def __init__(self, logdir: str | os.PathLike, resume_step: int | None = None):
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        base = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}"
        for i in range(1000):  # never overwrite another writer's file
            self.path = logdir / (base if i == 0 else f"{base}.{i}")
            try:
                self._fh = self.path.open("xb")
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"no free event-file name in {logdir}")
        self._fh.write(_record(_event(time.time(), 0, _field_bytes(3, b"brain.Event:2"))))
        if resume_step is not None:
            # SessionLog{status = START (field 1, enum 1)}: TensorBoard purges the events at
            # and after this step that an earlier file holds
            start = _varint(1 << 3 | 0) + _varint(1)
            self._fh.write(_record(_event(time.time(), int(resume_step), _field_bytes(7, start))))
        self._fh.flush()

    def scalars(
        self, step: int, values: Mapping[str, float], wall_time: float | None = None
    ) -> None:
        """Write one event at ``step`` with a scalar per tag; non-finite and missing values
        (``None``) are left out."""
        summary = b""
        for tag, v in values.items():
            if v is None or not math.isfinite(float(v)):
                continue
            value = _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", float(v))
            summary += _field_bytes(1, value)
        if not summary:
            return
        wall = time.time() if wall_time is None else float(wall_time)
        self._fh.write(_record(_event(wall, int(step), _field_bytes(5, summary))))
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = v = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of a protobuf message (wire types 0, 1, 2, 5)."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(buf, i)
            yield num, wire, v
        elif wire == 1:
            yield num, wire, buf[i : i + 8]
            i += 8
        elif wire == 2:
            n, i = _read_varint(buf, i)
            yield num, wire, buf[i : i + n]
            i += n
        elif wire == 5:
            yield num, wire, buf[i : i + 4]
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def read_events(path: str | os.PathLike) -> list[dict]:
    """Decode an event file written by :class:`EventWriter` (checking every checksum): one
    dict per event with ``wall_time``, ``step`` and one of ``file_version``, ``session_log``
    (``"START"`` ...) or ``scalars`` (tag -> value). For tests and for scripts that want the
    numbers back."""
    data = Path(path).read_bytes()
    events, i = [], 0
    while i < len(data):
        if i + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {i}")
        header = data[i : i + 8]
        (n,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[i + 8 : i + 12])
        if crc != _masked_crc(header):
            raise ValueError(f"{path}: bad length checksum at byte {i}")
        body = data[i + 12 : i + 12 + n]
        tail = data[i + 12 + n : i + 16 + n]
        if len(body) != n or len(tail) != 4:
            raise ValueError(f"{path}: truncated record at byte {i}")
        if struct.unpack("<I", tail)[0] != _masked_crc(body):
            raise ValueError(f"{path}: bad data checksum at byte {i}")
        i += 16 + n
        event: dict = {}
        for num, _, v in _fields(body):
            if num == 1:
                event["wall_time"] = struct.unpack("<d", v)[0]
            elif num == 2:
                event["step"] = v - (1 << 64) if v >= 1 << 63 else v
            elif num == 3:
                event["file_version"] = v.decode()
            elif num == 7:
                status = [sv for snum, _, sv in _fields(v) if snum == 1]
                event["session_log"] = {1: "START", 2: "STOP", 3: "CHECKPOINT"}.get(
                    status[0] if status else 0, "UNSPECIFIED"
                )
            elif num == 5:
                scalars = {}
                for vnum, _, value in _fields(v):
                    if vnum != 1:
                        continue
                    tag, simple = None, None
                    for fnum, _, fv in _fields(value):
                        if fnum == 1:
                            tag = fv.decode()
                        elif fnum == 2:
                            simple = struct.unpack("<f", fv)[0]
                    if tag is not None and simple is not None:
                        scalars[tag] = simple
                event["scalars"] = scalars
        events.append(event)
    return events
