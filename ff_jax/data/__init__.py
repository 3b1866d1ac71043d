"""Feed data: the generic tables, MovieLens, the feed_world simulator, splits, the quantiser."""

from ff_jax.data.schema import Column, TableSchema, generic_schema, infer_schema
from ff_jax.data.tables import FeedTables, LoadError, LoadSummary, TableReport, load_tables, validate_tables
from ff_jax.data.movielens import load_movielens_100k
from ff_jax.data.splits import EvalMember, Splits, TrainExample, temporal_split
from ff_jax.data.quantizer import Quantizer, fit_on_training
from ff_jax.data.feed_world import FeedWorld, FeedWorldConfig, FeedWorldTruth, feed_world_config, generate
# Prompts, packing and grain pipelines (prepared datasets: import ff_jax.data.prepared).
from ff_jax.data.batches import DualTowerBatch, EmbeddingBatch  # the batch contract (docs/contracts.md)
from ff_jax.data.prompts import (MemberPrompt, PromptFormat, PromptRenderer, PromptTemplate, fit_item_tokens,
                                 fit_member_tokens)
from ff_jax.data.packing import (DualTowerBatcher, OneTowerBatcher, PackedBatchIterDataset, RowPacker, RowSpec,
                                 padding_waste)
from ff_jax.data.pipeline import (BatchConfig, BucketBatchIterDataset, embedding_batches, item_key,
                                  local_data_shards, padded_batch_count, suggest_rows, to_global, train_batches)
