"""How your own table files are read where they leave the documented schema (docs/data_tables.md).

Bind them from gin, e.g. `TablesOptions.rating_threshold = 4` or `--gin.TablesOptions.encoding=latin-1`.
"""

from __future__ import annotations

import codecs
import dataclasses
from typing import Optional

import gin


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TablesOptions:
    """encoding: the codec of CSV / TSV files ("utf-8" (default; a leading BOM is dropped),
        "latin-1", "cp1252", ...). Parquet strings are UTF-8 by the format.
    encoding_errors: "strict" (a byte the codec cannot read is an error naming line and field)
        or "replace" (it becomes U+FFFD; the lines are counted).
    rating_threshold: with explicit ratings instead of an `engaged` column, engaged =
        `rating_column` >= this (MovieLens uses 4); rows without a rating are dropped, counted.
    numeric_ids: ids are compared as text by default ("007" is not 7). True: ids written as
        whole numbers are compared as numbers ("007", "7" and "7.0" all become "7").
    item_text / user_text: a template that makes the items' (members') `text` from their columns,
        e.g. '{title} by {author}' (rules: ff_jax.data.text_template); None: the file's own `text`.
    """

    encoding: str = "utf-8"
    encoding_errors: str = "strict"
    rating_threshold: Optional[float] = None
    rating_column: str = "rating"
    numeric_ids: bool = False
    item_text: Optional[str] = None
    user_text: Optional[str] = None

    def __post_init__(self):
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"TablesOptions.encoding={self.encoding!r}: not a codec Python knows "
                             "(e.g. 'utf-8', 'latin-1', 'cp1252')") from None
        if self.encoding_errors not in ("strict", "replace"):
            raise ValueError(f"TablesOptions.encoding_errors must be 'strict' or 'replace', "
                             f"not {self.encoding_errors!r}")
