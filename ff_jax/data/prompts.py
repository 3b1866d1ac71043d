"""Member and item prompts: text fields wrapped in marker tokens, numbers quantised.

Item prompt: `<item>` + one `<column>value</column>` per field + `</item>`, the item's main text
last. Member prompt, in four parts that truncation treats differently:

    prefix    the system prompt                                always kept
    profile   one field per profile column                     kept in order while they fit
    history   one `<item>…</item>` per past item, NEWEST FIRST dropped from the oldest end
    suffix    closing text (empty by default)                  always kept

Truncation (`fit_member_tokens`) works on token ids and drops whole fields / whole history items,
never part of one; the newest history survives. Field markers (`<item>`, `<title>`, ...) are
registered with the tokenizer as special tokens, so each costs one id and user text cannot forge
them: a marker written inside a value has its angle brackets replaced by ‹ ›.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Protocol, Sequence

import gin
import pandas as pd

from ff_jax.data.schema import TableSchema

ITEM = "item"
ACTION = "action"  # engaged / skipped, only when the history holds all impressions
HISTORY_SOURCES = ("positives", "impressions")
TIMESTAMP_STYLES = ("date", "omit")

DEFAULT_SYSTEM_PROMPT = (
    "The profile of a member follows, then the items they engaged with, the most recent first. "
    "Represent what this member wants to see next in their feed.")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """What goes into prompts. Field lists name table columns; None = every usable column of the
    schema in schema order (ids left out; for items the `text` column goes last)."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    member_fields: tuple[str, ...] | None = None
    item_fields: tuple[str, ...] | None = None
    history_fields: tuple[str, ...] | None = None  # fields of an item inside a member prompt
    history_source: str = "positives"  # or "impressions": skipped items too, marked as such
    max_history_items: int = 50  # stored per example; the token budget trims further
    item_text_chars: int = 2000  # longer text columns are cut at a word boundary
    history_text_chars: int = 300
    timestamps: str = "date"  # "date" (YYYY-MM-DD, UTC) or "omit"
    suffix: str = ""

    def __post_init__(self):
        if self.history_source not in HISTORY_SOURCES:
            raise ValueError(f"PromptTemplate.history_source must be one of {HISTORY_SOURCES}, "
                             f"got {self.history_source!r}")
        if self.timestamps not in TIMESTAMP_STYLES:
            raise ValueError(f"PromptTemplate.timestamps must be one of {TIMESTAMP_STYLES}, got {self.timestamps!r}")
        if self.max_history_items < 0:
            raise ValueError(f"PromptTemplate.max_history_items must be >= 0, got {self.max_history_items}")


class NumberRenderer(Protocol):
    """Turns a numeric column into tagged text (the Quantizer, or a stand-in in tests)."""

    def render(self, column: str, values: pd.Series) -> pd.Series: ...  # "" where absent
    def markers(self) -> list[str]: ...


def open_tag(name: str) -> str:
    return f"<{name}>"


def close_tag(name: str) -> str:
    return f"</{name}>"


@dataclasses.dataclass
class MemberPrompt:
    prefix: str
    profile: list[str]
    history: list[str]  # newest first
    suffix: str = ""

    def text(self) -> str:
        return self.prefix + "".join(self.profile) + "".join(self.history) + self.suffix


def _columns(schema: TableSchema, table: str, chosen: Sequence[str] | None) -> list[str]:
    usable = [c.name for c in schema.table(table) if c.kind != "id"]
    if chosen is None:
        if table == "items" and "text" in usable:  # the long main text last: it is what gets cut
            usable = [c for c in usable if c != "text"] + ["text"]
        return usable
    unknown = [c for c in chosen if c not in schema.names(table)]
    if unknown:
        raise ValueError(f"prompt template names {table} column(s) {unknown} that the schema lacks "
                         f"(it has {schema.names(table)})")
    return list(chosen)


def _cut_text(values: pd.Series, max_chars: int) -> pd.Series:
    long = values.str.len() > max_chars
    if long.any():  # cut at the last space before the limit, when there is one
        cut = values[long].str.slice(0, max_chars).str.replace(r"\s+\S*$", "", regex=True)
        values = values.copy()
        values[long] = cut + "…"
    return values


def _defuse(match: re.Match) -> str:
    return "‹" + match.group(0)[1:-1] + "›"


class PromptRenderer:
    """Renders fields of the users and items tables into prompt pieces, vectorised over frames."""

    def __init__(self, schema: TableSchema, template: PromptTemplate, numbers: NumberRenderer | None = None):
        self.schema, self.template, self.numbers = schema, template, numbers
        self.member_fields = _columns(schema, "users", template.member_fields)
        self.item_fields = _columns(schema, "items", template.item_fields)
        self.history_fields = _columns(schema, "items", template.history_fields or self.item_fields)
        # Numeric columns are tagged by the number renderer (e.g. `<views_percentile>`), not by us.
        names = {ITEM, ACTION}
        names |= {c for c in self.member_fields if schema.column("users", c).kind != "numeric"}
        names |= {c for c in {*self.item_fields, *self.history_fields} if schema.column("items", c).kind != "numeric"}
        own = [tag(name) for name in sorted(names) for tag in (open_tag, close_tag)]
        numeric = self.numbers.markers() if self.numbers is not None else []
        self._markers = own + [m for m in numeric if m not in own]
        # A value must not contain a marker: `<title>` inside a title would open a field.
        self._forged = re.compile("|".join(map(re.escape, sorted(self._markers, key=len, reverse=True))))

    def markers(self) -> list[str]:
        """Every marker the prompts can contain; add them with `tokenizer.add_special_tokens`."""
        return list(self._markers)

    def format(self) -> "PromptFormat":
        """Markers, and what ends an item prompt (kept when `fit_item_tokens` shortens its last field)."""
        last = self.item_fields[-1]
        return PromptFormat(markers=tuple(self.markers()), item_last_field=open_tag(last),
                            item_closing=close_tag(last) + close_tag(ITEM))

    def _field(self, table: str, frame: pd.DataFrame, column: str, max_chars: int) -> pd.Series:
        kind = self.schema.column(table, column).kind
        if column not in frame:
            raise KeyError(f"{table} table has no column '{column}' named by the prompt template")
        values = frame[column]
        present = values.notna()
        if kind == "numeric":
            if self.numbers is None:
                return pd.Series("", index=frame.index)
            return self.numbers.render(column, values).fillna("")
        if kind == "timestamp":
            if self.template.timestamps == "omit":
                return pd.Series("", index=frame.index)
            text = pd.to_datetime(values.where(present), unit="s", utc=True).dt.strftime("%Y-%m-%d")
        elif kind == "bool":
            text = values.map({True: "yes", False: "no"})
        else:
            text = values.where(present).astype(str).str.strip()
            text = self._defused(text)
            if kind == "text":
                text = _cut_text(text.fillna(""), max_chars)
        text = text.fillna("")
        wrapped = open_tag(column) + text + close_tag(column)
        return wrapped.where(text != "", "")

    def _defused(self, text: pd.Series) -> pd.Series:
        """Markers written inside values, defused. Every marker starts with "<": the regex (a Python
        call per match) runs only on the few values that hold one."""
        suspect = text.str.contains("<", regex=False, na=False)
        if suspect.any():
            text = text.copy()
            text[suspect] = text[suspect].str.replace(self._forged, _defuse, regex=True)
        return text

    def _concat(self, table: str, frame: pd.DataFrame, columns: list[str], max_chars: int) -> pd.Series:
        out = pd.Series("", index=frame.index, dtype=object)
        for column in columns:
            out = out + self._field(table, frame, column, max_chars)
        return out

    def item_prompts(self, items: pd.DataFrame) -> list[str]:
        """The stand-alone prompt of every row of `items`."""
        body = self._concat("items", items, self.item_fields, self.template.item_text_chars)
        return (open_tag(ITEM) + body + close_tag(ITEM)).tolist()

    def history_pieces(self, items: pd.DataFrame) -> dict[str, str]:
        """item_id -> its (shorter) form inside a member's history, without the action field."""
        body = self._concat("items", items, self.history_fields, self.template.history_text_chars)
        return dict(zip(items["item_id"].astype(str), body.tolist()))

    def profiles(self, users: pd.DataFrame) -> dict[str, list[str]]:
        """user_id -> its profile fields (missing values leave their field out)."""
        fields = [self._field("users", users, c, self.template.item_text_chars) for c in self.member_fields]
        rows = zip(*[f.tolist() for f in fields]) if fields else ([] for _ in range(len(users)))
        return {uid: [piece for piece in row if piece]
                for uid, row in zip(users["user_id"].astype(str), rows)}

    def member_prompt(self, profile: list[str], history: Sequence[str], engaged: Sequence[bool],
                      pieces: dict[str, str]) -> MemberPrompt:
        """`history` item ids oldest -> newest (as the splits give them) with their engagement flags."""
        return member_prompt(self.template, profile, history, engaged, pieces)


def member_prompt(template: PromptTemplate, profile: list[str], history: Sequence, engaged: Sequence[bool],
                  pieces) -> MemberPrompt:
    """The member prompt from rendered pieces: `profile` fields, `history` item keys oldest -> newest
    with their engagement flags, and `pieces[key]`, each history item's rendered fields. Only the
    newest `max_history_items` kept items are looked up, so `pieces` may render lazily."""
    if len(history) != len(engaged):
        raise ValueError(f"history has {len(history)} items but {len(engaged)} engagement flags")
    keep_all = template.history_source == "impressions"
    out: list[str] = []
    for item_id, flag in zip(reversed(history), reversed(engaged)):
        if len(out) >= template.max_history_items:
            break
        if not (flag or keep_all):
            continue
        action = (open_tag(ACTION) + ("engaged" if flag else "skipped") + close_tag(ACTION)) if keep_all else ""
        out.append("\n" + open_tag(ITEM) + action + pieces[item_id] + close_tag(ITEM))
    return MemberPrompt(prefix=template.system_prompt + "\n", profile=list(profile), history=out,
                        suffix=template.suffix)


# --------------------------------------------------------------------------- token budgets


def fit_member_tokens(prefix: list[int], profile: Sequence[list[int]], history: Sequence[list[int]],
                      suffix: list[int], budget: int) -> tuple[list[int], int]:
    """The member prompt within `budget` tokens: prefix and suffix, the profile fields that fit (in
    order), then the newest history items while they fit. Returns (ids, history items kept)."""
    used = len(prefix) + len(suffix)
    if used > budget:
        raise ValueError(f"the system prompt and suffix alone take {used} tokens, over the member "
                         f"budget of {budget}; raise the budget or shorten PromptTemplate.system_prompt")
    ids = list(prefix)
    for field in profile:  # a long field is skipped whole; a later short one may still fit
        if used + len(field) <= budget:
            ids += field
            used += len(field)
    kept = 0
    for item in history:  # newest first: stop at the first one that does not fit, so no gaps
        if used + len(item) > budget:
            break
        ids += item
        used += len(item)
        kept += 1
    return ids + list(suffix), kept


def fit_item_tokens(ids: list[int], budget: int, last_field_open: int, closing: list[int]) -> list[int]:
    """The item prompt within `budget` tokens. Only its last field (the main text) may be shortened;
    `closing` (that field's end marker and `</item>`) is kept so every field stays closed."""
    if len(ids) <= budget:
        return ids
    keep = budget - len(closing)
    starts = [i for i, t in enumerate(ids) if t == last_field_open]
    if not starts or keep <= starts[-1]:
        raise ValueError(f"an item prompt of {len(ids)} tokens cannot be cut to {budget} inside its last "
                         "field: the fields before it are longer than the item budget")
    return ids[:keep] + list(closing)


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """What tokenising needs to know about prompts rendered earlier (stored with prepared datasets)."""

    markers: tuple[str, ...]
    item_last_field: str  # the open tag of the one field an item prompt may be shortened in
    item_closing: str

    def to_dict(self) -> dict:
        return {"markers": list(self.markers), "item_last_field": self.item_last_field,
                "item_closing": self.item_closing}

    @classmethod
    def from_dict(cls, data: dict) -> "PromptFormat":
        return cls(markers=tuple(data["markers"]), item_last_field=data["item_last_field"],
                   item_closing=data["item_closing"])
