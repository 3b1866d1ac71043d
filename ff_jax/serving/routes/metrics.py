"""GET /metrics: the app's Prometheus registry as text (ff_jax.serving.metrics)."""

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ff_jax.serving.services import Services, services

router = APIRouter()


@router.get("/metrics")
async def prometheus(served: Services = Depends(services)):
    return Response(generate_latest(served.metrics.registry), media_type=CONTENT_TYPE_LATEST)
