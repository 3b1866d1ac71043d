"""What loading did to each table: rows read, kept, dropped and values changed, with their reasons.

Filled by the checks (ff_jax.data.tables_checks) and the loader (ff_jax.data.tables); `print` shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TableReport:
    """What happened to one table: rows read, kept, dropped (by reason) and values changed."""

    table: str
    source: str
    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def _count(self, bucket: dict[str, int], reason: str, n: int, example: str) -> None:
        if n:
            bucket[reason] = bucket.get(reason, 0) + int(n)
            self.examples.setdefault(reason, example)

    def drop(self, reason: str, n: int, example: str) -> None:
        self._count(self.dropped, reason, n, example)

    def change(self, reason: str, n: int, example: str) -> None:
        self._count(self.changed, reason, n, example)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    def __str__(self) -> str:
        lines = [f"{self.table:<13} {self.source}: read {self.rows_read:,}, kept {self.rows_kept:,}, "
                 f"dropped {self.rows_dropped:,}"]
        for title, bucket in (("dropped", self.dropped), ("changed", self.changed)):
            for reason, n in sorted(bucket.items()):
                lines.append(f"    {title} {n:,} × {reason}  (first: {self.examples[reason]})")
        lines += [f"    note: {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class LoadSummary:
    """Per-table reports; `print(summary)` shows every drop and repair with its reason."""

    name: str
    tables: dict[str, TableReport] = field(default_factory=dict)

    def __getitem__(self, table: str) -> TableReport:
        return self.tables[table]

    @property
    def rows_dropped(self) -> int:
        return sum(r.rows_dropped for r in self.tables.values())

    def __str__(self) -> str:
        return "\n".join([f"Load summary for '{self.name}'"] + [str(r) for r in self.tables.values()])
