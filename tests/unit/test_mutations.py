from __future__ import annotations

from walstream.mutations import Mutation, parse_mutations


def test_doc_id_single_column_is_the_value() -> None:
    assert Mutation(table="t", op="delete", key={"id": 42}).doc_id() == "42"


def test_doc_id_composite_is_order_independent_and_unambiguous() -> None:
    a = Mutation(table="t", op="delete", key={"a": "x|y", "b": "z"})
    b = Mutation(table="t", op="delete", key={"b": "z", "a": "x|y"})
    c = Mutation(table="t", op="delete", key={"a": "x", "b": "y|z"})
    assert a.doc_id() == b.doc_id()
    assert a.doc_id() != c.doc_id()


def test_payload_round_trip() -> None:
    p = parse_mutations({"mutations": [{"table": "movies", "op": "put", "key": {"id": "1"}, "value": {"y": 1}}]})
    assert p.mutations[0].value == {"y": 1}
