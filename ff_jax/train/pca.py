"""PCA fitted after training: the third dimensionality cut of the ablation (beside Matryoshka
slices and a learned down-projection head). Fitted on corpus embeddings, applied to members and
items alike, then re-normalised for cosine retrieval."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PCA:
    mean: np.ndarray  # [D]
    components: np.ndarray  # [k, D], rows ordered by explained variance
    explained_variance_ratio: np.ndarray  # [k]

    @classmethod
    def fit(cls, embeddings: np.ndarray, dim: int) -> "PCA":
        x = np.asarray(embeddings, np.float64)
        if not 1 <= dim <= min(x.shape):
            raise ValueError(f"PCA dim must be in 1..{min(x.shape)} for {x.shape[0]} embeddings of size "
                             f"{x.shape[1]}, got {dim}")
        mean = x.mean(axis=0)
        _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
        variance = singular ** 2
        return cls(mean.astype(np.float32), vt[:dim].astype(np.float32),
                   (variance[:dim] / variance.sum()).astype(np.float32))

    def truncated(self, dim: int) -> "PCA":
        """The fit for `dim` <= this one's components (SVD components are nested)."""
        return PCA(self.mean, self.components[:dim], self.explained_variance_ratio[:dim])

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        """Projected onto the top components and L2-normalised."""
        projected = (np.asarray(embeddings, np.float32) - self.mean) @ self.components.T
        return projected / np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)
