"""Every error a client can be answered with, in one hierarchy that knows its HTTP status.

Raise a ServiceError (or a subclass) anywhere on a request's path; the web app turns it into the answer in
the shape of the endpoint's protocol (imgq/web/errors.py): the course's `{"success": false, "error": ...}`
for /predict and the page, `{"error": ...}` for Open Inference Protocol v2 and TF Serving. The message is
shown to the client, so it never carries Redis' own error text (host, port, user) or a traceback.

ModelUnavailable is not an answer but a refusal to start: a worker whose model cannot be loaded says why
on one line and exits.
"""
from __future__ import annotations

from collections.abc import Mapping


class ServiceError(Exception):
    """An error with the HTTP status to answer and any extra response headers (Retry-After ...)."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})


# --- the client's request ----------------------------------------------------------------------------
class BadRequest(ServiceError):
    """The request itself is wrong (400 unless a more precise 4xx is given: 404, 413 ...)."""

    status = 400


class BadImage(BadRequest):
    """The upload is not an image we can classify (400), or too large to decode (413)."""


class BadUpload(BadRequest):
    """The multipart body cannot be read."""


class ProtocolError(BadRequest):
    """A v2 / TF Serving request that breaks its protocol (400), or names a model not served (404)."""


# --- the service cannot answer now -------------------------------------------------------------------
class Unavailable(ServiceError):
    """Try again shortly: 503 with Retry-After."""

    status = 503
    retry_after = 1

    def __init__(self, message: str, status: int | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message, status, {"Retry-After": str(self.retry_after), **dict(headers or {})})


class DecodeBusy(Unavailable):
    """Every decode slot of this web process stayed busy for DECODE_WAIT seconds."""


class QueueFull(Unavailable):
    """MAX_QUEUE_LENGTH jobs are waiting already."""


class RedisUnavailable(Unavailable):
    """Redis is down, unreachable, hung or refusing: the message says which, never Redis' own words."""

    retry_after = 2


class JobLost(Unavailable):
    """The request's job vanished from Redis (restarted without it, flushed): nobody will answer it; send it again."""


class TooManyRequests(Unavailable):
    """This client (API key, else address) already has CLIENT_MAX_QUEUED jobs waiting: 429, try again shortly."""

    status = 429


class Unauthorized(ServiceError):
    """No API key, or not one of API_KEYS: 401."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="imgq"'})


class ClientGone(ServiceError):
    """The client closed its connection while its request waited: nobody reads this answer (499, nginx's
    "client closed request", for the access log)."""

    status = 499


class TimedOut(ServiceError):
    """No result within the request's deadline (REQUEST_TIMEOUT)."""

    status = 504


class WorkerFailed(ServiceError):
    """The worker answered the job with an error."""

    status = 500


class PoisonJob(ServiceError):
    """The image's job killed MAX_ATTEMPTS workers (the heartbeat script dead-lettered it): not retried."""

    status = 502


# --- not an answer: a process that cannot start ------------------------------------------------------
class ModelUnavailable(RuntimeError):
    """The model's files cannot be had or do not fit (the message says what to do). The worker prints it on
    one line and exits 2."""
