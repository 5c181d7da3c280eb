"""Pixels → job → Redis → result: the web side of one classification, for every endpoint.

    pending = submit(queue, waiter, pixels)          # job made, waiter registered, job pushed
    result = pending.wait()                          # the worker's result dict (model, predictions, ...)

POST /predict calls it once per upload; an endpoint that takes several images in one request submits them
all first and then waits for each, so every image still travels as its own job and the workers batch
them with everyone else's. Errors a client must hear about are exceptions with the HTTP status to answer:
QueueFull (503), TimedOut (504), WorkerFailed (500), PoisonJob (502); Redis errors propagate (the caller
answers 503).
"""
import json
import time

import job as jobs
import settings
from logutil import log


class ClassifyError(Exception):
    status = 500


class QueueFull(ClassifyError):
    status = 503


class TimedOut(ClassifyError):
    status = 504


class WorkerFailed(ClassifyError):
    status = 500


class PoisonJob(ClassifyError):
    """The image's job killed MAX_ATTEMPTS workers (the heartbeat script dead-lettered it): not retried."""
    status = 502


class Pending:
    """One job on the queue whose result has not been read yet."""

    def __init__(self, queue, waiter, job_id, job_text, event, deadline):
        self.queue, self.waiter = queue, waiter
        self.id, self.job_text, self.event, self.deadline = job_id, job_text, event, deadline

    def wait(self):
        """The worker's result as a dict; raises TimedOut or WorkerFailed. Always stops listening for it."""
        try:
            raw = self.waiter.wait(self.id, self.event, self.deadline)
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

    def cancel(self):
        self.waiter.unregister(self.id)


def submit(queue, waiter, pixels, job_id=None, deadline=None, outputs=None):
    """Push one job for `pixels` (uint8 h x w x 3) and return its Pending. Raises QueueFull, or a Redis error.

    deadline: time.monotonic() by which the client stops waiting (default: now + REQUEST_TIMEOUT).
    outputs: "probabilities" to get the whole probability vector back too (job.make_job).
    """
    job_id = job_id or jobs.new_id()
    deadline = time.monotonic() + settings.REQUEST_TIMEOUT if deadline is None else deadline
    job_text = jobs.make_job(job_id, pixels, max(deadline - time.monotonic(), 0.0), outputs=outputs)
    event = waiter.register(job_id)  # listen before pushing: the answer may come back at once
    pending = Pending(queue, waiter, job_id, job_text, event, deadline)
    try:
        length = queue.push(job_text)
    except BaseException:
        pending.cancel()
        raise
    if length is None:
        pending.cancel()
        log("request.refused", level="WARNING", id=job_id, reason="queue full")
        raise QueueFull(f"the queue is full ({settings.MAX_QUEUE_LENGTH} jobs); try again shortly")
    log("job.pushed", id=job_id, queue=length)
    return pending
