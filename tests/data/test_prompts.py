"""Prompts: field order and markers, newest-first history, token-budget truncation that drops the
oldest history and never cuts a field, markers as single tokens (byte and LLaMA-3 tokenizers)."""

import itertools

import numpy as np
import pandas as pd
import pytest

from ff_jax.assets import llama3_tokenizer_model
from ff_jax.data.quantizer import Quantizer
from ff_jax.data.prompts import (PromptRenderer, PromptTemplate, fit_item_tokens, fit_member_tokens)
from ff_jax.data.schema import Column, generic_schema
from ff_jax.model.tokenizer import byte_tokenizer, load_tokenizer

SCHEMA = generic_schema(
    users=[Column("headline", "text"), Column("industry", "categorical"), Column("connections", "numeric")],
    items=[Column("title", "text"), Column("views", "numeric"), Column("post_type", "categorical")])


ITEMS = pd.DataFrame({
    "item_id": ["a", "b", "c", "d"],
    "text": ["Rust at scale", "A <title>forged</title> marker", "Quarterly hiring", "word " * 200],
    "created_at": [1_700_000_000, None, 1_600_000_000, 1_650_000_000],
    "title": ["Systems", None, "Hiring", "Long"],
    "views": [5.0, np.nan, 42.0, 99.0],
    "post_type": ["article", "video", "image", "article"],
})
USERS = pd.DataFrame({"user_id": ["u1", "u2"], "headline": ["Data engineer", None],
                      "industry": ["Software", "Finance"], "connections": [310.0, np.nan]})


QUANTIZER = Quantizer({**Quantizer.fit(ITEMS, ["views"]).features, **Quantizer.fit(USERS, ["connections"]).features})


def bucket(value, training_values):
    """The percentile bucket, from numpy directly: 1 + how many of the 1st..99th percentiles it reaches."""
    return 1 + int(np.sum(np.percentile(training_values, np.arange(1, 100)) <= value))


def renderer(**template):
    return PromptRenderer(SCHEMA, PromptTemplate(**template), QUANTIZER)


def test_item_prompt_has_fields_in_schema_order_text_last_and_skips_missing_values():
    prompts = renderer().item_prompts(ITEMS)
    views = bucket(5.0, [5.0, 42.0, 99.0])
    assert prompts[0] == ("<item><created_at>2023-11-14</created_at><title>Systems</title>"
                          f"<views_percentile>{views}</views_percentile><post_type>article</post_type>"
                          "<text>Rust at scale</text></item>")
    assert prompts[1] == "<item><post_type>video</post_type><text>A ‹title›forged‹/title› marker</text></item>"


def test_long_text_is_cut_at_a_word_boundary_inside_its_field():
    prompt = renderer(item_text_chars=23).item_prompts(ITEMS)[3]
    assert prompt.endswith("<text>word word word word…</text></item>")


def test_member_history_is_newest_first_and_positives_only_by_default():
    r = renderer()
    pieces = r.history_pieces(ITEMS)
    history, engaged = ["a", "b", "c"], [True, False, True]  # oldest -> newest
    member = r.member_prompt(r.profiles(USERS)["u1"], history, engaged, pieces)
    assert member.profile == ["<headline>Data engineer</headline>", "<industry>Software</industry>",
                              f"<connections_percentile>{bucket(310.0, [310.0])}</connections_percentile>"]
    assert member.history == ["\n<item>" + pieces["c"] + "</item>", "\n<item>" + pieces["a"] + "</item>"]
    assert member.text().startswith(PromptTemplate().system_prompt)

    everything = renderer(history_source="impressions").member_prompt([], history, engaged, pieces)
    assert [h.split("</action>")[0] for h in everything.history] == [
        "\n<item><action>engaged", "\n<item><action>skipped", "\n<item><action>engaged"]
    capped = renderer(max_history_items=1).member_prompt([], history, engaged, pieces)
    assert len(capped.history) == 1 and pieces["c"] in capped.history[0]


def test_unknown_template_fields_and_modes_are_rejected_by_name():
    with pytest.raises(ValueError, match="salary"):
        PromptRenderer(SCHEMA, PromptTemplate(member_fields=("salary",)))
    with pytest.raises(ValueError, match="history_source"):
        PromptTemplate(history_source="clicks")


def reference_fit(prefix, profile, history, suffix, budget):
    """Brute force: the best prompt keeps profile fields greedily, then the longest run of newest items."""
    used = len(prefix) + len(suffix)
    kept_profile = []
    for field in profile:
        if used + len(field) <= budget:
            kept_profile.append(field)
            used += len(field)
    best = 0
    for k in range(len(history) + 1):
        if used + sum(len(h) for h in history[:k]) <= budget:
            best = k
    return prefix + sum(kept_profile, []) + sum(history[:best], []) + suffix, best


def test_truncation_never_exceeds_the_budget_and_keeps_the_newest_history():
    rng = np.random.default_rng(0)
    for trial in range(300):
        piece = lambda tag: [tag] + [int(x) for x in rng.integers(0, 9, rng.integers(0, 20))]  # noqa: E731
        prefix, suffix = piece(100), piece(200) if trial % 2 else []
        profile = [piece(300 + i) for i in range(rng.integers(0, 4))]
        history = [piece(1000 + i) for i in range(rng.integers(0, 12))]  # index 0 = newest
        budget = int(len(prefix) + len(suffix) + rng.integers(0, 120))
        ids, kept = fit_member_tokens(prefix, profile, history, suffix, budget)
        assert len(ids) <= budget
        assert (ids, kept) == reference_fit(prefix, profile, history, suffix, budget)
        # No field is cut: every field's first token comes with all of its tokens.
        for field in profile + history:
            if field[0] in ids:
                start = ids.index(field[0])
                assert ids[start:start + len(field)] == field


def test_a_budget_smaller_than_the_system_prompt_is_an_error():
    with pytest.raises(ValueError, match="member budget of 3"):
        fit_member_tokens([1, 2, 3, 4], [], [[5]], [], 3)


def test_item_prompt_cut_only_inside_its_last_field_and_stays_closed():
    tok = byte_tokenizer()
    fmt = renderer().format()
    tok.add_special_tokens(fmt.markers)
    prompt = renderer().item_prompts(ITEMS)[3]
    ids = tok.encode(prompt)
    cut = fit_item_tokens(ids, 60, tok.token_to_id(fmt.item_last_field), tok.encode(fmt.item_closing))
    assert len(cut) == 60
    text = tok.decode(cut)
    assert text.endswith("</text></item>") and text.startswith(prompt.split("<text>")[0] + "<text>word")
    with pytest.raises(ValueError, match="cannot be cut to 10"):
        fit_item_tokens(ids, 10, tok.token_to_id(fmt.item_last_field), tok.encode(fmt.item_closing))


@pytest.fixture(scope="module")
def llama3():
    return load_tokenizer(llama3_tokenizer_model())


@pytest.mark.parametrize("which", ["bytes", "llama3"])
def test_markers_are_single_tokens_and_prompts_round_trip(which, llama3):
    tok = byte_tokenizer() if which == "bytes" else llama3
    r = renderer()
    fmt = r.format()
    ids = tok.add_special_tokens(fmt.markers)
    assert len(set(ids)) == len(fmt.markers) and all(i >= tok.vocab_size - len(fmt.markers) for i in ids)
    pieces = r.history_pieces(ITEMS)
    member = r.member_prompt(r.profiles(USERS)["u1"], ["a", "b", "c", "d"], [True] * 4, pieces)
    parts = tok.encode_batch([member.prefix, *member.profile, *member.history, member.suffix])
    prefix, profile, history, suffix = parts[0], parts[1:4], parts[4:-1], parts[-1]
    marker_ids = set(ids)
    for marker, marker_id in zip(fmt.markers, ids):
        assert tok.encode(marker) == [marker_id]
    # The forged "<title>" inside item b's text is plain text, not a marker.
    assert not marker_ids & set(tok.encode("‹title›"))
    budget = len(prefix) + sum(map(len, profile)) + len(history[0]) + len(history[1]) + 1
    fitted, kept = fit_member_tokens(prefix, profile, history, suffix, budget)
    assert kept == 2 and len(fitted) <= budget
    text = tok.decode(fitted)
    assert text == member.prefix + "".join(member.profile) + "".join(member.history[:2])
    # The newest item ("d") is first, the oldest ones were dropped.
    assert text.index("Long") < text.index("Hiring") and "Systems" not in text
    assert list(itertools.chain(*parts)).count(tok.token_to_id("<item>")) == 4


@pytest.mark.parametrize("mode, expected", [("raw", "<views>42</views>"), ("absent", "")])
def test_number_modes_of_the_ablation_change_only_the_number_fields(mode, expected):
    r = PromptRenderer(SCHEMA, PromptTemplate(), QUANTIZER.with_mode(mode))
    prompt = r.item_prompts(ITEMS)[2]
    assert prompt == ("<item><created_at>2020-09-13</created_at><title>Hiring</title>" + expected +
                      "<post_type>image</post_type><text>Quarterly hiring</text></item>")
    assert ("<views>" in r.markers()) == (mode == "raw") and "<views_percentile>" not in r.markers()
