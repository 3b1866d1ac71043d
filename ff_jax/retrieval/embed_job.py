"""`ff-jax embed`: embed a whole item corpus and a member set with a dual encoder, resumably.

    ff-jax embed --workdir=runs/x                          # a training run: its config.gin + newest checkpoint
    ff-jax embed --gin_file=model/smollm2_135m.gin --gin_file=runs/train.gin --gin.DATA_DIR=data \
                 --gin.EmbedConfig.zero_shot=True --workdir=runs/zero_shot     # the untuned backbone

The model, data and batch shapes are those of the training run (ff_jax.train.run.Run.open: its
config.gin, then the gin files given, so `--workdir` alone is enough). The checkpoint's parameters
are restored with ff_jax.train's Checkpointer; `zero_shot=True` skips the checkpoint and embeds
with the model as training would start (a pretrained backbone, mean-pooled).

Records are cut into shards of `shard_size`; each shard is tokenised and packed by
ff_jax.data.pipeline.embedding_batches, embedded with a jitted step sharded over the training
mesh, and written by ff_jax.retrieval.embedding_store (resume, Matryoshka widths, dtypes).
Output: `<workdir>/<output>/items/` and `<workdir>/<output>/members_<split>/`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import gin
import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from ff_jax.data.batches import EmbeddingBatch
from ff_jax.data.pipeline import as_text, embedding_batches
from ff_jax.model.sharding import batch_shards, logical_axis_rules, make_mesh, use_rules
from ff_jax.retrieval.embedding_store import STORAGE_DTYPES, ShardWriter
from ff_jax.train import loop, step as steps
from ff_jax.train.checkpointing import CheckpointConfig, Checkpointer
from ff_jax.train.layout import CHECKPOINTS, EMBEDDINGS, ITEMS, members_folder
from ff_jax.train.run import Run

TOWERS = {"item": "item_id", "member": "user_id"}  # tower -> id field of its records


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """towers: which to embed ("item" = the corpus, "member" = the members of `split`; for
    "train", one vector per training record, id `<user_id>#<record index>`: the ranker's
    retrieved negatives, ff_jax.rank.data).
    dims: Matryoshka prefix widths stored besides the full width (each re-normalised).
    dtype: storage type, "float32" / "float16" / "bfloat16". shard_size: records per output shard
    (the unit of resumption). max_records: embed only the first N records of each tower.
    zero_shot: no checkpoint, the model as training starts. checkpoint_step: None = newest.
    overwrite: discard existing embeddings made with other settings instead of refusing."""

    towers: tuple[str, ...] = ("item", "member")
    split: str = "test"
    dims: tuple[int, ...] = ()
    dtype: str = "float32"
    shard_size: int = 4096
    max_records: int | None = None
    output: str = EMBEDDINGS
    zero_shot: bool = False
    checkpoint_step: int | None = None
    overwrite: bool = False

    def __post_init__(self):
        unknown = [t for t in self.towers if t not in TOWERS]
        if unknown or not self.towers:
            raise ValueError(f"EmbedConfig.towers must name some of {sorted(TOWERS)}, got {self.towers}")
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"EmbedConfig.dtype must be one of {sorted(STORAGE_DTYPES)}, got {self.dtype!r}")
        if self.shard_size < 1:
            raise ValueError(f"EmbedConfig.shard_size must be >= 1, got {self.shard_size}")


class NumberedRecords(Sequence):
    """The training split's records with `user_id` made `<user_id>#<record index>`: a member has
    one training record per engagement, each with its own history, so the member's id alone
    does not name a record (`ff-jax embed` refuses repeated ids within a shard)."""

    def __init__(self, records: Sequence):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = dict(self.records[index])
        record["user_id"] = f"{as_text(record['user_id'])}#{index % len(self)}"
        return record


def training_record_index(member_id: str) -> int:
    """The record index in an id written for the training split (`NumberedRecords`)."""
    return int(member_id.rsplit("#", 1)[1])


class RecordSlice(Sequence):
    """records[start:stop] without copying (prepared sources render records when read)."""

    def __init__(self, records: Sequence, start: int, stop: int):
        self.records, self.start, self.stop = records, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self.records[self.start + index % len(self)]


def embed_records(records: Sequence[dict], writer: ShardWriter,
                  make_batches: Callable[[Sequence], Iterable[EmbeddingBatch]],
                  encode: Callable[[EmbeddingBatch], np.ndarray], id_key: str, progress: bool = True,
                  desc: str = "") -> int:
    """Embeds the shards `writer` still lacks; returns how many were computed.

    make_batches(records) -> one-tower batches (ff_jax.data.batches.EmbeddingBatch: `ids`,
    `example_mask`, ...); encode(batch) -> un-normalised vectors [N * B/N, width], an array or a
    jax.Array still being computed (it is read after the next batch is dispatched).
    """
    pending = writer.pending()
    done_records = writer.settings["records"] - sum(len(range(*writer.shard_range(s))) for s in pending)
    with tqdm(total=writer.settings["records"], initial=done_records, desc=desc, unit="record",
              disable=not progress, mininterval=1.0) as bar:
        for shard in pending:
            start, stop = writer.shard_range(shard)
            part = RecordSlice(records, start, stop)
            order = {as_text(part[i][id_key]): i for i in range(len(part))}
            if len(order) != len(part):
                raise ValueError(f"{desc}: records {start}..{stop} repeat an {id_key}")
            vectors = np.zeros((len(part), writer.settings["width"]), np.float32)
            seen = np.zeros(len(part), bool)

            def collect(batch, out):
                out = np.asarray(out, np.float32)  # waits for the device
                keep = np.asarray(batch.example_mask).reshape(-1) > 0
                rows = [order[i] for i, k in zip(batch.ids, keep) if k]
                vectors[rows], seen[rows] = out[keep], True
                bar.update(len(rows))

            # One batch in flight: the device embeds it while the host packs the next.
            in_flight = None
            for batch in make_batches(part):
                dispatched = (batch, encode(batch))
                if in_flight is not None:
                    collect(*in_flight)
                in_flight = dispatched
            if in_flight is not None:
                collect(*in_flight)
            if not seen.all():
                lost = [k for k, i in order.items() if not seen[i]]
                raise RuntimeError(f"{desc}: the batches left out {len(lost)} records of shard {shard}, e.g. {lost[:3]}")
            writer.write(shard, list(order), vectors)
    return len(pending)


# ----------------------------------------------------------------------------- the model


def load_model(run: Run, zero_shot: bool, step: int | None, mesh, rules):
    """(DualEncoder with sharded params, tokenizer, fingerprint of where the weights came from)."""
    spec = run.spec
    model, tokenizer = loop.build_model(spec.data, spec.encoder, spec.loss, spec.model_config, spec.pretrained,
                                        spec.model_overrides, mesh, rules, spec.seed)
    if zero_shot:
        origin = {"source": "zero_shot", "pretrained": str(spec.pretrained) if spec.pretrained else None,
                  "model_config": None if spec.pretrained else repr(spec.model_config), "seed": spec.seed}
        return model, tokenizer, origin
    graphdef, params, frozen = steps.split_model(model, model.backbone.config.lora_rank)
    del model
    ckpt = Checkpointer(run.layout.checkpoints, CheckpointConfig(async_save=False))
    try:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"{run.layout.checkpoints}: no checkpoint; train first, or set "
                                    "--gin.EmbedConfig.zero_shot=True to embed with the untrained model")
        step, weights = ckpt.restore_fields({"params": params, "frozen": frozen}, step=step)
    finally:
        ckpt.close()
    # Relative to the workdir (where the embeddings live too), so a copied or moved workdir resumes.
    origin = {"source": "checkpoint", "checkpoints": CHECKPOINTS, "step": int(step)}
    return nnx.merge(graphdef, weights["params"], weights["frozen"]), tokenizer, origin


def jit_encoder(model, mesh, rules, segments: int) -> Callable[[EmbeddingBatch], jax.Array]:
    """batch -> un-normalised embeddings [N * B/N, E], replicated, the batch sharded over the mesh;
    returned as soon as dispatched (np.asarray waits for it)."""
    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
    def run(state, batch: EmbeddingBatch):
        return nnx.merge(graphdef, state).encode(batch.tokens, batch.segment_ids, batch.positions, batch.slot,
                                                 segments)

    def encode(batch: EmbeddingBatch) -> jax.Array:
        placed = steps.device_batch(batch, steps.batch_shardings(batch, mesh, rules), process_local=False)
        with jax.set_mesh(mesh), use_rules(rules):
            return run(state, placed)

    return encode


def embed_towers(run: Run, config: EmbedConfig, progress: bool = True) -> dict[str, Path]:
    """Embeds `config.towers` of the run's dataset with its model into `<workdir>/<config.output>/`;
    returns tower -> folder."""
    data, rules = run.spec.data, logical_axis_rules()
    mesh = (run.spec.mesh_factory or make_mesh)()
    model, tokenizer, origin = load_model(run, config.zero_shot, config.checkpoint_step, mesh, rules)
    width = model.embedding_dim
    bad = [d for d in config.dims if not 0 < d <= width]
    if bad:
        raise ValueError(f"EmbedConfig.dims {bad} outside 1..{width} (the model's embedding width)")
    num_shards = batch_shards(mesh, rules)
    out_root = run.layout.embeddings(config.output)
    out_root.mkdir(parents=True, exist_ok=True)
    written = {}
    for tower in config.towers:
        name = ITEMS if tower == "item" else members_folder(config.split)
        sources, fmt, _ = data.open_dataset(f"{data.dataset}_corpus" if tower == "item" else data.dataset)
        records = sources["corpus" if tower == "item" else config.split]
        if tower == "member" and config.split == "train":
            records = NumberedRecords(records)
        count = len(records) if config.max_records is None else min(len(records), config.max_records)
        settings = {"records": count, "shard_size": config.shard_size, "width": width,
                    "dims": sorted({*config.dims, width}), "dtype": config.dtype, "tower": tower,
                    "dataset": f"{data.dataset}/{data.config_name}", "split": None if tower == "item" else config.split,
                    "model": origin, "encoder": dataclasses.asdict(run.spec.encoder),
                    "token_budgets": [data.batch.length, data.batch.member_tokens, data.batch.item_tokens],
                    "tokenizer": str(data.tokenizer)}
        writer = ShardWriter(out_root / name, settings, overwrite=config.overwrite,
                             primary=jax.process_index() == 0)
        batch = data.batch.for_embedding(tower)  # rows filled with as many prompts as fit
        make_batches = functools.partial(embedding_batches, tokenizer=tokenizer, fmt=fmt, config=batch,
                                         tower=tower, num_shards=num_shards, shard_index=0, shard_count=1,
                                         read_threads=data.read_threads)
        encode = jit_encoder(model, mesh, rules, batch.max_segments if batch.mode == "packed" else 1)
        embed_records(records, writer, make_batches, encode, TOWERS[tower], progress, desc=f"embedding {name}")
        written[tower] = out_root / name
    return written


@gin.configurable(denylist=["run"])
def embed(run: Run, config: EmbedConfig | None = None, progress: bool = True) -> dict[str, Path]:
    """The gin entry of `ff-jax embed`: the run's model and data, `config` (None builds
    EmbedConfig() here, so `--gin.EmbedConfig.x=...` bindings apply)."""
    config = config or EmbedConfig()
    out_root = run.layout.embeddings(config.output)
    out_root.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (out_root / "embed_config.gin").write_text(gin.config_str())
    return embed_towers(run, config, progress)
