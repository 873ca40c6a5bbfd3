"""Keeps bearer tokens out of the worker's log.

walstream itself never logs a token (walstream.auth). aiohttp does, before any view runs:
a request whose headers it cannot parse (a control character, an over-long line, a space
before the colon) is logged with the offending header, ``Authorization: Bearer <token>``
included, and so is its exception. :func:`install` puts a filter on aiohttp's loggers that
replaces what follows ``Bearer`` (and any ``Authorization`` header's value) in the message
and in the formatted exception with ``<redacted>``.
"""

from __future__ import annotations

import logging
import re
import traceback

#: the value of an Authorization header, or what follows "Bearer", up to the line's end or a quote
_SECRET = re.compile(r"(?i)(authorization\s*:\s*|bearer\s+)[^\r\n'\"]*")
#: the loggers that see raw requests
LOGGERS = ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.internal", "aiohttp.client")


def redact(text: str) -> str:
    """``text`` with every bearer token and Authorization header value replaced."""
    return _SECRET.sub(lambda m: f"{m.group(1)}<redacted>", text)


class RedactTokens(logging.Filter):
    """Rewrites a record's message and exception text without tokens; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact(text)
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install() -> None:
    """Put the filter on aiohttp's loggers (once)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
