"""Errors → answers: one handler for the whole app, one body builder per protocol shape.

Anything raised on a request's path ends here: an imgq.errors.ServiceError with its own status, a Redis
error (503, in words that never quote Redis), Werkzeug's 404/405/413, or a crash (500, logged with its
repr, never shown). The body follows the endpoint's protocol:
    the course's shape   {"success": false, "id": "<request id>", "error": "..."}   (/predict, the page, probes)
    v2 / TF Serving      {"error": "..."}                                           (/v2/..., /v1/...)
"""
from __future__ import annotations

from typing import Any

import redis
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from imgq import settings
from imgq.errors import ServiceError
from imgq.jobs.connection import unavailable
from imgq.observe.logutil import log

# Blueprints whose clients expect {"error": ...} (KServe / Triton / TF Serving clients read that field).
PROTOCOL_BLUEPRINTS = ("protocol_v2", "tfserving")
PROTOCOL_PATHS = ("/v2/", "/v1/")


def course_body(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(success=False, id=g.get("request_id"), error=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def protocol_body(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


MESSAGE_MAX = 300  # characters of an error message a client sees: messages may quote the client's own text


def short(text: str, limit: int = MESSAGE_MAX) -> str:
    return text if len(text) <= limit else text[:limit] + f"... (+{len(text) - limit} chars)"


def answer(exc: ServiceError) -> Response:
    """The answer for `exc` in the shape of the current request's protocol."""
    # Werkzeug's own 404 and 405 come before any blueprint: the path says which protocol was spoken.
    protocol = request.blueprint in PROTOCOL_BLUEPRINTS or \
        (request.blueprint is None and request.path.startswith(PROTOCOL_PATHS))
    build = protocol_body if protocol else course_body
    message = short(str(exc))
    if exc.status < 500:
        log("request.rejected", level="WARNING", id=g.get("request_id"), status=exc.status, error=message)
    return build(exc.status, message, exc.headers)


def install(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError) -> Response:
        return answer(exc)

    @app.errorhandler(redis.RedisError)
    def redis_error(exc: redis.RedisError) -> Response:
        log("request.redis_down", level="ERROR", id=g.get("request_id"), error=str(exc))
        return answer(unavailable(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        # 404, 405, 413 ... as JSON like every other answer, not Werkzeug's HTML page.
        if exc.code == 500:  # Flask hands an unhandled exception here, as InternalServerError
            return crashed(getattr(exc, "original_exception", None) or exc)
        if exc.code == 413:
            message = f"body larger than MAX_UPLOAD_BYTES ({settings.MAX_UPLOAD_BYTES} bytes)"
        else:
            message = exc.description or exc.name
        return answer(ServiceError(message, exc.code or 500))

    @app.errorhandler(Exception)
    def crashed(exc: BaseException) -> Response:
        log("request.crashed", level="ERROR", id=g.get("request_id"), error=repr(exc))
        return answer(ServiceError("internal error (logged on the server)", 500))
