"""WALSTREAM_LOG_FORMAT=json (walstream.log_format) and the dead-letter log line."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import pytest

from tests.unit.test_delivery_agent import Harness, agent, entry, send
from walstream.delivery.dead_letters import DeadLetter, SourceRecord, _log_letter
from walstream.entry import WriteClock
from walstream.log_format import logging_config
from walstream.targets.base import ErrorClass, PermanentError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Logging configured as a JSON-format worker's, into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    config = logging_config("json", "info")
    assert config is not None
    buffer = io.StringIO()
    config["handlers"]["default"] = {**config["handlers"]["default"], "stream": buffer}
    logging.config.dictConfig(config)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])


def test_text_is_fausts_own_format() -> None:
    assert logging_config("text", "info") is None


def test_a_dead_letter_is_one_json_line_with_its_fields_and_without_its_payload(json_lines: io.StringIO) -> None:
    letter = DeadLetter(
        source=SourceRecord("wal.orders", 3, 41, b"k1", b'{"payload": "SECRET-PAYLOAD"}'),
        entry={"ns": "orders", "id": "e-7", "key": "k1", "payload": {"card": "SECRET-PAYLOAD"}},
        target={"type": "cassandra", "keyspace": "shop"},
        error_class=ErrorClass.PERMANENT,
        message="value 'SECRET-PAYLOAD' is not an int",
        attempts=1, first_failure_s=1.0, last_failure_s=2.0,
    )
    _log_letter(letter)
    logging.getLogger("walstream.other").info("plain line")
    lines = json_lines.getvalue().splitlines()
    assert len(lines) == 2
    doc, plain = (json.loads(line) for line in lines)
    assert {k: doc[k] for k in ("level", "logger", "event", "namespace", "entry_id", "target", "error_class",
                                "attempts", "source")} == {
        "level": "WARNING", "logger": "walstream.delivery.dead_letters", "event": "dead_letter",
        "namespace": "orders", "entry_id": "e-7", "target": "cassandra", "error_class": "permanent",
        "attempts": 1, "source": "wal.orders[3]@41",
    }
    assert doc["message"] == (
        "dead letter: orders/e-7 for cassandra, permanent after 1 attempt(s), from wal.orders[3]@41")
    assert doc["time"]
    assert "SECRET-PAYLOAD" not in json_lines.getvalue()
    assert plain["message"] == "plain line" and plain["level"] == "INFO"


async def test_the_dead_letter_writer_logs_each_letter_it_wrote(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    wal, target, producer = harness
    e = entry(1, WriteClock())
    target.script[e.id] = [PermanentError("no such column")]
    with caplog.at_level(logging.WARNING, logger="walstream.delivery.dead_letters"):
        async with agent(wal).test_context() as ctx:
            await send(ctx, e)
    assert len(producer.sent) == 1
    lines = [r for r in caplog.records if getattr(r, "event", None) == "dead_letter"]
    assert [(r.namespace, r.entry_id, r.error_class) for r in lines] == [  # type: ignore[attr-defined]
        ("orders", "e1", "permanent")]
