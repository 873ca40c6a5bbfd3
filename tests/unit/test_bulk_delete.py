"""``walstream bulk-delete``: every key a delete entry with an id of its run, in batches, with
the spread as each entry's jitter; a bad keys file is a one-line error naming the line, and
nothing is sent; the summary counts what the worker answered. Against Cassandra through a
worker: tests/integration/test_pacing.py writes its burst the same way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_cli import Server, one_line_error, run

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def batches(server: Server) -> list[list[dict[str, Any]]]:
    return [body["entries"] for method, path, body, _ in server.received if (method, path) == ("POST", "/v1/log/batch")]


def answering(server: Server, durable: str = "SUCCESS", duplicate: bool = False) -> None:
    def respond(method: str, path: str, body: Any) -> tuple[int, str, bytes]:
        results = [{"durable": durable, "id": e["id"], "partition": 0, "offset": n, "duplicate": duplicate,
                    **({"message": "no such table", "status": 400} if durable == "FAILED" else {})}
                   for n, e in enumerate(body["entries"])]
        return 200, "application/json", json.dumps({"results": results}).encode()

    server.respond = respond


def test_every_key_is_a_delete_of_the_run_in_batches_spread_by_jitter(server: Server, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("".join(f"m{i}\n" for i in range(1203)))
    answering(server)
    result = run(["--url", server.url, "bulk-delete", "catalog", "--table", "movies", "--keys-file", str(keys),
                  "--key-column", "id", "--spread", "10m", "--run-id", "r1"])
    assert result.exit_code == 0, result.output
    sent = batches(server)
    assert [len(b) for b in sent] == [500, 500, 203]
    first, last = sent[0][0], sent[-1][-1]
    assert first == {"namespace": "catalog", "id": "r1:1", "lifecycle": {"jitter_ms": 600_000},
                     "payload": {"mutations": [{"table": "movies", "op": "delete", "key": {"id": "m0"}}]}}
    assert last["id"] == "r1:1203" and last["payload"]["mutations"][0]["key"] == {"id": "m1202"}
    assert result.stdout.strip() == "written 1203, written before 0, refused 0, unknown 0"
    assert "run id r1: 1203 deletes" in result.stderr


def test_json_keys_and_a_rerun_of_the_same_run_writes_nothing_twice(server: Server, tmp_path: Path) -> None:
    keys = tmp_path / "keys.jsonl"
    keys.write_text('{"id": "a", "year": 1995}\n\n{"id": "b", "year": 2001}\n')
    answering(server, duplicate=True)
    result = run(["--url", server.url, "bulk-delete", "catalog", "--table", "movies", "--keys-file", str(keys),
                  "--run-id", "r2"])
    assert result.exit_code == 0, result.output
    [sent] = batches(server)
    assert [e["payload"]["mutations"][0]["key"] for e in sent] == [{"id": "a", "year": 1995}, {"id": "b", "year": 2001}]
    assert "lifecycle" not in sent[0]  # no spread: due at once
    assert result.stdout.startswith("written 0, written before 2,")


@pytest.mark.parametrize(
    ("lines", "args", "problem"),
    [
        ('{"id": "a"}\nnot json\n', [], "keys file line 2: not JSON"),
        ('["a"]\n', [], "keys file line 1:"),
        ("a\n", ["--table", "Movies"], "keys file line 1:"),
        ("", [], "the keys file has no keys"),
    ],
)
def test_a_bad_keys_file_is_one_line_naming_the_line_and_nothing_is_sent(
    server: Server, tmp_path: Path, lines: str, args: list[str], problem: str
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(lines)
    table = args or ["--table", "movies"]
    column = ["--key-column", "id"] if "--table" in args else []
    line = one_line_error(run(["--url", server.url, "bulk-delete", "catalog", *table, "--keys-file", str(keys),
                               *column]))
    assert problem in line and "nothing written" in line, line
    assert server.received == []


def test_refused_deletes_make_it_exit_1_saying_the_first(server: Server, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("a\nb\n")
    answering(server, durable="FAILED")
    result = run(["--url", server.url, "bulk-delete", "catalog", "--table", "movies", "--keys-file", str(keys),
                  "--key-column", "id", "--run-id", "r3"])
    assert result.exit_code == 1
    assert result.stdout.startswith("written 0, written before 0, refused 2, unknown 0; first: r3:1: FAILED no such")


@pytest.mark.parametrize("spread", ["10", "1d", "-1s", "m"])
def test_a_spread_that_is_no_duration_is_refused(server: Server, tmp_path: Path, spread: str) -> None:
    keys = tmp_path / "keys"
    keys.write_text("a\n")
    result = run(["--url", server.url, "bulk-delete", "catalog", "--table", "movies", "--keys-file", str(keys),
                  "--key-column", "id", "--spread", spread])
    assert result.exit_code == 2 and "is not a duration" in result.stderr
    assert server.received == []


def test_ids_name_the_keys_line_in_the_file_and_a_spread_past_the_limit_is_refused(
    server: Server, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text('{"id": "160"}\n\n{"id": "161"}\n')
    answering(server)
    result = run(["--url", server.url, "bulk-delete", "catalog", "--table", "movies", "--keys-file", str(keys),
                  "--run-id", "runB"])
    assert result.exit_code == 0, result.output
    assert [e["id"] for e in batches(server)[0]] == ["runB:1", "runB:3"]  # line 2 is blank
    server.received.clear()
    result = run(["--url", server.url, "bulk-delete", "catalog", "--table", "movies", "--keys-file", str(keys),
                  "--spread", "9000h"])
    assert result.exit_code == 2 and "at most 366 days" in result.stderr and server.received == []
