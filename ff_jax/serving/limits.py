"""Bounds that come from the server's configuration, declared once beside the field they bound.

The request models of ff_jax.serving.api are plain module-level classes; a field whose bound is a
ServerConfig setting carries a `Limit` in its Annotated metadata (`Limit("max_k", lambda n:
Field(le=n))`). Pydantic ignores a Limit, so the classes as declared carry no such bound:
`bounded(Model, config)` gives the app's class, a subclass of the same name whose every Limit,
in its fields and in the models it nests, is the constraint made from config's value. The subclass
keeps the name, docstring and validators, so the OpenAPI schema names the same models.
"""

import copy
import dataclasses
import types
from typing import Annotated, Any, Callable, Union, get_args, get_origin

from pydantic import BaseModel, create_model


@dataclasses.dataclass(frozen=True)
class Limit:
    """Stands for `make(config.<name>)`: a pydantic constraint or validator (e.g. Field(max_length=n))."""

    name: str
    make: Callable[[Any], Any]


def bounded(model: type[BaseModel], config: Any) -> type[BaseModel]:
    """`model` with config's values in place of its Limits (and those of the models it nests)."""
    return _model(model, config, {})


def _model(model: type[BaseModel], config: Any, made: dict) -> type[BaseModel]:
    if model not in made:
        fields = {}
        for name, field in model.model_fields.items():
            info = copy.copy(field)
            info.metadata = [_metadata(m, config) for m in field.metadata]
            fields[name] = (_type(field.annotation, config, made), info)
        made[model] = create_model(model.__name__, __base__=model, __module__=model.__module__, __doc__=model.__doc__,
                                   **fields)
    return made[model]


def _metadata(item: Any, config: Any) -> Any:
    return item.make(getattr(config, item.name)) if isinstance(item, Limit) else item


def _type(tp: Any, config: Any, made: dict) -> Any:
    """`tp` rebuilt with its Limits made (through Annotated, Optional / Union, list, dict and models)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return _model(tp, config, made)
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return Annotated[(_type(args[0], config, made), *(_metadata(m, config) for m in tp.__metadata__))]
    if not args:
        return tp
    rebuilt = tuple(_type(a, config, made) for a in args)
    return Union[rebuilt] if origin in (Union, types.UnionType) else origin[rebuilt]
