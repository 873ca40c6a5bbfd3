"""walstream.web.query: a route's query string against the parameters it declares."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from walstream.web.openapi import Operation, Param
from walstream.web.query import query_problem

OP = Operation(
    "get", "/v1/things/{name}", "things", "things", answers={200: None},
    params=(Param("name", "path", "a path parameter, never in the query", required=True),
            Param("mode", "query", "", {"type": "string", "enum": ["a", "b"]}),
            Param("limit", "query", "", {"type": "integer", "minimum": 1, "maximum": 10}),
            Param("tag", "query", "", {"type": "string", "pattern": "^[a-z]+$"}),
            Param("free", "query", ""),
            Param("id", "query", "", {"type": "array", "items": {"type": "string", "minLength": 1}})),
)


@pytest.mark.parametrize(("query", "problem"), [
    ([], None),
    ([("mode", "a"), ("limit", "10"), ("tag", "abc"), ("free", "anything at all")], None),
    ([("mdoe", "a")], "unknown query parameter 'mdoe' for GET /v1/things/{name}; it takes free, id, limit, mode, tag"),
    ([("id", "a"), ("id", "b"), ("mode", "b")], None),  # an array parameter repeats
    ([("id", "a"), ("id", "")], "id: empty"),
    ([("name", "x")], "unknown query parameter 'name'"),
    ([("mode", "a"), ("mode", "a")], "query parameter 'mode' is given 2 times; give it once"),
    ([("free", "")], "free: empty; leave it out, or give a value"),
    ([("mode", "c")], "mode: expected one of a, b, not 'c'"),
    ([("limit", "0")], "limit: expected a whole number from 1 to 10, not '0'"),
    ([("limit", "11")], "limit: expected a whole number from 1 to 10"),
    ([("limit", "٣")], "limit: expected a whole number"),  # a digit, but not an ASCII one
    ([("limit", "+3")], "limit: expected a whole number"),
    ([("tag", "ABC")], "tag: does not match ^[a-z]+$: 'ABC'"),
])
def test_a_query_is_checked_against_the_declared_parameters(query: list[tuple[str, str]], problem: str | None) -> None:
    found = query_problem(OP, MultiDict(query))
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found


def test_a_route_without_query_parameters_takes_none() -> None:
    op = Operation("get", "/v1/x", "x", "x", answers={200: None})
    assert query_problem(op, MultiDict([("a", "1")])) == "unknown query parameter 'a' for GET /v1/x; it takes none"
