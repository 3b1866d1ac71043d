"""POST /v1/items: fresh items -> embedded, logged (fsync), indexed; bearer token required
(ff_jax.serving.auth)."""

import asyncio
import time

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from ff_jax.serving.api import ItemsResponse
from ff_jax.serving.auth import require_token
from ff_jax.serving.services import Services, services

RESPONSES = {401: {"description": "no or wrong bearer token"}, 403: {"description": "writes disabled"},
             409: {"description": "an item id is already in the catalogue"}}


def records(body, served: Services) -> list[dict]:
    """The items log's records of a request's items: their prompts rendered and checked against the
    towers' budgets; no creation time means now."""
    prompts = served.engine.prompts.item_prompts([item.fields for item in body.items])
    served.engine.check_item_prompts(prompts)
    return [{"item_id": item.item_id, "prompt": prompt, "author": item.author,
             "created_at": item.created_at if item.created_at is not None else int(time.time())}
            for item, prompt in zip(body.items, prompts)]


def router(request_model: type[BaseModel]) -> APIRouter:
    """The route, its body validated by `request_model` (api.ItemsRequest under the app's limits)."""
    routes = APIRouter()

    @routes.post("/v1/items", response_model=ItemsResponse, responses=RESPONSES, dependencies=[Depends(require_token)])
    async def add_items(body: request_model, served: Services = Depends(services)):
        served.require_ready()
        added = records(body, served)
        size = await asyncio.get_running_loop().run_in_executor(served.executor, served.engine.add_items, added)
        return {"added": len(added), "index_size": size}

    return routes
