"""The one host-side (numpy) row normaliser: indexes, evaluation, the embedding store and PCA all
scale embeddings to unit length here. Code under jit uses ff_jax.train.losses.l2_normalize."""

from typing import Any

import numpy as np


def unit_rows(x: Any, what: str = "rows", row_numbers: np.ndarray | None = None) -> np.ndarray:
    """float32 [N, D] rows of unit L2 norm. Refuses by name (`what`) an array that is not 2-D or
    not numeric, NaN/inf, and zero rows: their position, or their number in `row_numbers` when x
    is a sample of a larger array."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D [rows, dim] array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu" and arr.dtype.name != "bfloat16":
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise ValueError(f"{what} row {bad if row_numbers is None else int(row_numbers[bad])} contains NaN or inf")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if arr.shape[0] and (norms == 0).any():
        zero = int(np.argmin(norms[:, 0]))
        raise ValueError(f"{what} row {zero if row_numbers is None else int(row_numbers[zero])} has zero norm "
                         "(cannot be normalised)")
    return arr / norms
