"""The bearer token of the write endpoints, as a FastAPI dependency: `dependencies=[Depends(require_token)]`.

The token is read from the environment variable ServerConfig.token_env at each request; unset or
empty, writes are disabled (403). Compared in constant time."""

import hmac
import os

from fastapi import Depends, Request

from ff_jax.serving.problems import Refusal
from ff_jax.serving.services import Services, services


def require_token(request: Request, served: Services = Depends(services)) -> None:
    name = served.config.token_env
    token = os.environ.get(name)
    if not token:
        raise Refusal(403, "authorization", f"writes are disabled: set {name} to enable them")
    given = request.headers.get("authorization", "")
    if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
        raise Refusal(401, "authorization", "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
