"""Callbacks: POST an asynchronous job's result to the URL its client gave, signed, retried until it lands.

    submission  the web server checks the URL (http or https, its host in CALLBACK_HOSTS) and keeps it in
                the job's record (records.py)
    job ends    the script that writes the result schedules a delivery: ZADD {prefix}:callbacks now <id>
                (queue.py's _COMPLETE; _BEAT for a dead-lettered job; an expired one when a worker drops it)
    delivery    a worker's callbacks thread claims what is due (a script moves its score a lease ahead, so
                a claim that dies with its process comes due again), POSTs the result JSON with
                `X-Signature: sha256=<hex HMAC-SHA256 of the body under CALLBACK_SECRET>` and its id in the
                body and in `X-Job-Id`; a 2xx ends it (delivered), anything else is tried again after 1, 2,
                4 ... 60 s until CALLBACK_MAX_ATTEMPTS (then failed). Either way the record says so.

The schedule lives in Redis, so a restart of any process loses no delivery. Delivery is at least once: a
process that dies after the receiver answered but before it recorded that will deliver again; a receiver
tells duplicates by the job id.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from typing import Any

import redis

from imgq import settings
from imgq.errors import BadRequest
from imgq.jobs import keys
from imgq.observe.logutil import log

URL_MAX = 2048
LEASE_S = 60  # a claimed delivery comes due again after this, should its process die mid-POST

# Claim up to ARGV[3] deliveries due by ARGV[1]: push each one's score to ARGV[2] (the lease). KEYS[1]: schedule.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id) end
return due
"""


def check_url(url: str) -> str:
    """The callback URL a client gave, if the operator allows it; BadRequest (400) saying why not otherwise."""
    if len(url) > URL_MAX:
        raise BadRequest(f"callback_url is longer than {URL_MAX} characters")
    try:
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        raise BadRequest("callback_url is not a URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise BadRequest("callback_url must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise BadRequest("callback_url may not carry a user name or password")
    allowed = [h.strip().lower() for h in settings.CALLBACK_HOSTS.split(",") if h.strip()]
    if host not in allowed:
        raise BadRequest(f"callback_url's host {host[:80]!r} is not one this server calls back (CALLBACK_HOSTS)")
    return url


def sign(body: bytes, secret: str | None = None) -> str:
    secret = settings.CALLBACK_SECRET if secret is None else secret
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def schedule(pipe: Any, job_id: str, prefix: str, when: float | None = None) -> None:
    pipe.zadd(keys.callbacks(prefix), {job_id: time.time() if when is None else when})


def backoff(attempt: int) -> float:
    return float(min(60, 2 ** max(attempt - 1, 0)))


class Deliverer:
    """A worker's callbacks thread: wakes when the writer scheduled a delivery (nudge) and every
    HEARTBEAT_INTERVAL (retries and a dead worker's claims come due between nudges), claims what is due and
    POSTs it. One slow receiver holds only this thread."""

    def __init__(self, client: Any, prefix: str, worker_id: str) -> None:
        self.redis, self.prefix, self.worker_id = client, prefix, worker_id
        self.wake = threading.Event()
        self._claim = client.register_script(_CLAIM)

    def nudge(self) -> None:
        self.wake.set()

    def run(self, stopping: threading.Event) -> None:
        import requests
        session = requests.Session()
        while not stopping.is_set():
            self.wake.wait(settings.HEARTBEAT_INTERVAL)
            self.wake.clear()
            try:
                while not stopping.is_set() and self.deliver_due(session):
                    pass
            except redis.RedisError as exc:
                log("callback.redis_unavailable", level="WARNING", worker=self.worker_id, error=str(exc))

    def deliver_due(self, session: Any) -> int:
        now = time.time()
        due = self._claim(keys=[keys.callbacks(self.prefix)], args=[now, now + LEASE_S, 16])
        for raw in due:
            self.deliver(session, raw.decode())
        return len(due)

    def deliver(self, session: Any, job_id: str) -> None:
        record_key = keys.job(job_id, self.prefix)
        # The result and the record outlive the deliveries still to come: each attempt keeps them for
        # RESULT_TTL past the longest wait before the next one (a receiver down for minutes still gets the
        # result, not null; an update below never makes a record without an expiry).
        keep = settings.RESULT_TTL + int(backoff(settings.CALLBACK_MAX_ATTEMPTS))
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(record_key, "callback", "status", "callback_attempts")
            pipe.getex(keys.result(job_id, self.prefix), ex=keep)
            pipe.pttl(record_key)
            (url, status, attempts), result, record_ms = pipe.execute()
        if not url:  # the record expired (or never had a callback): nothing to deliver
            self.redis.zrem(keys.callbacks(self.prefix), job_id)
            return
        body = json.dumps({"id": job_id, "status": (status or b"").decode(),
                           "result": json.loads(result) if result else None}, separators=(",", ":")).encode()
        attempt = int(attempts or 0) + 1
        try:
            answer = session.post(url.decode(), data=body, timeout=settings.CALLBACK_TIMEOUT, allow_redirects=False,
                                  headers={"Content-Type": "application/json", "X-Signature": sign(body),
                                           "X-Job-Id": job_id, "User-Agent": "imgq-callback"})
            ok, why = 200 <= answer.status_code < 300, f"HTTP {answer.status_code}"
        except Exception as exc:  # refused, timed out, reset, bad TLS ...: all mean "try again later"
            ok, why = False, type(exc).__name__
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(record_key, "callback_attempts", attempt)
            pipe.pexpire(record_key, max(record_ms, keep * 1000))
            if ok:
                pipe.hset(record_key, "callback_status", "delivered")
                pipe.zrem(keys.callbacks(self.prefix), job_id)
                pipe.hincrby(keys.counters(self.prefix), keys.COUNTER_CALLBACKS_DELIVERED, 1)
            elif attempt >= settings.CALLBACK_MAX_ATTEMPTS:
                pipe.hset(record_key, "callback_status", "failed")
                pipe.zrem(keys.callbacks(self.prefix), job_id)
                pipe.hincrby(keys.counters(self.prefix), keys.COUNTER_CALLBACKS_FAILED, 1)
            else:
                pipe.zadd(keys.callbacks(self.prefix), {job_id: time.time() + backoff(attempt)}, xx=True)
            pipe.execute()
        if ok:
            log("callback.delivered", id=job_id, attempt=attempt)
        else:
            log("callback.failed" if attempt >= settings.CALLBACK_MAX_ATTEMPTS else "callback.retry",
                level="WARNING", id=job_id, attempt=attempt, error=why,
                next_s=None if attempt >= settings.CALLBACK_MAX_ATTEMPTS else backoff(attempt))
