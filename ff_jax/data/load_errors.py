"""The errors of loading tables: bad input that no rule repairs, and input with too little in it.

Their own module so that the checks (ff_jax.data.tables_checks) and the loader (ff_jax.data.tables)
both raise them without importing each other.
"""


class LoadError(ValueError):
    """Bad input that no rule repairs. The message names the file, row and field."""


class NotEnoughData(LoadError):
    """Input with nothing left to learn or evaluate from: a table without usable rows, no engaged
    interaction, or an empty split. The message names the file and what is missing."""

    label = "not enough data"
