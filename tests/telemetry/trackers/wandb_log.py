"""Reads an offline W&B run's ``run-<id>.wandb`` file: W&B's transaction log.

The file is a ``:W&B`` header (magic 0xBEE1, version 0) followed by LevelDB's log format
(32 KiB blocks of records, each a CRC-32, a length, a type FULL / FIRST / MIDDLE / LAST)
whose payloads are W&B's own ``wandb_internal_pb2.Record`` protobuf messages: the format the
``wandb sync`` command uploads. wandb 0.31 ships no Python reader for it (its core is Go),
so the framing is read here and every record decoded with wandb's own protobuf classes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    assert data[: len(_HEADER)] == _HEADER, "not a W&B transaction log"
    pos = len(_HEADER)
    parts: list[bytes] = []
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if length == 0 and kind == 0:  # zero fill at the end of the file
            break
        chunk = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"bad CRC at {pos}"
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            parts = [chunk]
        elif kind == _MIDDLE:
            parts.append(chunk)
        elif kind == _LAST:
            yield b"".join([*parts, chunk])
            parts = []


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Every record of the transaction log at ``path``, in order."""
    for payload in _payloads(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record
