"""One log format for every service process: the web server, the model workers and the launcher. The clients
(simple_request.py, stress_test.py) print their results for a person instead.

    log("job.pushed", id=job_id, queue=12)

writes one line per event to stderr:

    2026-11-23T19:04:05.123Z myhost run_web_server.py 4242 INFO job.pushed id=5f0c... queue=12

UTC time with milliseconds, server name (SERVER_NAME or the host name), script (the program started; the web
server's processes say `run_web_server.py` under gunicorn too), pid, level, action, then
key=value fields. The web server and the worker both log the request id as `id=`, so
`grep id=<id>` over all logs shows one request's whole path. LOG_FORMAT=json writes the same as JSON lines.
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from imgq import settings

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
lock = threading.Lock()  # one line at a time (the launcher's copier of its children's lines takes it too)
_server = settings.SERVER_NAME or socket.gethostname()
_script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
if _script == "__main__.py":  # `python -m gunicorn ...`: name the package that runs
    _script = os.path.basename(os.path.dirname(sys.argv[0]))
_threshold = LEVELS.get(settings.LOG_LEVEL, 20)
# Fields every line of the current context carries (tracing.py puts the request's trace id here).
context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("log_context", default=None)
# Where lines go (None: sys.stderr); the launcher writes its own to stdout, beside its children's.
stream: TextIO | None = None


def name_script(name: str) -> None:
    """Name the script this process' lines carry, when the program started is not it (gunicorn runs the web server)."""
    global _script
    _script = name


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%03dZ" % (int(now * 1000) % 1000)


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    # Quote values with spaces, quotes or anything unprintable, so a line always splits back into its fields and
    # a client's text (a path with %0d%0a, a terminal escape) can neither forge a line nor drive the terminal:
    # JSON escapes every control character and every non-ASCII one.
    if not text or not text.isprintable() or not text.isascii() or any(c in text for c in ' "='):
        text = json.dumps(text)
    return text


def _clip(value: object, limit: int) -> object:
    """A field's value cut to `limit` characters, saying how much was cut (numbers and short values as they are)."""
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


def _format(action: str, level: str, now: float, fields: dict[str, Any]) -> str:
    if settings.LOG_FORMAT == "json":
        record = {"ts": _timestamp(now), "server": _server, "script": _script, "pid": os.getpid(),
                  "level": level, "action": action}
        # A field never replaces the line's own ts/server/pid/...: it gets a trailing "_" instead.
        record.update({(k + "_" if k in record else k): v for k, v in fields.items()})
        return json.dumps(record, default=str)
    head = f"{_timestamp(now)} {_server} {_script} {os.getpid()} {level} {action}"
    return " ".join([head] + [f"{k}={_text_value(v)}" for k, v in fields.items()])


def format_line(action: str, level: str = "INFO", now: float | None = None, **fields: Any) -> str:
    """One line, at most LOG_LINE_MAX bytes with its newline: long values are cut, each saying by how much."""
    now = time.time() if now is None else now
    line = _format(action, level, now, fields)
    limit = settings.LOG_LINE_MAX - 1
    share = limit // 2
    while len(line.encode()) > limit and share >= 16:
        # Escaping may grow a value (\u001b is 6 characters for 1): cut every field harder until the line fits.
        line = _format(action, level, now, {k: _clip(v, share) for k, v in fields.items()})
        share //= 2
    if len(line.encode()) > limit:  # too many fields even when each is short: keep the head and say so
        line = _format(action, level, now, {"truncated": f"{len(fields)} fields did not fit LOG_LINE_MAX"})
    return line


_TEXT_HEAD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S+ \S+ \d+ (DEBUG|INFO|WARNING|ERROR) \S")


def is_line(text: str) -> bool:
    """True if `text` is one line in this format (LOG_FORMAT's): the launcher passes those through as they are."""
    if settings.LOG_FORMAT == "json":
        try:
            record = json.loads(text)
        except ValueError:
            return False
        return isinstance(record, dict) and "ts" in record and "action" in record
    return bool(_TEXT_HEAD.match(text))


def log(action: str, level: str = "INFO", **fields: Any) -> None:
    """Write one event. `level` is DEBUG, INFO, WARNING or ERROR; LOG_LEVEL hides the ones below it."""
    if LEVELS.get(level, 20) < _threshold:
        return
    extra = context.get()
    if extra:
        fields = {**extra, **fields}
    line = format_line(action, level, **fields) + "\n"
    with lock:
        if stream is not None:
            stream.write(line)
            stream.flush()
            return
        # One write() of the whole line (at most LOG_LINE_MAX = PIPE_BUF bytes): atomic on a pipe shared with
        # other processes, where text-mode stderr might split it at its buffer's edge.
        try:
            sys.stderr.flush()
            os.write(sys.stderr.fileno(), line.encode("utf-8", "replace"))
        except (AttributeError, OSError, ValueError):  # a stderr without a file descriptor (pytest's capture)
            sys.stderr.write(line)
            sys.stderr.flush()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL_NAMES = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "ERROR"}


class Handler(logging.Handler):
    """Python logging → logutil lines, for libraries that log through `logging` (gunicorn, werkzeug):
    one event per record, action = `action` or the logger's name, the message in `msg`."""

    def __init__(self, action: str | None = None, demote: Callable[[logging.LogRecord], bool] | None = None) -> None:
        super().__init__()
        self.action = action
        self.demote = demote  # a function record → True to log that record at DEBUG (werkzeug's access lines)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "DEBUG" if self.demote and self.demote(record) else _LEVEL_NAMES.get(record.levelno, "INFO")
            fields = {"msg": _ANSI.sub("", record.getMessage())}  # werkzeug colours its lines for a terminal
            if record.exc_info:
                fields["error"] = "".join(traceback.format_exception(*record.exc_info)).strip()
            log(self.action or record.name, level, **fields)
        except Exception:
            self.handleError(record)


def route_logging(name: str | None, action: str | None = None,
                  demote: Callable[[logging.LogRecord], bool] | None = None) -> logging.Logger:
    """Send the `logging` logger `name` through logutil only (its own handlers and format removed)."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(Handler(action, demote))
    logger.setLevel(LEVELS.get(settings.LOG_LEVEL, 20))
    logger.propagate = False
    return logger
