"""The worker's log format: ``text`` (one line per event, as Faust writes it) or ``json`` (one
JSON object per line and event, for log collectors), chosen by ``WALSTREAM_LOG_FORMAT``.

A JSON line has ``time`` (ISO-8601), ``level``, ``logger`` and ``message``, plus the fields an
event passes as ``extra`` (a dead letter: ``event``, ``namespace``, ``entry_id``, ``target``,
``error_class``, ``attempts``, ``source``), and ``exc_info`` with a traceback. Faust configures
logging when its worker starts (``logging.config.dictConfig``), so the format is handed to it
as :func:`logging_config` rather than set up beforehand.
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any

#: the LogRecord attributes a JSON line carries, under the names it gives them
JSON_FIELDS = {"asctime": "time", "levelname": "level", "name": "logger"}


def logging_config(log_format: str, loglevel: str) -> dict[str, Any] | None:
    """A ``logging.config.dictConfig`` document for ``log_format``; None for ``text``
    (Faust's own)."""
    if log_format == "text":
        return None
    level = loglevel.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": " ".join(f"%({name})s" for name in (*JSON_FIELDS, "message")),
                "rename_fields": dict(JSON_FIELDS),
                "timestamp": False,
            }
        },
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
        },
        "root": {"level": level, "handlers": ["default"]},
    }


def configure(log_format: str, loglevel: str) -> None:
    """Log in ``log_format`` from now on (before Faust's worker takes over with the same)."""
    config = logging_config(log_format, loglevel)
    if config is None:
        logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s] [%(levelname)s] %(name)s: %(message)s")
    else:
        logging.config.dictConfig(config)
        logging.captureWarnings(True)  # a Python warning is a log event too, not a bare stderr line
