"""GET /healthz (the process answers) and GET /readyz (200 once every served shape is compiled and
the items log replayed, else 503 with Retry-After)."""

from fastapi import APIRouter, Depends

from ff_jax.serving.services import Services, services

router = APIRouter()


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "still warming up"}})
async def readyz(served: Services = Depends(services)):
    served.require_ready()
    return {"status": "ready", "index_size": served.engine.index.count, "shapes": len(served.engine.shapes())}
