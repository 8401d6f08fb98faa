"""Structured JSON logs that Cloud Logging parses (severity, message, trace, labels).

Each line is one JSON object on stdout. Job context (event id, user and session id, trace) is
held in a context variable and stamped onto every record logged while a job runs, so a single
Logs Explorer query (``jsonPayload.sessionId="..."``) shows a job's whole story.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "inpaint_log_context", default=None
)
_configured = False


class _ContextFilter(logging.Filter):
    """Copies the current job context onto the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class _CloudFormatter(JsonFormatter):
    """Renames Python's level to Cloud Logging's ``severity`` and its trace field."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["severity"] = record.levelname
        log_data.pop("levelname", None)
        trace = log_data.pop("trace", None)
        if trace:
            log_data["logging.googleapis.com/trace"] = trace


def configure_logging(level: str = "INFO") -> None:
    """Installs the JSON handler on the root logger once per process."""
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        _CloudFormatter("%(levelname)s %(name)s %(message)s", rename_fields={"name": "logger"})
    )
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "google", "filelock", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True


#: Libraries that attach their own plain-text handler to their top logger when imported.
LIBRARY_LOGGERS = ("huggingface_hub", "transformers", "diffusers", "torch", "torchao")


def adopt_library_loggers(names: tuple[str, ...] = LIBRARY_LOGGERS) -> None:
    """Routes the named libraries' records through the JSON root handler only.

    huggingface_hub adds a plain ``StreamHandler`` to its logger and still propagates, so each
    of its warnings printed twice (plain, then JSON); transformers and diffusers print plain
    only. Call after importing them (they install the handler on import).
    """
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Adds ``fields`` to every record logged inside the block (nested blocks merge)."""
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)
