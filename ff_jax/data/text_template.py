"""An item's (or member's) `text` made from the columns a file has: `TablesOptions.item_text`.

    --gin.TablesOptions.item_text='{title} by {author}'

Each `{column}` is replaced by that row's value. Rules (docs/data_tables.md):
- a column the template names must exist, and must hold a value in at least one row: otherwise the
  load stops with an error naming the column, the file and the columns it has;
- a missing value in a row (empty, NaN) is written as nothing, and runs of spaces left behind are
  collapsed; a row whose text ends up empty is dropped by the "item with no text" rule, counted;
- the columns the template consumes become part of the text, not fields of their own; every other
  column stays a prompt field as before;
- `{{` and `}}` write literal braces; format specs (`{year:04d}`) are refused.
"""

from __future__ import annotations

import string

import pandas as pd

from ff_jax.data.tables_checks import as_text


class TemplateError(ValueError):
    """A template that cannot make the text column; the message names what is wrong."""


def template_columns(template: str) -> list[str]:
    """The columns a template names, in order of first use."""
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise TemplateError(f"text template {template!r}: {err} (write literal braces as {{{{ and }}}})") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or spec or conversion:
            raise TemplateError(f"text template {template!r}: write each column as {{name}}, without format "
                                f"specs or positions (got {{{name}{'!' + conversion if conversion else ''}"
                                f"{':' + spec if spec else ''}}})")
        if name not in names:
            names.append(name)
    return names


def apply_text_template(frame: pd.DataFrame, template: str, source: str, option: str) -> tuple[pd.DataFrame, list[str]]:
    """`frame` with a `text` column made by `template` and the columns it names removed, and notes for
    the load summary (how many rows missed a value of each column)."""
    names = template_columns(template)
    if not names:
        raise TemplateError(f"{source}: {option}={template!r} names no column; write e.g. '{{title}} by {{author}}'")
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise TemplateError(f"{source}: {option} names column(s) {missing} that the file lacks "
                            f"(it has {list(frame.columns)})")
    if "text" in frame.columns and "text" not in names:
        raise TemplateError(f"{source}: has a 'text' column and {option} would replace it; use {{text}} in the "
                            "template, rename the column, or drop the template")
    values = {n: as_text(frame[n]).str.strip() for n in names}
    empty = [n for n in names if not (values[n] != "").any()]
    if empty and len(frame):
        raise TemplateError(f"{source}: column(s) {empty} named by {option} are empty in every row")
    text = pd.Series("", index=frame.index, dtype=object)
    for literal, name, _, _ in string.Formatter().parse(template):
        text = text + literal
        if name is not None:
            text = text + values[name]
    text = text.str.replace(r"\s{2,}", " ", regex=True).str.strip()
    notes = [f"text = {template!r} ({option})"]
    notes += [f"{int((values[n] == '').sum()):,} rows have no '{n}': written as nothing in the text"
              for n in names if (values[n] == "").any()]
    return frame.drop(columns=names).assign(text=text), notes


def no_text_hint(columns: list[str]) -> str:
    """What to do when the items file has no `text` column and no template was given."""
    shown = [c for c in columns if c not in ("item_id", "created_at")][:2] or ["title"]
    example = " — ".join("{" + c + "}" for c in shown)
    return (f"name the columns that make an item's text with a template, e.g. "
            f"--gin.TablesOptions.item_text='{example}' (or add a 'text' column)")
