"""Trace ids: W3C traceparent and X-Request-ID in, carried in the job, written in every log line, echoed out.

Where it sits: first and last thing of every web request, beside the flow. Before the view runs, the
request's `traceparent` (https://www.w3.org/TR/trace-context/) is parsed, or a fresh trace is started; the
trace id goes into a context variable that logutil.log() reads, so every line the web process writes for the
request carries `trace=<32 hex>`. message.make_job copies it into the job (field "trace"), so the worker's
job lines carry it too. The request's id is the caller's X-Request-ID when it is a short plain token, else
the trace id: one id to grep for. After the view, the response gets `traceparent` (same trace id, this
server's own span id, the caller's flags) and `X-Request-ID` (the request's id).

    tracing.install(app)                 # in create_app (app.py); then flask.g.request_id in every request
    tracing.trace_id()                   # the current request's trace id, or None outside a request
"""
from __future__ import annotations

import contextvars
import os
import re
from typing import TYPE_CHECKING

from imgq.observe import logutil

if TYPE_CHECKING:
    from flask import Flask, Response

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# X-Request-ID is free text by convention; it is kept only when it is a short plain token, safe to write
# in a log line, a header and a JSON answer.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)
# True: the trace id was made here, not the caller's.
_fresh: contextvars.ContextVar[bool] = contextvars.ContextVar("trace_fresh", default=False)


def parse_traceparent(header: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) from a traceparent header, or None when it is not a valid one.

    Per the spec: version ff is invalid, all-zero ids are invalid; a future version may append fields
    after the four we know (we keep the first 55 characters)."""
    if not header:
        return None
    header = header.strip().lower()
    version = header[:2]
    if len(header) > 55 and version != "00" and header[55] == "-":
        header = header[:55]
    match = _TRACEPARENT.match(header)
    if not match:
        return None
    version, trace, parent, flags = match.groups()
    if version == "ff" or trace == "0" * 32 or parent == "0" * 16:
        return None
    return trace, parent, flags


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_span_id() -> str:
    return os.urandom(8).hex()


def trace_id() -> str | None:
    """The trace id of the request this thread serves, or None."""
    return _current.get()


def fresh() -> bool:
    """True when the current trace id was made here (the caller sent no traceparent): then it is unique to
    this request, and may serve as its job's id too."""
    return _fresh.get()


def begin(traceparent: str | None = None, request_id: str | None = None) -> tuple[str, str, str]:
    """Start serving one request: returns (trace id, traceparent to answer with, X-Request-ID to answer with)."""
    parsed = parse_traceparent(traceparent)
    trace, flags = (parsed[0], parsed[2]) if parsed else (new_trace_id(), "01")
    _current.set(trace)
    _fresh.set(not parsed)
    logutil.context.set({"trace": trace})
    rid = request_id if request_id and _REQUEST_ID.fullmatch(request_id) else trace
    return trace, f"00-{trace}-{new_span_id()}-{flags}", rid


def end() -> None:
    # gthread reuses threads: a later request on this thread must not inherit this one's trace.
    _current.set(None)
    _fresh.set(False)
    logutil.context.set(None)


def install(app: Flask) -> None:
    """Parse on the way in, echo on the way out, forget at teardown, for every endpoint of `app`."""
    from flask import g, request  # here, so the worker (it imports imgq.jobs.message) never imports Flask

    @app.before_request
    def _begin() -> None:
        _, g.traceparent, g.request_id = begin(request.headers.get("traceparent"), request.headers.get("X-Request-ID"))

    @app.after_request
    def _echo(response: Response) -> Response:
        if g.get("request_id"):
            response.headers["traceparent"] = g.traceparent
            response.headers["X-Request-ID"] = g.request_id
        return response

    @app.teardown_request
    def _end(exc: BaseException | None) -> None:
        end()
