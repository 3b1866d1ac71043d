"""Periodic validation during training: loss and in-batch accuracy on validation pairs, and
recall@K of held-out targets over the whole corpus (at the full width, the Matryoshka widths and
PCA cuts), the member's engaged history excluded as the evaluation protocol says."""

from typing import Callable, Optional, Sequence

import numpy as np

from ff_jax.data.batches import EmbeddingBatch
from ff_jax.data.ranking_metrics import ranking_metrics, top_k
from ff_jax.train import step as steps
from ff_jax.train.losses import l2_normalize, matryoshka_dims
from ff_jax.train.pca import PCA


class ValidationStopped(Exception):
    """A stop signal arrived during validation."""


def recall_at_ks(members: np.ndarray, corpus: np.ndarray, targets: Sequence[set], ks: Sequence[int],
                 exclude: Optional[Sequence[set]] = None) -> dict[int, float]:
    """{k: recall@k} of corpus positions ranked by dot product, through `top_k` and `ranking_metrics`
    (ff_jax.data.ranking_metrics), the code ff_jax.retrieval's test reports use. Members without a
    target are left out; a k beyond the corpus counts the whole corpus. exclude: positions not to
    rank per member (its engaged history, as the evaluation protocol says)."""
    keep = [i for i, t in enumerate(targets) if t]
    if not keep:
        return {k: 0.0 for k in ks}
    excluded = [sorted(exclude[i]) if exclude is not None else [] for i in keep]
    ranked = top_k(members[keep] @ corpus.T, excluded, max(ks))
    cut = {k: min(k, ranked.shape[1]) for k in ks}
    figures = ranking_metrics(ranked, [targets[i] for i in keep], sorted(set(cut.values())))["all"]
    return {k: figures[f"recall@{c}"] for k, c in cut.items()}


class Validator:
    """Loss and in-batch accuracy on validation pairs; recall@K over the corpus at the full size,
    the nested Matryoshka sizes and PCA sizes. Compiled once per run."""

    def __init__(self, graphdef, step_cfg, eval_step, shardings, mesh, rules, recall_ks=(10,), pca_dims=(),
                 should_stop: Callable[[], bool] = lambda: False):
        self.eval_step, self.mesh, self.rules = eval_step, mesh, rules
        self.should_stop = should_stop  # checked before each batch: raises ValidationStopped
        self.recall_ks, self.pca_dims = tuple(recall_ks), tuple(pca_dims)
        self.embed_members = steps.jit_embed(graphdef, step_cfg.member_segments, shardings, mesh, rules)
        self.embed_items = (self.embed_members if step_cfg.item_segments == step_cfg.member_segments  # one compile
                            else steps.jit_embed(graphdef, step_cfg.item_segments, shardings, mesh, rules))

    def _check_stop(self) -> None:
        if self.should_stop():
            raise ValidationStopped()

    def _embed(self, fn, state, batches):
        sharding = steps.batch_shardings(batches[0], self.mesh, self.rules)

        def embed(batch):
            self._check_stop()
            return fn(state, steps.device_batch(batch, sharding, process_local=False))

        return collect_embeddings(embed, batches)

    def __call__(self, state, validation) -> dict:
        out: dict = {}
        if validation.pair_batches:
            sharding = steps.batch_shardings(validation.pair_batches[0], self.mesh, self.rules)
            totals, weight = {"loss": 0.0, "in_batch_accuracy": 0.0}, 0.0
            for batch in validation.pair_batches:
                self._check_stop()
                metrics = self.eval_step(state, steps.device_batch(batch, sharding, process_local=False))
                n = float(np.sum(batch.example_mask))
                for key in totals:
                    totals[key] += float(metrics[key]) * n
                weight += n
            out.update({k: v / max(weight, 1.0) for k, v in totals.items()})
        member_ids, members = self._embed(self.embed_members, state, validation.member_batches)
        item_ids, items = self._embed(self.embed_items, state, validation.corpus_batches)
        index = {item: i for i, item in enumerate(item_ids)}
        targets = [{index[t] for t in validation.targets[m] if t in index} for m in member_ids]
        exclude = [{index[t] for t in validation.exclude[m] if t in index} for m in member_ids]
        views = {"": (None, None)}
        for dim in matryoshka_dims(members.shape[1])[1:]:
            views[f"/dim{dim}"] = (dim, None)
        if self.pca_dims:  # one SVD; smaller fits are its leading components
            widest = PCA.fit(items, max(self.pca_dims))
            for dim in self.pca_dims:
                views[f"/pca{dim}"] = (None, widest.truncated(dim))
        for suffix, (dim, pca) in views.items():
            if pca is not None:
                m, c = pca.transform(members), pca.transform(items)
            else:
                m, c = (np.asarray(l2_normalize(x[:, :dim] if dim else x)) for x in (members, items))
            for k, recall in recall_at_ks(m, c, targets, self.recall_ks, exclude).items():
                out[f"recall@{k}{suffix}"] = recall
        out["random_recall@10"] = 10.0 / max(len(item_ids), 1)
        return out


def collect_embeddings(embed, batches: list[EmbeddingBatch]) -> tuple[list[str], np.ndarray]:
    """ids and embeddings [n, D] of one-tower batches (filler examples dropped)."""
    ids, rows = [], []
    for batch in batches:
        out = np.asarray(embed(batch))
        keep = np.asarray(batch.example_mask).reshape(-1) > 0
        ids.extend(i for i, k in zip(batch.ids, keep) if k)
        rows.append(out[keep])
    return ids, np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
