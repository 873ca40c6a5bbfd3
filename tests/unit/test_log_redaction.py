"""walstream.log_redaction: what aiohttp logs of a request it cannot parse carries no token."""

from __future__ import annotations

import io
import logging

import pytest

from walstream.log_redaction import install, redact

pytestmark = pytest.mark.timeout(30)

TOKEN = "writer-token-5d8e3f71aa02"


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {TOKEN}",
        f"authorization : bearer {TOKEN}\x01",
        f"b'Authorization: Bearer {TOKEN}xxxxxxxx'",
        f"Authorization: {TOKEN}",
    ],
)
def test_redact(text: str) -> None:
    assert TOKEN not in redact(text) and "<redacted>" in redact(text)


def test_the_filter_cleans_messages_and_tracebacks_of_aiohttp_loggers() -> None:
    install()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("aiohttp.server")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError(f"Invalid header value char: Authorization: Bearer {TOKEN}\x01")
        except ValueError:
            logger.exception("Error handling request from %s: %s", "127.0.0.1", f"Bearer {TOKEN}")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "Error handling request" in out and "ValueError" in out  # the record is kept, cleaned
    assert TOKEN not in out
