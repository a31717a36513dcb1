"""Structured logging: one JSON object per line, fields passed explicitly, never a dataset.

Patient names, IDs, birth dates and accession numbers never reach a log call: the node logs
UIDs, AE titles, addresses, counts and reasons only. pynetdicom's identifier logging is off.
Other libraries quote values (pydicom's "Invalid value for VR DA: '...'"): their records and
warnings (captured into this log) have every quoted part withheld, and a traceback names the
frames and the exception types but keeps only the messages the node wrote (node.redact).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from node.redact import format_exception, withhold_values

_RESERVED = set(vars(logging.makeLogRecord({})))


def message_of(record: logging.LogRecord) -> str:
    """The record's message; a library's (or a warning's) with its quoted values withheld."""
    message = record.getMessage()
    return message if record.name.startswith("fracnode") else withhold_values(message)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": message_of(record),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = format_exception(record.exc_info[1])
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{self.formatTime(record)} {record.levelname:7} {record.name}: {message_of(record)}"
        line = f"{line} {extra}" if extra else line
        if record.exc_info and record.exc_info[1] is not None:
            line += "\n" + format_exception(record.exc_info[1])
        return line


def event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log `message` with structured `fields` (UIDs, AE titles, counts; never patient data)."""
    logger.log(level, message, extra={"fields": fields})


OWN_LOGGERS = ("fracnode", "node")  # the node's own: `fracnode.*` and modules' `__name__`


class LibraryLevel(logging.Filter):
    """The node's records from `own` up, other libraries' from `libraries` up: highdicom alone
    logs an INFO line per content item it builds, which would bury the node's own lines."""

    def __init__(self, own: int, libraries: int) -> None:
        super().__init__()
        self.own = own
        self.libraries = libraries

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".", 1)[0] in OWN_LOGGERS
        return record.levelno >= (self.own if own else self.libraries)


def setup(level: str = "INFO", fmt: str = "json", stream: Any = None, libraries: str = "WARNING") -> None:
    from pynetdicom import _config as pynetdicom_config

    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    own_level, library_level = logging.getLevelName(level), logging.getLevelName(libraries)
    handler.addFilter(LibraryLevel(own_level, library_level))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min(own_level, library_level))
    logging.captureWarnings(True)  # pydicom warns with values: into this log, where they are withheld
    # pynetdicom's own INFO/DEBUG lines describe every PDU; the node logs what operators need
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, library_level))
