"""Read the history rows a W&B offline run wrote to its ``run-<id>.wandb`` file.

The file is a LevelDB-style log (7-byte file header, 32 KiB blocks, records split into
FULL/FIRST/MIDDLE/LAST chunks) of ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

_BLOCK = 32_768
_HEADER = 7  # checksum (4), length (2), chunk type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> list[bytes]:
    records: list[bytes] = []
    pending = b""
    pos = 7  # ":W&B" + magic (2) + version (1)
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            records.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            records.append(pending + chunk)
    return records


def _records(run_file: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    records = []
    for raw in _chunks(run_file.read_bytes()):
        record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]  # generated code
        record.ParseFromString(raw)
        records.append(record)
    return records


def history(run_file: Path, *, wait_s: float = 30.0) -> list[dict[str, Any]]:
    """Every ``run.log`` row of the offline run file, in order.

    wandb's writer process may still be flushing when ``finish()`` returns, so this waits
    (up to ``wait_s``) for the run's closing ``exit`` record before reading the rows.
    """
    deadline = time.monotonic() + wait_s
    records = _records(run_file)
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
        time.sleep(0.2)
        records = _records(run_file)
    return [
        {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def offline_run_files(wandb_dir: Path) -> list[Path]:
    """The ``run-*.wandb`` files of the offline runs under ``wandb_dir``."""
    return sorted(wandb_dir.glob("**/offline-run-*/run-*.wandb"))
