"""Every refusal in one form: {"detail": [{"field": ..., "message": ...}]} with the field at fault
("body" for a body that is not JSON or too large), whoever refuses (pydantic, Starlette, the
prompts, the engine, a route)."""

from typing import Optional

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ff_jax.serving.engine import ConflictError
from ff_jax.serving.prompting import FieldError


class Refusal(Exception):
    """A request refused with `status`, naming `field` (raised by routes and their dependencies)."""

    def __init__(self, status: int, field: str, message: str, headers: Optional[dict] = None):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message, self.headers = status, field, message, headers


def problem(status: int, field: str, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"detail": [{"field": field, "message": message}]}, status_code=status, headers=headers)


def field_path(loc) -> str:
    """('body', 'member', 'history', 2, 'item_id') -> 'member.history[2].item_id'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


async def refused(request: Request, err: Refusal) -> JSONResponse:
    return problem(err.status, err.field, err.message, err.headers)


async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    detail = [{"field": "body", "message": f"not valid JSON ({e['ctx']['error']} at character {e['loc'][-1]})"}
              if e["type"] == "json_invalid" else {"field": field_path(e["loc"]), "message": e["msg"].removeprefix("Value error, ")}
              for e in err.errors()]
    return JSONResponse(jsonable_encoder({"detail": detail}), status_code=422)


async def starlette_refusal(request: Request, err: HTTPException) -> JSONResponse:
    # Starlette's own refusals in the same form: a body JSON cannot parse (e.g. nested 100,000
    # deep: FastAPI answers 400 "There was an error parsing the body"), an unknown path or method.
    if err.status_code == 400:
        return problem(400, "body", "could not be parsed as JSON (nested too deeply, or unreadable)")
    field = {404: "path", 405: "method"}.get(err.status_code, "request")
    return problem(err.status_code, field, str(err.detail), headers=getattr(err, "headers", None))


async def bad_field(request: Request, err: FieldError) -> JSONResponse:
    return problem(422, err.field, str(err).split(": ", 1)[-1])


async def conflict(request: Request, err: ConflictError) -> JSONResponse:
    return problem(409, err.field, str(err).split(": ", 1)[-1])


def install(app: FastAPI) -> None:
    """Answers each kind of refusal in the one form."""
    for kind, handler in ((RequestValidationError, invalid), (HTTPException, starlette_refusal),
                          (FieldError, bad_field), (ConflictError, conflict), (Refusal, refused)):
        app.add_exception_handler(kind, handler)
