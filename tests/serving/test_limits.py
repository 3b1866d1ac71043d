"""Request models declared once with ServerConfig bounds as Limits: an app's classes carry its
config's values, in nested models too, and keep the names and validators of the declaration."""

import pytest
from pydantic import ValidationError

from ff_jax.serving.api import ItemsRequest, RecommendRequest, ServerConfig
from ff_jax.serving.limits import bounded


def test_bounds_are_the_configs_in_every_nested_model():
    config = ServerConfig(max_k=3, max_history=2, max_id_chars=4, max_text_chars=5, max_profile_fields=1,
                          max_items_per_request=2)
    Request = bounded(RecommendRequest, config)
    assert Request.__name__ == "RecommendRequest" and issubclass(Request, RecommendRequest)
    assert Request.model_validate({"member": {"history": [{"item_id": "abcd"}] * 2}, "k": 3}).k == 3
    for body, where in [({"member": {}, "k": 4}, ("k",)),
                        ({"member": {"history": [{"item_id": "a"}] * 3}}, ("member", "history")),
                        ({"member": {"history": [{"item_id": "abcde"}]}}, ("member", "history", 0, "item_id")),
                        ({"member": {"history": [{"text": "abcdef"}]}}, ("member", "history", 0, "text")),
                        ({"member": {"profile": {"headline": "abcdef"}}}, ("member", "profile", "headline")),
                        ({"member": {"profile": {"a": 1, "b": 2}}}, ("member", "profile")),
                        ({"member": {"history": [{"item_id": "a", "text": "b"}]}}, ("member", "history", 0))]:
        with pytest.raises(ValidationError) as refused:
            Request.model_validate(body)
        assert [e["loc"] for e in refused.value.errors()] == [where], body
    Items = bounded(ItemsRequest, config)
    item = {"item_id": "a", "fields": {"text": "t"}}
    assert len(Items.model_validate({"items": [item] * 2}).items) == 2
    with pytest.raises(ValidationError, match="at most 2 items"):
        Items.model_validate({"items": [item] * 3})


def test_two_configs_do_not_share_bounds():
    small, large = bounded(RecommendRequest, ServerConfig(max_k=3)), bounded(RecommendRequest, ServerConfig(max_k=300))
    assert large.model_validate({"member": {}, "k": 200}).k == 200
    with pytest.raises(ValidationError):
        small.model_validate({"member": {}, "k": 200})
    assert RecommendRequest.model_validate({"member": {}, "k": 10 ** 6}).k == 10 ** 6  # the declaration alone: no bound
