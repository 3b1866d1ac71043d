"""Reading a GGUF (llama.cpp) file: the reader with clear errors, and its metadata fields by key."""

from __future__ import annotations

from pathlib import Path


def open_gguf(path: str | Path):
    """A `gguf.GGUFReader` with clear errors for a missing or malformed file."""
    import gguf  # here, not at the top: 0.3 s that every `import ff_jax.model` would pay for .gguf files only

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises ValueError/struct.error/IndexError on bad bytes
        raise ValueError(f"{path}: not a readable GGUF file, truncated or corrupt "
                         f"({type(err).__name__}: {err})") from err


REQUIRED = object()


def field(reader, key: str, default=REQUIRED, *, source: str = "GGUF file"):
    """The value of metadata field `key`; raises naming the key when absent and no default."""
    found = reader.fields.get(key)
    if found is None:
        if default is not REQUIRED:
            return default
        raise ValueError(f"{source}: metadata field '{key}' is missing")
    return found.contents()
