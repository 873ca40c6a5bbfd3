"""Mutation payloads (user-facing contract) understood by the cassandra and elasticsearch
targets::

    {"mutations": [{"table": "movies", "op": "put", "key": {"id": "42"},
                    "value": {"title": "Heat", "year": 1995}},
                   {"table": "movies", "op": "delete", "key": {"id": "7"}}]}

Validated at write time when a namespace has such a target, so a malformed payload is a 400
and never reaches the log.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from walstream.namespaces.model import format_validation_error

IDENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")

#: Elasticsearch refuses a whole ``_bulk`` request when one document id is longer than this
#: (bytes of UTF-8); payloads for a namespace with an elasticsearch target are held to it
MAX_ES_DOC_ID_BYTES = 512

Scalar = str | int | float | bool | None


class MutationError(ValueError):
    """A payload is not a valid mutation payload."""


def _check_columns(cols: dict[str, Any], what: str) -> dict[str, Any]:
    for name in cols:
        if not IDENT_RE.match(name):
            raise ValueError(f"{what} column {name!r} must match [a-z][a-z0-9_]{{0,47}}")
    return cols


class Mutation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    table: str
    op: Literal["put", "delete"]
    key: dict[str, Scalar] = Field(min_length=1, max_length=16)
    value: dict[str, Any] | None = None

    @field_validator("table")
    @classmethod
    def _table(cls, v: str) -> str:
        if not IDENT_RE.match(v):
            raise ValueError("table must match [a-z][a-z0-9_]{0,47}")
        return v

    @field_validator("key")
    @classmethod
    def _key(cls, v: dict[str, Scalar]) -> dict[str, Scalar]:
        for col, val in v.items():
            if val is None:
                raise ValueError(f"key column {col!r} is null")
            if isinstance(val, (bool, float)):
                # the document id is the value as text: 1.0, 1 and true would name different
                # documents for what Cassandra may store as one row
                raise ValueError(
                    f"key column {col!r}: give a string or an integer (send floats and booleans as strings)"
                )
        return _check_columns(v, "key")

    @field_validator("value")
    @classmethod
    def _value(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else _check_columns(v, "value")

    @model_validator(mode="after")
    def _op_shape(self) -> Mutation:
        if self.op == "delete" and self.value is not None:
            raise ValueError("a delete takes no value")
        if self.value is not None and set(self.value) & set(self.key):
            raise ValueError("value repeats a key column")
        return self

    def doc_id(self) -> str:
        """Stable document id from the key's values, independent of the client's key order.

        One column: its value as text. Several: values in column-name order joined by
        ``|``, with ``\\`` and ``|`` escaped so that distinct keys never share an id.
        """
        if len(self.key) == 1:
            return _text(next(iter(self.key.values())))
        return "|".join(
            _text(self.key[c]).replace("\\", "\\\\").replace("|", "\\|") for c in sorted(self.key)
        )


def _text(v: Scalar) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class MutationPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mutations: list[Mutation] = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _one_mutation_per_row(self) -> MutationPayload:
        # All mutations of an entry share its write time; two on one row would tie, and
        # the targets break ties differently. One entry, one change per row.
        seen: dict[tuple[str, str], int] = {}
        for i, m in enumerate(self.mutations):
            row = (m.table, m.doc_id())
            if row in seen:
                raise ValueError(f"mutations {seen[row]} and {i} change the same row of {m.table!r}")
            seen[row] = i
        return self


def parse_mutations(payload: Any, *, for_elasticsearch: bool = False) -> MutationPayload:
    """Validate ``payload`` as a mutation payload; raises :class:`MutationError`.

    With ``for_elasticsearch`` (the entry goes to an elasticsearch target) also refuse what
    Elasticsearch can never accept, whatever its index settings: a document id longer than
    :data:`MAX_ES_DOC_ID_BYTES` bytes of UTF-8. (Index names need no check here: table names
    and index prefixes are validated to lower-case, legal, short names.)
    """
    if not isinstance(payload, dict):
        raise MutationError("payload: must be an object with a 'mutations' list")
    try:
        parsed = MutationPayload.model_validate(payload)
    except ValidationError as exc:
        raise MutationError(format_validation_error(exc, prefix="payload.")) from None
    if for_elasticsearch:
        for i, m in enumerate(parsed.mutations):
            problem = es_doc_id_problem(m.doc_id())
            if problem is not None:
                raise MutationError(f"payload.mutations.{i}.key: {problem}")
    return parsed


def es_doc_id_problem(doc_id: str) -> str | None:
    """Why Elasticsearch would refuse ``doc_id`` as a document ``_id``, or ``None``."""
    size = len(doc_id.encode("utf-8", "surrogatepass"))
    if size > MAX_ES_DOC_ID_BYTES:
        return (
            f"the document id is {size} bytes of UTF-8; Elasticsearch accepts at most "
            f"{MAX_ES_DOC_ID_BYTES} (shorten the key's values)"
        )
    if not doc_id:
        return "the document id is empty; Elasticsearch needs a non-empty id (give a non-empty key value)"
    return None
