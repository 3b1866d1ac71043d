"""BM25 (Okapi) text retrieval: a member's history text is the query, each item's text a document.

score(q, d) = sum over query tokens t (repeats count) of
              idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
idf(t) = ln((N - n_t + 0.5) / (n_t + 0.5)); a term in more than half the documents would get a
negative idf, so such terms get `epsilon` x the mean idf instead (the convention of the widely used
rank-bm25 package, which the tests compare against). Vectorised: the per-(document, term) weights
form a sparse matrix W, the query token counts a sparse matrix Q, and the scores are Q W'.

Query: the text columns `query_columns` (default "title" and "genres" where the items table has
them, else "text") of the member's engaged history items; documents: the `document_column` text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.recommender import Recommender, TrainingData

TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased runs of letters and digits."""
    return TOKEN.findall(text.lower())


def count_matrix(token_lists: Sequence[Sequence[str]], vocabulary: dict[str, int]) -> sp.csr_matrix:
    """[lists, vocabulary] token counts; tokens outside the vocabulary are dropped."""
    cols = [[vocabulary[t] for t in tokens if t in vocabulary] for tokens in token_lists]
    rows = np.repeat(np.arange(len(cols)), [len(c) for c in cols])
    flat = np.fromiter((c for row in cols for c in row), np.int64, count=int(rows.size))
    matrix = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, flat)), shape=(len(cols), len(vocabulary)))
    matrix.sum_duplicates()
    return matrix


class BM25Index:
    """The BM25 weight matrix of a document collection; `scores(queries)` is [queries, documents]."""

    def __init__(self, documents: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        if not documents:
            raise ValueError("BM25 needs at least one document")
        self.vocabulary = {t: i for i, t in enumerate(sorted({t for doc in documents for t in doc}))}
        tf = count_matrix(documents, self.vocabulary).tocoo()
        lengths = np.array([len(doc) for doc in documents], np.float64)
        n_docs = len(documents)
        df = np.bincount(tf.col, minlength=len(self.vocabulary))
        idf = np.log(n_docs - df + 0.5) - np.log(df + 0.5)
        idf = np.where(idf < 0, epsilon * idf.mean(), idf) if idf.size else idf
        norm = k1 * (1 - b + b * lengths / max(lengths.mean(), 1e-12))
        weight = idf[tf.col] * tf.data * (k1 + 1) / (tf.data + norm[tf.row])
        self.weights = sp.csr_matrix((weight, (tf.row, tf.col)), shape=tf.shape)

    def scores(self, queries: Sequence[Sequence[str]]) -> np.ndarray:
        return np.asarray((count_matrix(queries, self.vocabulary) @ self.weights.T).toarray(), np.float32)


def _column_text(items: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    missing = [c for c in columns if c not in items]
    if missing:
        raise KeyError(f"items table has no column(s) {missing} for BM25 (it has {list(items.columns)})")
    text = items[list(columns)].fillna("").astype(str)
    return text.agg(" ".join, axis=1).tolist()


class BM25(Recommender):
    name = "BM25"

    def __init__(self, query_columns: Sequence[str] | None = None, document_column: str = "text",
                 k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        self.query_columns, self.document_column = query_columns, document_column
        self.k1, self.b, self.epsilon = k1, b, epsilon

    def fit(self, data: TrainingData) -> BM25:
        super().fit(data)
        columns = self.query_columns
        if columns is None:
            columns = [c for c in ("title", "genres") if c in data.items] or ["text"]
        documents = [tokenize(t) for t in _column_text(data.items, [self.document_column])]
        self.index = BM25Index(documents, self.k1, self.b, self.epsilon)
        self.item_query_tokens = [tokenize(t) for t in _column_text(data.items, columns)]
        return self

    def score(self, members: Sequence[EvalMember]) -> np.ndarray:
        queries = [[t for p in self.data.positions(m.engaged_history) for t in self.item_query_tokens[p]]
                   for m in members]
        return self.index.scores(queries)
