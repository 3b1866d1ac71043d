"""The append-only log of items added while serving: what /v1/items acknowledges survives a crash,
and reaches every replica that shares the log.

One JSON object per line ({"item_id", "prompt", "author", "created_at"}). `append` writes a
request's lines, flushes and fsyncs before it returns, and the server acknowledges only after it
returns. Each reader keeps its offset: `read_new` returns the complete lines appended since its
last call (by itself or by another process), so start-up replays the whole log and a running
replica picks up what the others wrote. Writers hold an exclusive flock (`locked`) while they
check ids, append and sync, so replicas on one host never interleave or accept one id twice.

A crash mid-write can only leave a last line without its newline (never acknowledged): the first
locked reader cuts it off. A broken line before the end is corruption, refused with its number
(`check`, at start-up: the server does not come up).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Iterator

from ff_jax.files import fsync_path


class ItemLogError(ValueError):
    """The fresh-items log is corrupt (names the file and line)."""

    label = "corrupt items log"


class ItemLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._offset = 0  # bytes read so far
        self._line = 0  # lines read so far (for error messages)
        self._lock_file = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the log among processes on this host; a torn tail is cut off first."""
        if self._lock_file is None:
            self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "a")
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            self._cut_torn_tail()
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _cut_torn_tail(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            f.seek(0)  # a writer died mid-line (rare): keep up to the last whole line
            f.truncate(f.read().rfind(b"\n") + 1)
            os.fsync(f.fileno())

    def read_new(self) -> list[dict[str, Any]]:
        """The records appended since the last call (complete lines only)."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        whole = data.rfind(b"\n") + 1
        records = []
        for line in data[:whole].splitlines():
            self._line += 1
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ItemLogError(f"{self.path}:{self._line}: not a JSON record ({err})") from None
            if not isinstance(record, dict) or not isinstance(record.get("item_id"), str) \
                    or not isinstance(record.get("prompt"), str):
                raise ItemLogError(f"{self.path}:{self._line}: a record needs string item_id and prompt")
            records.append(record)
        self._offset += whole
        return records

    def replay(self) -> list[dict[str, Any]]:
        """Every acknowledged record, from the start of the log."""
        self._offset, self._line = 0, 0
        with self.locked():
            return self.read_new()

    def check(self) -> None:
        """Reads the whole log once, refusing a broken line by its number: run before a server comes
        up, so a corrupt log stops it at start-up instead of leaving it forever not ready."""
        reader = ItemLog(self.path)  # its own offsets: this reader's stay where they are
        try:
            reader.replay()
        finally:
            reader.close()

    def append(self, records: list[dict[str, Any]]) -> None:
        """Appends `records` durably (fsync before returning). Call inside `locked()`, after
        `read_new()`, so this reader's offset stays in step with its own lines."""
        created = not self.path.exists()
        payload = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        with open(self.path, "ab") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if created:
            fsync_path(self.path.parent)  # the new file's directory entry
        self._offset += len(payload)
        self._line += len(records)

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
