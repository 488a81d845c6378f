"""Logging: configured once, as JSON lines or text, and the one line each request leaves.

The request line (logger `service.requests`, INFO) carries the route template, method, status,
latency and the response's X-Request-Id, plus what the request's steps `note()`d: variant, model
version, cold start, cache outcome. Never a request body, so never a user's attribute values.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar, Token
from typing import Any, Literal

LogFormat = Literal["json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUESTS = logging.getLogger("service.requests")
Fields = dict[str, Any]
# the fields of the request being served, filled by its steps; one fresh dict per request
_FIELDS: ContextVar[Fields | None] = ContextVar("mailrec_request_fields", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the request's fields if any,
    and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: Fields = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, the request's fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's own name
        fields: Fields = getattr(record, "fields", {})
        return super().formatMessage(record) + "".join(f" {k}={v}" for k, v in fields.items())


FORMATTERS: dict[str, type[logging.Formatter]] = {"json": JsonFormatter, "text": TextFormatter}


def configure(level: str, fmt: LogFormat) -> None:
    """The service's loggers at `level`, with a handler in `fmt` unless the host process set one
    up (pytest; `python -m service`, with `dict_config`)."""
    logger = logging.getLogger("service")
    logger.setLevel(level.upper())
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(FORMATTERS[fmt]())
        logger.addHandler(handler)


def dict_config(level: str, fmt: LogFormat) -> dict[str, Any]:
    """`logging.config.dictConfig` for a whole process, `python -m service`'s: the root logger in
    `fmt`, uvicorn's loggers through it (uvicorn applies this in each worker process too)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"mailrec": {"()": f"{__name__}.{FORMATTERS[fmt].__name__}"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "mailrec", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {"uvicorn": {"handlers": [], "level": level.upper(), "propagate": True}},
    }


def start_request() -> Token[Fields | None]:
    """A fresh field set for the request starting now; returns the token `end_request` takes."""
    return _FIELDS.set({})


def note(**fields: Any) -> None:
    """Add fields to the current request's log line (nothing outside a request)."""
    current = _FIELDS.get()
    if current is not None:
        current.update(fields)


def end_request(token: Token[Fields | None], **fields: Any) -> None:
    """Log the request's line: `fields` and what its steps noted."""
    noted = _FIELDS.get() or {}
    _FIELDS.reset(token)
    if REQUESTS.isEnabledFor(logging.INFO):
        line = {**fields, **noted}
        REQUESTS.info("%s %s %s", line["method"], line["route"], line["status"], extra={"fields": line})
