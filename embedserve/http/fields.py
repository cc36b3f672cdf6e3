"""Request bodies as declared fields: each field's parser and its JSON schema side by side.

:mod:`embedserve.http.schemas` declares every request body as a :class:`Body` of :class:`Field` objects. Parsing a
request runs the fields' parsers in order (so the first wrong field is the one reported, as before); the OpenAPI
document (:mod:`embedserve.http.openapi`) asks the same objects for their schemas. A field cannot be parsed without
being documented, nor documented without being parsed.

Schemas that depend on what is served (the model names, the batch limit, the model size) are functions of
:class:`Served`, so the document describes this server, not a generic one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from embedserve.core.capabilities import Capability

T = TypeVar("T")


@dataclass(frozen=True)
class Served:
    """What the request schemas depend on: the served models and their limits."""

    models: tuple[str, ...] = ()
    """The names of the served models that can answer the body (the ``model`` field's values)."""
    default_capable: bool = True
    """Whether the default model is among them; when not, the body must name one."""
    max_client_batch_size: int = 32
    """The largest --max-client-batch-size among them: inputs per request."""
    max_dimensions: int | None = None
    """The largest embedding size (``dimensions`` may ask for fewer), once known."""
    prompts: tuple[str, ...] = ()
    """Prompt names some served model knows."""
    vocab_size: int | None = None
    """The smallest vocabulary of the models, once loaded: token ids run from 0 to one below it."""
    capabilities: frozenset[Capability] = frozenset(Capability)
    """What at least one of them can do (everything while a kind is not known yet): image inputs are documented
    only where a model takes them."""


Schema = Callable[[Served], dict[str, Any]]
"""A JSON schema (OpenAPI 3.1 dialect), given what is served."""


def fixed(schema: dict[str, Any]) -> Schema:
    """A schema that does not depend on what is served."""
    return lambda _: schema


@dataclass(frozen=True)
class Field:
    """One top-level key of a request body: how it is parsed and how it is documented."""

    key: str
    """The JSON key."""
    parse: Callable[[dict[str, Any]], Any]
    """Reads the key from the whole body; raises an embedserve error naming the key when the value is wrong."""
    schema: Schema
    description: str
    attr: str | None = ""
    """The request attribute the value goes to: "" for the key itself, None for read-and-ignored keys."""
    required: bool | Callable[[Served], bool] = False


@dataclass(frozen=True)
class Body(Generic[T]):
    """A request body: its fields in parsing order and what they build. Calling it parses a decoded body."""

    name: str
    """The schema's name in the OpenAPI document's components."""
    build: Callable[..., T]
    """Called with the parsed fields as keyword arguments (by ``attr``)."""
    fields: tuple[Field, ...]
    needs: Capability
    """What the model must be able to do; the document lists a route only when some served model can."""
    description: str = ""
    examples: tuple[dict[str, Any], ...] = field(default=())
    _steps: tuple[tuple[str | None, Callable[[dict[str, Any]], Any]], ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        steps = tuple((f.attr if f.attr is None else f.attr or f.key, f.parse) for f in self.fields)
        object.__setattr__(self, "_steps", steps)  # the hot loop's view of the fields, worked out once

    def __call__(self, body: dict[str, Any]) -> T:
        values: dict[str, Any] = {}
        for attr, parse in self._steps:
            value = parse(body)
            if attr is not None:
                values[attr] = value
        return self.build(**values)

    def schema(self, served: Served) -> dict[str, Any]:
        """The body's JSON schema. Unknown keys are allowed (and ignored), as TEI and the OpenAI API do."""
        properties = {f.key: {**f.schema(served), "description": f.description} for f in self.fields}
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        required = [f.key for f in self.fields if (f.required(served) if callable(f.required) else f.required)]
        if required:
            schema["required"] = required
        if self.description:
            schema["description"] = self.description
        if self.examples:
            schema["examples"] = list(self.examples)
        return schema


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null: optional fields treat null as absent."""
    return {"anyOf": [schema, {"type": "null"}]}
