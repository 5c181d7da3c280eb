"""Model worker: Redis queue → batch → model → results.

Loop: take up to BATCH_SIZE jobs in one atomic step (jobqueue.take_batch, blocking while the queue is
empty), classify them in one model call, write every result with SET ... EX RESULT_TTL and empty the
in-flight list (jobqueue.complete). A heartbeat thread keeps this worker's heartbeat key alive and puts
the in-flight jobs of dead workers back on the queue.

SIGTERM / SIGINT: finish the batch in hand, write its results, return untaken jobs, exit 0.
Settings are checked before anything else (a wrong one: one line on stderr, exit 2); `--help` starts nothing.
"""
import argparse
import os
import signal
import socket
import sys
import threading
import time
import uuid

import numpy as np
import redis

import activity
import job as jobs
import metrics
import models
import redisconn
import settings
import workerinfo
from jobqueue import JobQueue, connect
from logutil import log

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def _trace(job):
    """The request's trace id for the job's log lines (tracing.py), when the web server sent one."""
    return {"trace": job["trace"]} if isinstance(job.get("trace"), str) else {}


class Interrupted(Exception):
    """Raised by the signal handler to leave a blocking pop; never while a batch is being processed."""


class Worker:
    def __init__(self, model, client=None):
        self.model = model
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self._beat_now = threading.Event()  # set: the heartbeat thread beats at once (see _on_connect)
        # The read timeout must outlast the blocking pop.
        self.queue = JobQueue(client or connect(socket_timeout=settings.BLOCK_TIMEOUT + 10,
                                                redis_connect_func=self._on_connect))
        self.stop_signal = None
        self._heartbeat_thread = None
        self._blocked = False  # True only inside take_batch, where a signal may interrupt

    # --- signals -----------------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        # No logging here: the handler runs between two bytecodes of the main thread, which may be inside
        # log() holding its lock or stderr's (a deadlock, or a "reentrant call" error). The loop logs it.
        self.stop_signal = signal.Signals(signum).name
        self.stopping.set()
        if self._blocked:
            raise Interrupted()

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # --- heartbeat ---------------------------------------------------------------------------------
    def _on_connect(self, connection):
        # The loop's connection is new: first start, or Redis is back (perhaps restarted, empty, without
        # this worker's registration). Beat now rather than up to HEARTBEAT_INTERVAL later, so /healthz
        # counts this worker as soon as it can take jobs again.
        connection.on_connect()
        self._beat_now.set()

    def _heartbeat(self):
        hb_queue = JobQueue(connect(socket_timeout=5), self.queue.prefix)
        healthy, announced = True, None
        while not self.stopping.is_set():
            self._beat_now.clear()
            try:
                self._reap(hb_queue.beat(self.id))
                # The model record for /healthz: after the first beat, after an outage, and once a minute in
                # case Redis restarted between two beats or a /healthz pruned it while this worker stalled.
                if announced is None or not healthy or time.monotonic() - announced > workerinfo.REFRESH_S:
                    workerinfo.announce(hb_queue.redis, hb_queue.prefix, self.id, self.model.name,
                                        workerinfo.runtime_of(self.model))
                    announced = time.monotonic()
                if not healthy:
                    log("redis.back", worker=self.id)
                healthy = True
            except REDIS_ERRORS as exc:
                if healthy:
                    log("redis.down", level="WARNING", worker=self.id, error=str(exc))
                healthy = False
            # While Redis is away, try often: the first beat after it returns re-registers this worker.
            self._beat_now.wait(settings.HEARTBEAT_INTERVAL if healthy else min(settings.HEARTBEAT_INTERVAL, 0.5))

    def _reap(self, reaped):
        requeued, dead_lettered = reaped
        if requeued:
            log("worker.recovered", worker=self.id, requeued=requeued, reason="dead worker's jobs")
        for job_id in dead_lettered:
            log("job.dead_lettered", level="ERROR", worker=self.id, id=job_id, attempts=settings.MAX_ATTEMPTS,
                reason="its worker died each time: not retried, client told")

    # --- the loop ----------------------------------------------------------------------------------
    def run(self):
        log("worker.ready", worker=self.id, model=self.model.name, runtime=getattr(self.model, "runtime", None),
            threads=getattr(self.model, "threads", None), batch_size=settings.BATCH_SIZE,
            batch_wait_ms=settings.BATCH_WAIT_MS)
        self._heartbeat_thread = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        self._heartbeat_thread.start()
        backoff = 0.1
        orphans = False
        while not self.stopping.is_set():
            try:
                if orphans:
                    self._return_orphans()
                    orphans = False
                self._blocked = True
                raws = self.queue.take_batch(self.id, settings.BATCH_SIZE, settings.BLOCK_TIMEOUT,
                                             settings.BATCH_WAIT_MS)
                self._blocked = False
                backoff = 0.1
            except Interrupted:
                break
            except REDIS_ERRORS as exc:
                self._blocked = False
                self._beat_now.set()  # the heartbeat thread learns of the outage now and retries often
                orphans = True
                log("redis.unavailable", level="WARNING", worker=self.id, error=str(exc), retry_s=backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if raws:
                self.process(raws)
        self._blocked = False
        log("worker.stopping", worker=self.id, signal=self.stop_signal)
        self.shutdown()

    def _return_orphans(self):
        # Between batches this worker's in-flight list is empty, so what is in it now was moved there by a
        # take whose answer never came (BLMOVE done, then a timeout on a hung Redis or a cut connection):
        # put it back on the queue, or the next batch's complete() would delete it unanswered.
        returned = self.queue.return_inflight(self.id)
        if returned:
            log("worker.returned", worker=self.id, returned=returned, reason="a take cut short by Redis")

    def process(self, raws):
        """Classify one batch and write its results. Bad entries get an error result (or a log line when
        they carry no id); they never stop the rest of the batch."""
        taken = time.time()
        results, good, expired, bad = {}, [], 0, 0
        for raw in raws:
            try:
                job, pixels = jobs.parse_job(raw, self.model.input_size)
            except jobs.BadJob as exc:
                log("job.bad", level="WARNING", worker=self.id, id=exc.job_id, error=str(exc))
                bad += 1
                if exc.job_id:
                    results[exc.job_id] = jobs.make_result(exc.job_id, error=str(exc))
                continue
            if jobs.expired(job, taken):
                log("job.expired", worker=self.id, id=job["id"], **_trace(job), reason="its client stopped waiting")
                expired += 1
                continue
            good.append((job, pixels))
        if good:
            started = time.perf_counter()
            try:
                probabilities = self.model.predict(np.stack([pixels for _, pixels in good]))
            except Exception as exc:  # a model failure answers the batch with an error, not a dead worker
                log("batch.failed", level="ERROR", worker=self.id, error=repr(exc))
                probabilities = None
            inference_ms = round((time.perf_counter() - started) * 1000, 2)
            for i, (job, _) in enumerate(good):
                if probabilities is None:
                    results[job["id"]] = jobs.make_result(job["id"], error="the model failed on this batch")
                    continue
                queue_ms = round((taken - job.get("enqueued", taken)) * 1000, 2)
                extra = {}
                if job.get("outputs") == "probabilities":  # the protocol endpoints want the whole vector
                    extra["probabilities"] = jobs.encode_probabilities(probabilities[i])
                results[job["id"]] = jobs.make_result(
                    job["id"], model=self.model.name, batch=len(good), queue_ms=queue_ms,
                    inference_ms=inference_ms,
                    predictions=jobs.top_predictions(probabilities[i], self.model.labels), **extra)
                log("job.done", worker=self.id, id=job["id"], **_trace(job), batch=len(good),
                    queue_ms=queue_ms, inference_ms=inference_ms)
        self._write(results)
        metrics.record_batch(self.queue, self.model.name, len(good), inference_ms / 1000 if good else 0.0,
                             [max(taken - job.get("enqueued", taken), 0.0) for job, _ in good],
                             failed=len(good) if good and probabilities is None else 0, expired=expired, bad=bad)
        if good:  # the page's live view: one script call, a record only while a page watches
            activity.batch_done(self.queue, self.id, self.model.name, len(good), inference_ms)

    def _write(self, results):
        # Results are worth a retry while their clients may still wait; the in-flight list keeps the jobs
        # safe meanwhile (a restarted Redis has lost them anyway, and their clients got a 503).
        give_up = time.monotonic() + settings.REQUEST_TIMEOUT
        delay = 0.1
        while True:
            try:
                self.queue.complete(self.id, results)
                return
            except REDIS_ERRORS as exc:
                if time.monotonic() > give_up:
                    log("results.lost", level="ERROR", worker=self.id, jobs=len(results), error=str(exc))
                    return
                log("redis.unavailable", level="WARNING", worker=self.id, error=str(exc), retry_s=delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def shutdown(self):
        self.stopping.set()
        self._beat_now.set()
        # A beat landing after retire() would register this worker again and leave its keys behind.
        if self._heartbeat_thread:
            self._heartbeat_thread.join(timeout=10)
        try:
            redisconn.disconnect(self.queue.redis)  # a pop cut short leaves its connection unusable
            returned = self.queue.retire(self.id)
            workerinfo.forget(self.queue.redis, self.queue.prefix, self.id)
            log("worker.stopped", worker=self.id, returned=returned)
        except REDIS_ERRORS as exc:
            log("worker.stopped", level="WARNING", worker=self.id, error=f"could not return jobs: {exc}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Model worker: takes batches of jobs from the Redis queue, classifies them, writes the results.",
        epilog="Every setting is an environment variable (README.md, Configuration), e.g. "
               "MODEL=efficientnet_lite0 BATCH_SIZE=16 REDIS_URL=redis://127.0.0.1:6379/0 python run_model_server.py")
    return parser.parse_args(argv)


def main(argv=None):
    parse_args(argv)  # before anything starts: --help prints and exits here
    settings.check()
    # Handlers first: a SIGTERM during the (slow) model load must still end cleanly.
    stop_early = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_early.set())
    signal.signal(signal.SIGINT, lambda *_: stop_early.set())
    try:
        model = models.load_model()
    except models.ModelUnavailable as exc:
        print(f"run_model_server: {exc}", file=sys.stderr)
        return 1
    worker = Worker(model)
    worker.install_signal_handlers()
    if stop_early.is_set():
        log("worker.stopped", reason="signal during model load")
        return 0
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
