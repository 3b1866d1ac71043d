"""POST /v1/recommend: a member (profile, recent items) + k + exclusions -> the top-k items,
micro-batched into the engine (ff_jax.serving.batching)."""

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from ff_jax.serving.api import RecommendResponse
from ff_jax.serving.engine import Query
from ff_jax.serving.prompting import member_inputs, request_history
from ff_jax.serving.services import Services, services

RESPONSES = {422: {"description": "a field is out of bounds or unknown"}, 503: {"description": "warming up"}}


def query(body, served: Services) -> Query:
    """The engine's query for a request body (its member prompt tokenised)."""
    engine = served.engine
    tokens, context = member_inputs(engine.prompts, engine.ranker_prompts, body.member.profile,
                                    request_history(body.member.history), engine.prompt_of)
    return Query(tokens, body.k, list(body.exclude_items), list(body.blocked_authors), context)


def router(request_model: type[BaseModel]) -> APIRouter:
    """The route, its body validated by `request_model` (api.RecommendRequest under the app's limits)."""
    routes = APIRouter()

    @routes.post("/v1/recommend", response_model=RecommendResponse, responses=RESPONSES)
    async def recommend(body: request_model, served: Services = Depends(services)):
        served.require_ready()
        found = await served.batcher.submit(query(body, served))
        return {"items": [{"item_id": i, "retrieval_score": s, "ranker_score": r, "author": a}
                          for i, s, r, a in found]}

    return routes
