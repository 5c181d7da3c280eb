"""Pixels → job → Redis → result: the web side of one classification, for every endpoint.

    pending = submit(queue, waiter, pixels)          # job made, waiter registered, job pushed
    result = pending.wait()                          # the worker's result dict (model, predictions, ...)
    job_id = submit_async(queue, records, pixels, owner=...)   # Prefer: respond-async: job + its record

POST /predict calls it once per upload; an endpoint that takes several images in one request submits them
all first and then waits for each, so every image still travels as its own job and the workers batch
them with everyone else's. Errors a client must hear about are imgq.errors with the HTTP status to answer:
QueueFull (503), TimedOut (504), WorkerFailed (500), PoisonJob (502), JobLost (503: the job vanished with a
restarted Redis); Redis errors propagate (the app answers 503, imgq/web/errors.py). A waiting request whose
client hangs up (`gone`) takes its job back off the queue, or marks it cancelled when a worker holds it
already, so the worker never runs it.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import redis

from imgq.jobs import connection, message, shares
from imgq.jobs.queue import queue_full
from imgq.jobs.results import Watch
from imgq import settings
from imgq.errors import ClientGone, PoisonJob, TimedOut, WorkerFailed
from imgq.jobs import keys
from imgq.observe import metrics
from imgq.observe.logutil import log

if TYPE_CHECKING:
    from imgq.jobs.queue import JobQueue
    from imgq.jobs.records import Records
    from imgq.jobs.shares import ClientShare
    from imgq.jobs.results import ResultWaiter


class Pending:
    """One job on the queue whose result has not been read yet."""

    def __init__(self, queue: JobQueue, waiter: ResultWaiter, job_id: str, job_text: bytes, event: threading.Event,
                 deadline: float, share: ClientShare | None = None, lane: str = keys.LANES[0]) -> None:
        self.queue, self.waiter, self.lane = queue, waiter, lane
        self.id, self.job_text, self.event, self.deadline = job_id, job_text, event, deadline
        self.share = share  # the client's share of the queue: given back here only if this request withdraws the job
        self.watch: Watch | None = None  # set once pushed: lets the wait tell a vanished job (JobLost, 503)
        # DEDUP=1: the hash of these pixels and model; the job may be shared with other requests, so its result
        # is read without deleting it and a client that hangs up does not cancel it.
        self.digest: str | None = None
        self.answer: bytes | None = None  # a result already in hand (RESULT_CACHE_TTL): wait() returns it

    def wait(self, gone: threading.Event | None = None) -> dict[str, Any]:
        """The worker's result as a dict; raises TimedOut or WorkerFailed, or ClientGone once `gone` is set (the
        client hung up: its job is taken back or cancelled). Always stops listening for it."""
        try:
            raw = self.answer or self.waiter.wait(self.id, self.event, self.deadline, self.watch, gone,
                                                  keep=self.digest is not None)
            if raw is None and gone is not None and gone.is_set():
                self.abandon()
                raise ClientGone("the client closed the connection")
            if raw is None:
                # Take the job back if no worker has it; if one has, its result expires after RESULT_TTL.
                withdrawn = self.withdraw()
                log("request.timeout", level="WARNING", id=self.id, withdrawn=withdrawn)
                raise TimedOut(f"no result by the request's deadline (REQUEST_TIMEOUT, {settings.REQUEST_TIMEOUT:g}s, "
                               "or the client's own, shorter): are the model workers running?")
        finally:
            self.cancel()
        result = json.loads(raw)
        if self.digest and settings.RESULT_CACHE_TTL and self.answer is None and "predictions" in result:
            self.queue.redis.set(keys.cached(self.digest, self.queue.prefix), raw, ex=settings.RESULT_CACHE_TTL)
        if result.get("dead_letter"):
            log("request.dead_lettered", level="ERROR", id=self.id, attempts=result.get("attempts"))
            raise PoisonJob(f"this image crashed {result.get('attempts')} model workers (each died while "
                            "classifying it); it was not retried and is kept in the dead-letter list")
        if "error" in result:
            log("request.failed", level="ERROR", id=self.id, error=result["error"])
            raise WorkerFailed(f"the worker could not classify the image: {result['error']}")
        return result

    def abandon(self) -> None:
        """Nobody waits for this job any more: off the queue if it is still there, else marked cancelled so the
        worker that holds it (taken ahead, not run yet) drops it."""
        if self.digest is not None:  # others may wait for this very job: it runs
            metrics.REQUESTS_ABANDONED.labels("shared").inc()
            return
        withdrawn = self.withdraw()
        if not withdrawn:
            # Until the job's own deadline: a worker drops it then anyway.
            ttl = max(int(self.deadline - time.monotonic()) + 2, 2)
            self.queue.redis.set(keys.cancel(self.id, self.queue.prefix), "1", ex=ttl)
        metrics.REQUESTS_ABANDONED.labels("withdrawn" if withdrawn else "marked").inc()
        log("request.abandoned", id=self.id, withdrawn=withdrawn)

    def withdraw(self) -> bool:
        """Take the job back off its lane if no worker has it yet, giving its client's share unit back (a worker
        gives back the jobs it takes). A job shared with other requests (DEDUP) stays. True if removed."""
        if self.digest is not None:
            return False
        return self.queue.withdraw(self.job_text, self.lane, self.share)

    def cancel(self) -> None:
        self.waiter.unregister(self.id, self.event)


def submit(queue: JobQueue, waiter: ResultWaiter, pixels: np.ndarray, job_id: str | None = None,
           deadline: float | None = None, outputs: str | None = None, trace: str | None = None,
           share: ClientShare | None = None, lane: str = keys.LANES[0]) -> Pending:
    """Push one job for `pixels` (uint8 h x w x 3) and return its Pending. Raises QueueFull, or a Redis error.

    deadline: time.monotonic() by which the client stops waiting (default: now + REQUEST_TIMEOUT).
    outputs: "probabilities" to get the whole probability vector back too (message.make_job).
    trace: the request's trace id, carried in the job so the worker's lines for it can be found.
    share: the client's share of the queue (shares.py), counted by the push: TooManyRequests (429) when the
    client has its fill.
    """
    job_id = job_id or message.new_id()
    deadline = time.monotonic() + settings.REQUEST_TIMEOUT if deadline is None else deadline
    if deadline <= time.monotonic():  # no worker could answer in time: no job for one to drop
        raise TimedOut("the request's deadline passed while its image was read and prepared, before any job "
                       "was queued")
    if settings.DEDUP:
        shared = _deduplicated(queue, waiter, pixels, job_id, deadline, share, lane, outputs)
        if shared.answer is not None or shared.id != job_id:
            return shared
        digest: str | None = shared.digest
    else:
        digest = None
    job_text = message.make_job(job_id, pixels, max(deadline - time.monotonic(), 0.0), outputs=outputs,
                                trace=trace, share=shares.carried(share))
    event = waiter.register(job_id)  # listen before pushing: the answer may come back at once
    pending = Pending(queue, waiter, job_id, job_text, event, deadline, share, lane)
    pending.digest = digest
    generation = waiter.generation  # before the push: a resubscription after it makes the wait look for the job
    try:
        length, epoch = queue.push_job(job_text, lane=lane, share=share)
    except BaseException:
        pending.cancel()
        _unclaim(queue, digest)
        raise
    pending.watch = Watch(queue, job_text, epoch, generation)
    if length is None:
        pending.cancel()
        _unclaim(queue, digest)
        log("request.refused", level="WARNING", id=job_id, reason="queue full")
        raise queue_full()
    log("job.pushed", level="DEBUG", id=job_id, queue=length)
    return pending


def submit_async(queue: JobQueue, records: Records, pixels: np.ndarray, owner: str, timeout: float,
                 lane: str = keys.LANES[0], callback: str = "", trace: str | None = None,
                 share: ClientShare | None = None) -> str:
    """Push one job for `pixels` with its record (status queued), in one round trip; nobody waits for it here.
    Returns its id: 128 random bits, so an id cannot be guessed. Raises QueueFull, or a Redis error."""
    job_id = secrets.token_hex(16)
    job_text = message.make_job(job_id, pixels, timeout, trace=trace, asynchronous=True, callback=bool(callback),
                                share=shares.carried(share))
    with queue.redis.pipeline(transaction=False) as pipe:
        records.create(pipe, job_id, owner, timeout + settings.RESULT_TTL, lane, callback)
        if connection.scripts_in_pipelines(queue.redis):
            queue.push_job(job_text, lane=lane, pipe=pipe, share=share)
            *_, pushed = pipe.execute()
        else:  # Redis Cluster: the record first, then the push (a refused push deletes the record below)
            pipe.execute()
            pushed = queue.push_raw(job_text, lane=lane, share=share)
    if pushed[0] < 0:  # refused: its record goes too
        queue.redis.delete(keys.job(job_id, queue.prefix))
    length, _ = queue.pushed(pushed, share)  # TooManyRequests over the client's share
    if length is None:
        raise queue_full()
    log("job.pushed", level="DEBUG", id=job_id, queue=length, lane=lane, asynchronous=True)
    return job_id


def _unclaim(queue: JobQueue, digest: str | None) -> None:
    """DEDUP=1, the push refused or failed: the claim on these pixels goes, else the identical uploads after
    this one would join a job that was never queued and wait their whole deadline for it. Nobody else can
    hold the claim meanwhile (SET NX, it outlives the deadline)."""
    if digest is None:
        return
    try:
        queue.redis.delete(keys.dedup(digest, queue.prefix))
    except redis.RedisError:  # Redis is failing: the claim expires with this request's deadline
        pass


def _deduplicated(queue: JobQueue, waiter: ResultWaiter, pixels: np.ndarray, job_id: str, deadline: float,
                  share: ClientShare | None, lane: str, outputs: str | None) -> Pending:
    """DEDUP=1: a recent result for the same pixels, model and outputs (RESULT_CACHE_TTL), else the job in
    flight for them (this request waits for it too), else this request's own job becomes the one others join:
    a Pending with this `job_id` and its `digest`, not pushed yet. The outputs count because the protocols want
    the probability vector, which /predict's results lack. Costs a SHA-256 of the pixels and one or two round
    trips; nothing at all with DEDUP off."""
    hasher = hashlib.sha256(f"{settings.MODEL}|{outputs or ''}|{pixels.shape}|".encode())
    hasher.update(np.ascontiguousarray(pixels).data)  # SHA-256 (hardware-assisted here): ~0.3 ms for 150 KB
    digest = hasher.hexdigest()
    none = threading.Event()
    if settings.RESULT_CACHE_TTL:
        cached = queue.redis.get(keys.cached(digest, queue.prefix))
        if cached is not None:
            metrics.DEDUPLICATED.labels("cached").inc()
            answered = Pending(queue, waiter, job_id, b"", none, deadline, share, lane)
            answered.answer, answered.digest = cached, digest
            return answered
    ttl = max(int(deadline - time.monotonic()) + 1, 1)
    if not queue.redis.set(keys.dedup(digest, queue.prefix), job_id, nx=True, ex=ttl):
        leader = queue.redis.get(keys.dedup(digest, queue.prefix))
        if leader is not None:
            metrics.DEDUPLICATED.labels("joined").inc()
            leader_id = leader.decode()
            joined = Pending(queue, waiter, leader_id, b"", waiter.register(leader_id), deadline, share, lane)
            joined.digest = digest
            return joined
    own = Pending(queue, waiter, job_id, b"", none, deadline, share, lane)
    own.digest = digest
    return own
