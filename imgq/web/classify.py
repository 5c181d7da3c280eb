"""Pixels → job → Redis → result: the web side of one classification, for every endpoint.

    pending = submit(queue, waiter, pixels)          # job made, waiter registered, job pushed
    result = pending.wait()                          # the worker's result dict (model, predictions, ...)

POST /predict calls it once per upload; an endpoint that takes several images in one request submits them
all first and then waits for each, so every image still travels as its own job and the workers batch
them with everyone else's. Errors a client must hear about are imgq.errors with the HTTP status to answer:
QueueFull (503), TimedOut (504), WorkerFailed (500), PoisonJob (502), JobLost (503: the job vanished with a
restarted Redis); Redis errors propagate (the app answers 503, imgq/web/errors.py).
"""
from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

from imgq.jobs import message
from imgq.jobs.results import Watch
from imgq import settings
from imgq.errors import PoisonJob, QueueFull, TimedOut, WorkerFailed
from imgq.observe.logutil import log

if TYPE_CHECKING:
    import numpy as np

    from imgq.jobs.queue import JobQueue
    from imgq.jobs.shares import ClientShare
    from imgq.jobs.results import ResultWaiter


class Pending:
    """One job on the queue whose result has not been read yet."""

    def __init__(self, queue: JobQueue, waiter: ResultWaiter, job_id: str, job_text: bytes, event: threading.Event,
                 deadline: float, share: ClientShare | None = None) -> None:
        self.queue, self.waiter = queue, waiter
        self.id, self.job_text, self.event, self.deadline = job_id, job_text, event, deadline
        self.share = share  # the client's share of the queue, given back once when this job is done with
        self.watch: Watch | None = None  # set once pushed: lets the wait tell a vanished job (JobLost, 503)

    def wait(self) -> dict[str, Any]:
        """The worker's result as a dict; raises TimedOut or WorkerFailed. Always stops listening for it."""
        try:
            raw = self.waiter.wait(self.id, self.event, self.deadline, self.watch)
            if raw is None:
                # Take the job back if no worker has it; if one has, its result expires after RESULT_TTL.
                withdrawn = self.queue.withdraw(self.job_text)
                log("request.timeout", level="WARNING", id=self.id, withdrawn=withdrawn)
                raise TimedOut(f"no result within REQUEST_TIMEOUT ({settings.REQUEST_TIMEOUT:g}s): "
                               "are the model workers running?")
        finally:
            self.cancel()
        result = json.loads(raw)
        if result.get("dead_letter"):
            log("request.dead_lettered", level="ERROR", id=self.id, attempts=result.get("attempts"))
            raise PoisonJob(f"this image crashed {result.get('attempts')} model workers (each died while "
                            "classifying it); it was not retried and is kept in the dead-letter list")
        if "error" in result:
            log("request.failed", level="ERROR", id=self.id, error=result["error"])
            raise WorkerFailed(f"the worker could not classify the image: {result['error']}")
        return result

    def cancel(self) -> None:
        self.waiter.unregister(self.id)
        share, self.share = self.share, None
        if share is not None:
            share.give_back()


def submit(queue: JobQueue, waiter: ResultWaiter, pixels: np.ndarray, job_id: str | None = None,
           deadline: float | None = None, outputs: str | None = None, trace: str | None = None,
           share: ClientShare | None = None) -> Pending:
    """Push one job for `pixels` (uint8 h x w x 3) and return its Pending. Raises QueueFull, or a Redis error.

    deadline: time.monotonic() by which the client stops waiting (default: now + REQUEST_TIMEOUT).
    outputs: "probabilities" to get the whole probability vector back too (message.make_job).
    trace: the request's trace id, carried in the job so the worker's lines for it can be found.
    share: the client's share of the queue (shares.py): one unit taken here, given back when the wait ends;
    TooManyRequests (429) when the client has its fill.
    """
    job_id = job_id or message.new_id()
    deadline = time.monotonic() + settings.REQUEST_TIMEOUT if deadline is None else deadline
    job_text = message.make_job(job_id, pixels, max(deadline - time.monotonic(), 0.0), outputs=outputs,
                                trace=trace)
    if share is not None:
        share.take()
    event = waiter.register(job_id)  # listen before pushing: the answer may come back at once
    pending = Pending(queue, waiter, job_id, job_text, event, deadline, share)
    generation = waiter.generation  # before the push: a resubscription after it makes the wait look for the job
    try:
        length, epoch = queue.push_job(job_text)
    except BaseException:
        pending.cancel()
        raise
    pending.watch = Watch(queue, job_text, epoch, generation)
    if length is None:
        pending.cancel()
        log("request.refused", level="WARNING", id=job_id, reason="queue full")
        raise QueueFull(f"the queue is full ({settings.MAX_QUEUE_LENGTH} jobs); try again shortly")
    log("job.pushed", level="DEBUG", id=job_id, queue=length)
    return pending
