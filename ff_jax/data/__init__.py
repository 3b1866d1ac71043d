"""Feed data: the generic tables, MovieLens, the feed_world simulator, splits, the quantiser."""

from ff_jax.data.schema import Column, TableSchema, generic_schema, infer_schema
from ff_jax.data.tables import FeedTables, LoadError, LoadSummary, TableReport, load_tables, validate_tables
from ff_jax.data.movielens import load_movielens_100k
from ff_jax.data.splits import EvalMember, Splits, TrainExample, temporal_split
from ff_jax.data.quantizer import Quantizer, fit_on_training
