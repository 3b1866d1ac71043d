"""Request fields -> the token ids the towers were trained on, with the dataset's own renderer.

A bundle carries the prompt template, schema, quantiser and format the training prompts were
rendered with (prompts.json), so a member described in a request (profile fields, recent items)
and an item posted to /v1/items become prompts exactly as in training: the same PromptRenderer,
the same truncation (ff_jax.data.pipeline.PromptTokenizer).

A recent item given by catalogue id enters the member prompt in its history form (the template's
`history_fields`, text cut to `history_text_chars`). The catalogue stores each item's full prompt,
so that form is cut back out of it, field by field; a history field that is not an item field is
therefore absent for catalogue items (the default template uses the same fields for both).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ff_jax.data.pipeline import BatchConfig, PromptTokenizer
from ff_jax.data.prompts import PromptFormat, PromptRenderer, PromptTemplate, _cut_text, close_tag, open_tag
from ff_jax.data.quantizer import Quantizer
from ff_jax.data.schema import TableSchema


class FieldError(ValueError):
    """A request field the prompts cannot be made from; `field` names it (e.g. member.profile.age)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class HistoryItem:
    """One recent engagement: a catalogue `item_id`, or the `fields` of an item outside it."""

    item_id: str | None = None
    fields: Mapping[str, Any] | None = None


class ServingPrompts:
    """Renders and tokenises member and item prompts for one bundle."""

    def __init__(self, document: dict, tokenizer):
        template = {k: tuple(v) if isinstance(v, list) else v for k, v in document["template"].items()}
        self.schema = TableSchema.from_dict(document["schema"])
        self.quantizer = Quantizer.from_dict(document["quantizer"])
        self.renderer = PromptRenderer(self.schema, PromptTemplate(**template), self.quantizer)
        self.template = self.renderer.template
        budgets = dict(member_budget=document["member_tokens"], item_budget=document["item_tokens"])
        config = BatchConfig(length=max(budgets.values()), **budgets, add_bos=document["add_bos"],
                             add_eos=document["add_eos"], mode="padded")
        self.format = PromptFormat.from_dict(document["prompt_format"])
        self.tokens = PromptTokenizer(tokenizer, self.format, config)
        self.member_tokens, self.item_tokens = config.member_tokens, config.item_tokens
        self._history_tags = [(c, self._tag(c)) for c in self.renderer.history_fields]

    def _tag(self, column: str) -> str | None:
        """The marker a column is written between in prompts (numbers: the quantiser's tag)."""
        if self.schema.column("items", column).kind != "numeric":
            return column
        if self.quantizer.mode == "absent" or column not in self.quantizer.features:
            return None
        feature = self.quantizer.features[column]
        return feature.tag if self.quantizer.mode == "quantile" else feature.raw_tag

    # -- fields -> table rows ----------------------------------------------------------------

    def _row(self, table: str, fields: Mapping[str, Any], where: str) -> dict[str, Any]:
        """One table row from request fields, each checked against its schema kind."""
        row: dict[str, Any] = {c.name: None for c in self.schema.table(table) if c.kind != "id"}
        for name, value in fields.items():
            field = f"{where}.{name}"
            if name not in row:
                raise FieldError(field, f"not a {table} column of this bundle (known: {sorted(row)})")
            kind = self.schema.column(table, name).kind
            if value is None:
                continue
            if kind == "numeric" or kind == "timestamp":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise FieldError(field, f"must be a finite number ({kind} column), got {value!r}")
            elif kind == "bool":
                if not isinstance(value, bool):
                    raise FieldError(field, f"must be true or false, got {value!r}")
            elif not isinstance(value, str):
                raise FieldError(field, f"must be a string ({kind} column), got {type(value).__name__}")
            row[name] = value
        return row

    def _frame(self, table: str, rows: Sequence[dict], ids: Sequence[str]) -> pd.DataFrame:
        frame = pd.DataFrame(list(rows), columns=[c for c in rows[0]]) if rows else pd.DataFrame()
        frame.insert(0, "user_id" if table == "users" else "item_id", list(ids))
        for column in self.schema.table(table):
            if column.kind in ("numeric", "timestamp") and column.name in frame:
                frame[column.name] = pd.to_numeric(frame[column.name], errors="coerce").astype(float)
        return frame

    # -- items ---------------------------------------------------------------------------------

    def item_prompts(self, items: Sequence[Mapping[str, Any]], where: str = "items") -> list[str]:
        """The prompts of items given as {column: value} (the `text` column is required)."""
        rows = [self._row("items", fields, f"{where}[{i}].fields") for i, fields in enumerate(items)]
        for i, row in enumerate(rows):
            if not (row.get("text") or "").strip():
                raise FieldError(f"{where}[{i}].fields.text", "is required and must not be blank")
        if not rows:
            return []
        return self.renderer.item_prompts(self._frame("items", rows, [str(i) for i in range(len(rows))]))

    def item_token_ids(self, prompts: Sequence[str]) -> list[np.ndarray]:
        return self.tokens.items(list(prompts))

    def history_piece(self, item_prompt: str) -> str:
        """An item's history form, cut out of its full prompt (see the module docstring)."""
        out = []
        for column, tag in self._history_tags:
            if tag is None:
                continue
            found = re.search(re.escape(open_tag(tag)) + "(.*?)" + re.escape(close_tag(tag)), item_prompt, re.S)
            if found is None:
                continue
            value = found.group(1)
            if self.schema.column("items", column).kind == "text":
                value = _cut_text(pd.Series([value]), self.template.history_text_chars).iloc[0]
            out.append(open_tag(tag) + value + close_tag(tag))
        return "".join(out)

    # -- members -------------------------------------------------------------------------------

    def member_record(self, profile: Mapping[str, Any], history: Sequence[HistoryItem],
                      catalogue_prompt: Mapping[str, str], where: str = "member") -> dict:
        """The member prompt's parts, as the prepared records hold them; `history` newest first (as
        prompts list it), catalogue ids looked up in `catalogue_prompt` (item id -> full prompt)."""
        row = self._row("users", profile, f"{where}.profile")
        pieces: dict[str, str] = {}
        keys = []
        for i, item in enumerate(history):
            key = f"#{i}"
            if item.item_id is not None:
                prompt = catalogue_prompt.get(item.item_id)
                if prompt is None:
                    raise FieldError(f"{where}.history[{i}].item_id", f"unknown item {item.item_id!r}")
                pieces[key] = self.history_piece(prompt)
            else:
                fields = self._row("items", item.fields or {}, f"{where}.history[{i}].fields")
                frame = self._frame("items", [fields], [key])
                pieces[key] = self.renderer.history_pieces(frame)[key]
            keys.append(key)
        profiles = self.renderer.profiles(self._frame("users", [row], ["member"]))["member"]
        oldest_first = keys[::-1]
        prompt = self.renderer.member_prompt(profiles, oldest_first, [True] * len(keys), pieces)
        return {"member_prefix": prompt.prefix, "member_profile": prompt.profile,
                "member_history": prompt.history, "member_suffix": prompt.suffix}

    def member_token_ids(self, profile: Mapping[str, Any], history: Sequence[HistoryItem],
                         catalogue_prompt: Mapping[str, str], where: str = "member") -> np.ndarray:
        """Token ids of the member tower's prompt (see `member_record`)."""
        return self.tokens.member(self.member_record(profile, history, catalogue_prompt, where))


def request_history(entries: Sequence[Any]) -> list[HistoryItem]:
    """A request's `member.history` (entries with one of item_id, text, fields set) as HistoryItems:
    a bare `text` is an item whose only field is its text."""
    return [HistoryItem(item_id=e.item_id) if e.item_id is not None
            else HistoryItem(fields=e.fields if e.fields is not None else {"text": e.text}) for e in entries]


def member_inputs(prompts: ServingPrompts, ranker: RankerPrompts | None, profile: Mapping[str, Any],
                  history: Sequence[HistoryItem],
                  catalogue_prompt: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray | None]:
    """The member tower's token ids and, with a ranker, the ranker's context token ids (else None),
    both from the one member prompt (see `ServingPrompts.member_record`)."""
    record = prompts.member_record(profile, history, catalogue_prompt)
    return prompts.tokens.member(record), None if ranker is None else ranker.context.member(record)


class RankerPrompts:
    """The ranker's context (member prompt within the context budget, BOS, no EOS) and candidates
    (item prompt within what the question leaves, then the question), as RankerData makes them."""

    def __init__(self, prompts: ServingPrompts, document: dict):
        base = prompts.tokens
        config = dataclasses.replace(base.config, length=max(document["context_budget"], document["item_tokens"]),
                                     member_budget=document["context_budget"], item_budget=document["item_tokens"],
                                     add_bos=document["add_bos"], add_eos=False)
        self.context = PromptTokenizer(base.tok, prompts.format, config)
        self.items = PromptTokenizer(base.tok, prompts.format, dataclasses.replace(config, add_bos=False))
        self.question = list(document["question"])

    def candidate(self, item_prompt: str) -> list[int]:
        return list(self.items.items([item_prompt])[0]) + self.question


def padded(token_ids: Sequence[np.ndarray], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded tokens and segment ids int32 [len(token_ids), length] (1 on tokens, 0 on padding)."""
    tokens = np.full((len(token_ids), length), pad_id, np.int32)
    segments = np.zeros((len(token_ids), length), np.int32)
    for row, ids in enumerate(token_ids):
        tokens[row, : len(ids)], segments[row, : len(ids)] = ids, 1
    return tokens, segments
