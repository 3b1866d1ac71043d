"""The append-only log of items added while serving: what /v1/items acknowledges survives a crash.

One JSON object per line ({"item_id", "prompt", "author", "created_at"}). `append` writes a
request's lines, flushes and fsyncs before it returns, and the server acknowledges only after it
returns; start-up replays the log into the index. A crash mid-write can only leave a last line
without its newline (never acknowledged): replay drops it and truncates the file there. A broken
line before the end is corruption, refused with its line number.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class ItemLogError(ValueError):
    """The fresh-items log is corrupt (names the file and line)."""


class ItemLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None

    def replay(self) -> list[dict[str, Any]]:
        """Every acknowledged record in order; a torn last line is cut off the file."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        whole = data.rfind(b"\n") + 1  # bytes up to the last complete line
        records = []
        for number, line in enumerate(data[:whole].splitlines(), start=1):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ItemLogError(f"{self.path}:{number}: not a JSON record ({err})") from None
            if not isinstance(record, dict) or not isinstance(record.get("item_id"), str) \
                    or not isinstance(record.get("prompt"), str):
                raise ItemLogError(f"{self.path}:{number}: a record needs string item_id and prompt")
            records.append(record)
        if whole < len(data):  # torn tail: written, never fsynced-and-acknowledged
            with open(self.path, "r+b") as f:
                f.truncate(whole)
                os.fsync(f.fileno())
        return records

    def append(self, records: list[dict[str, Any]]) -> None:
        """Appends `records` durably: on return they are on disk (fsync)."""
        if self._file is None:
            self._file = open(self.path, "ab")
            _fsync_dir(self.path.parent)  # the file's own entry, when it was just created
        payload = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        self._file.write(payload)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
