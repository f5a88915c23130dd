"""Logging: readable lines on a terminal, one JSON object a line otherwise (for log collectors)."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

# The id of the HTTP request being handled (set by the server), added to every record logged meanwhile.
request_id: ContextVar[str | None] = ContextVar("kbqa_request_id", default=None)

# transformers imports torchao whenever it is installed (the finetune extra has it), and torchao warns
# on import about kernels a CPU machine lacks and about torch API changes; none of it concerns a user.
_QUIET_LOGGERS = ("torchao", "torch.utils._pytree")

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object with its `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line."""
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to records made while a request is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return True, having set the record's request id when there is one."""
        if (current := request_id.get()) is not None and not hasattr(record, "request_id"):
            record.request_id = current
        return True


def configure_logging(level: str = "WARNING") -> None:
    """Send log records to stderr, as JSON lines unless stderr is a terminal; return nothing."""
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet_import_noise()


def quiet_import_noise() -> None:
    """Show only errors of the loggers that warn on import about nothing a user can act on; return nothing."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
