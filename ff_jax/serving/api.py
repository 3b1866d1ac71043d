"""The HTTP API's request and response bodies, with a bound on every field (ServerConfig's limits),
so the OpenAPI schema says what is accepted and everything else is a 4xx naming the field.

Strings refuse lone surrogates and control characters (other than tab and newline): they cannot be
tokenised or logged faithfully. Numbers refuse NaN and infinities. Types are strict: `k: true` or
`k: "5"` is refused, not read as 1 or 5.

The models are declared here once; a bound that is a ServerConfig setting is a `Limit` naming it,
made into the constraint when an app is built: `limits.bounded(RecommendRequest, config)` is the
class an app under `config` validates with and publishes (ff_jax.serving.limits).
"""

import dataclasses
import math
import re
from typing import Annotated, Any, Optional, Union

import gin
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, model_validator

from ff_jax.serving.limits import Limit

_BAD_CHARACTERS = re.compile(r"[\ud800-\udfff\x00-\x08\x0b-\x1f\x7f]")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Limits and batching of `ff-jax serve` (bind with --gin.ServerConfig.NAME=VALUE).

    max_batch / max_queue_delay_ms: a batch runs when it holds max_batch requests or its first
    request has waited max_queue_delay_ms. length_buckets: prompt lengths are padded up to the
    first bucket that holds them (the token budget is always the last), so warm-up can compile
    every served shape: each power of two up to max_batch times each bucket, per tower.
    token_env: the environment variable holding the bearer token of /v1/items (unset: disabled).
    With a ranker in the bundle, a batch's member contexts are prefilled together, padded to the
    same length buckets (up to its context budget), and every member's candidates are scored
    together, `ranker_batch` to a call (as rows of the bundle's `per_row` candidates).
    """

    max_batch: int = 16
    max_queue_delay_ms: float = 2.0
    max_k: int = 200
    max_history: int = 50
    max_profile_fields: int = 32
    max_text_chars: int = 4000
    max_id_chars: int = 256
    max_exclude: int = 1000
    max_items_per_request: int = 64
    max_body_bytes: int = 1 << 20
    length_buckets: tuple[int, ...] = (64, 256)
    token_env: str = "FF_JAX_SERVE_TOKEN"
    log_file: str = "items.jsonl"
    ranker_batch: int = 64  # candidates per ranker score call, over members (padded: one compiled shape)
    overlap_prefill: bool = True  # False: wait for the member's prefill before retrieval (for comparison)

    def __post_init__(self):
        for name in ("max_batch", "max_k", "max_text_chars", "max_id_chars", "max_items_per_request", "max_body_bytes",
                     "ranker_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue_delay_ms < 0:
            raise ValueError(f"ServerConfig.max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")


def _clean(text: str) -> str:
    bad = _BAD_CHARACTERS.search(text)
    if bad:
        raise ValueError(f"contains the character U+{ord(bad.group(0)):04X} (lone surrogates and control "
                         "characters are refused)")
    return text


def _text(max_chars: int):
    return Annotated[str, StringConstraints(max_length=max_chars), AfterValidator(_clean)]


def _field_value(max_chars: int):
    """A profile or item field's validator: a string, a finite number, a boolean or null (one
    message for all)."""

    def check(value):
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ValueError("must be a finite number")
            return value
        if isinstance(value, str):
            if len(value) > max_chars:
                raise ValueError(f"longer than {max_chars} characters")
            return _clean(value)
        raise ValueError("must be a string, a finite number, a boolean or null")

    return PlainValidator(check, json_schema_input_type=Optional[Union[bool, float, _text(max_chars)]])


# The bounded types: each Limit names the ServerConfig field its bound comes from (ff_jax.serving.limits).
Text = Annotated[str, Limit("max_text_chars", lambda n: StringConstraints(max_length=n)), AfterValidator(_clean)]
Id = Annotated[str, StringConstraints(min_length=1), Limit("max_id_chars", lambda n: StringConstraints(max_length=n)),
               AfterValidator(_clean)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Value = Annotated[Any, Limit("max_text_chars", _field_value)]
Fields = Annotated[dict[Name, Value], Limit("max_profile_fields", lambda n: Field(max_length=n))]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no true -> 1, "5" -> 5


# -- requests (declared without their ServerConfig bounds: an app serves `bounded(Model, config)`) --


class HistoryItem(Strict):
    """A recent engagement, newest first: a catalogue `item_id`, an item's `text`, or its `fields`."""

    item_id: Optional[Id] = None
    text: Optional[Text] = None
    fields: Optional[Fields] = None

    @model_validator(mode="after")
    def one_kind(self):
        given = [name for name in ("item_id", "text", "fields") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of item_id, text, fields (got {given or 'none'})")
        return self


class Member(Strict):
    profile: Fields = {}
    history: Annotated[list[HistoryItem], Limit("max_history", lambda n: Field(max_length=n))] = []


class RecommendRequest(Strict):
    member: Member
    k: Annotated[int, Limit("max_k", lambda n: Field(le=n))] = Field(default=10, ge=1)
    exclude_items: Annotated[list[Id], Limit("max_exclude", lambda n: Field(max_length=n))] = []
    blocked_authors: Annotated[list[Id], Limit("max_exclude", lambda n: Field(max_length=n))] = []


class NewItem(Strict):
    item_id: Id
    fields: Annotated[Fields, Field(json_schema_extra={"required": ["text"]})]  # the main text at least
    author: Optional[Id] = None
    created_at: Optional[int] = Field(default=None, ge=0, le=32503680000)  # seconds, before year 3000


class ItemsRequest(Strict):
    items: Annotated[list[NewItem], Limit("max_items_per_request", lambda n: Field(max_length=n))] = Field(min_length=1)


# -- responses ---------------------------------------------------------------------------------


class Recommendation(BaseModel):
    item_id: str
    retrieval_score: float
    ranker_score: Optional[float] = None  # None when the bundle has no ranker (retrieval order)
    author: Optional[str] = None


class RecommendResponse(BaseModel):
    items: list[Recommendation]


class ItemsResponse(BaseModel):
    added: int
    index_size: int
