"""Rows streamed into size-bounded Parquet shards, with at most one row group of rows in memory.

`ShardWriter(folder, split, features).add(row)` appends a row; a row group is flushed every `rows_per_group` rows or
`group_bytes` bytes, and a new shard starts when the next row would take the current one past `max_shard_bytes`
(counted in the rows' payload, the image bytes being the bulk). `close()` names the shards
`{split}-{i:05d}-of-{n:05d}-{sha256[:16]}.parquet` (their count is known only then; the digest is read back in blocks)
and returns one `Shard` each. Memory stays that of one row group, whatever the number of rows.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features

ROWS_PER_GROUP = 256
GROUP_BYTES = 64 * 2**20
_READ_BLOCK = 2**20


@dataclass
class Shard:
    path: Path
    num_rows: int
    num_bytes: int  # Arrow (in-memory) bytes of its rows, as `SplitInfo.num_bytes` counts them
    sha256: str


def _payload_bytes(row: dict) -> int:
    image = row.get("image")
    size = len(image["bytes"]) if isinstance(image, dict) and image.get("bytes") is not None else 0
    return size + sum(len(value) for value in (row.get("report"), row.get("patient_id")) if isinstance(value, str))


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    def __init__(self, folder, split: str, features: Features, max_shard_bytes: int,
                 rows_per_group: int = ROWS_PER_GROUP, group_bytes: int = GROUP_BYTES):
        self.folder, self.split, self.features = Path(folder), split, features
        self.schema = features.arrow_schema
        self.max_shard_bytes, self.rows_per_group, self.group_bytes = max_shard_bytes, rows_per_group, group_bytes
        self._rows, self._group_size = [], 0
        self._writer, self._shard_size, self._shard_rows, self._shard_nbytes = None, 0, 0, 0
        self._written: list[tuple[Path, int, int]] = []  # (partial path, rows, Arrow bytes)

    def add(self, row: dict) -> None:
        size = _payload_bytes(row)
        if self._writer is not None and self._shard_rows + len(self._rows) and (
                self._shard_size + size > self.max_shard_bytes):
            self._close_shard()
        if self._writer is None:
            partial = self.folder / f".{self.split}-{len(self._written):05d}.partial"
            self._writer = pq.ParquetWriter(str(partial), self.schema)
            self._partial = partial
        self._rows.append(row)
        self._group_size += size
        self._shard_size += size
        if len(self._rows) >= self.rows_per_group or self._group_size >= self.group_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        self._writer.write_table(table)
        self._shard_rows += table.num_rows
        self._shard_nbytes += table.nbytes
        self._rows, self._group_size = [], 0

    def _close_shard(self) -> None:
        self._flush()
        self._writer.close()
        self._written.append((self._partial, self._shard_rows, self._shard_nbytes))
        self._writer, self._shard_size, self._shard_rows, self._shard_nbytes = None, 0, 0, 0

    def close(self) -> list[Shard]:
        if self._writer is not None:
            self._close_shard()
        shards = []
        for index, (partial, rows, nbytes) in enumerate(self._written):
            digest = file_sha256(partial)
            path = self.folder / f"{self.split}-{index:05d}-of-{len(self._written):05d}-{digest[:16]}.parquet"
            os.replace(partial, path)
            shards.append(Shard(path, rows, nbytes, digest))
        self._written = []
        return shards

    def abort(self) -> None:
        """Drop what was written (a failed build)."""
        if self._writer is not None:
            self._writer.close()
            self._written.append((self._partial, 0, 0))
            self._writer = None
        for partial, _, _ in self._written:
            Path(partial).unlink(missing_ok=True)
        self._written, self._rows = [], []
