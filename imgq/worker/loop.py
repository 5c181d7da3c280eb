"""Model worker: Redis queue → batch → model → results, as a three-stage pipeline.

    main thread   take up to BATCH_SIZE jobs in one atomic step (queue.take_batch, blocking while the
                  queue is empty) into this worker's in-flight list, parse them (message.parse_job: the pixels
                  are read in place), stack them → hands the batch to
    model thread  one model call per batch (two threads for a model with lanes) → hands the probabilities to
    writer thread top 5 per job, result JSON, log lines, then one script call (queue.complete) that
                  writes every result with SET ... EX RESULT_TTL and drops the batch from the in-flight list.

So the next batch is taken and parsed, and the last one's results written, while the model runs. The main
thread takes the next batch just before the model is expected to be free (for a model with lanes, when a lane
is about to finish its image with nothing queued behind it; else the last batch's model time), minus how long a
take has been taking, not as soon as it can: jobs left on the queue until then can still join it, or go to an
idle peer. A model with lanes (litert_runtime._Lanes) gets two model threads, so a batch goes to a free lane
while the last one's final image still runs on another. Batches are answered in the order they were taken
(the writer holds one that finished early), which is the order of the in-flight list, so complete() drops
exactly the oldest jobs there. A heartbeat thread keeps this worker's heartbeat key alive and puts the
in-flight jobs of dead workers back on the queue.

SIGTERM / SIGINT: finish the batches the model has, write their results (and those not yet written), return
untaken jobs (including a batch taken ahead but not started), exit 0.

Redis trouble never kills a thread: every thread that talks to Redis catches any Redis error (connection lost,
timeout, and the answers a Redis gives while it cannot work: OOM at maxmemory, READONLY on a replica, MISCONF,
NOPERM, LOADING, BUSY), logs the first failure of an outage and its end (`redis.unavailable`, `redis.recovered`,
with the thread's name), and tries again with a backoff bounded by RETRY_MAX_S. Anything else that escapes a
thread is a bug: the thread logs `worker.thread_died` and ends the whole process (exit 1), so a supervisor starts
a fresh one and no process goes on with a thread missing.
"""
from __future__ import annotations

import os
import queue as queues
import signal
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np
import redis

from imgq.observe import activity
from imgq.jobs import message
from imgq.observe import metrics
from imgq.jobs import connection
from imgq import settings
from imgq.jobs import workers
from imgq.jobs.connection import connect
from imgq.jobs import callbacks, keys
from imgq.jobs.callbacks import Deliverer
from imgq.jobs.queue import JobQueue
from imgq.jobs.records import Records
from imgq.observe.logutil import log
from imgq.observe.threads import name_thread

if TYPE_CHECKING:
    from types import FrameType

    from imgq.models.registry import Model

REDIS_ERRORS = (redis.RedisError,)
RETRY_MAX_S = 2.0  # longest wait between two tries while Redis fails: back within this of Redis coming back


class Outage:
    """One thread's run of Redis failures: the first failure of an outage (or a change of its kind) and the
    recovery are logged once each, not every retry; failed() says how long to wait before the next try."""

    def __init__(self, worker_id: str, thread: str, first_delay: float = 0.1) -> None:
        self.worker_id, self.thread, self.first_delay = worker_id, thread, first_delay
        self.since: float | None = None
        self.kind: str | None = None
        self.failures = 0
        self.delay = first_delay

    def failed(self, exc: BaseException) -> float:
        kind = connection.problem_kind(exc)
        if self.since is None or kind != self.kind:
            log("redis.unavailable", level="WARNING", worker=self.worker_id, thread=self.thread, problem=kind,
                error=str(exc)[:200], retry=f"every {self.first_delay:g}-{RETRY_MAX_S:g}s")
        if self.since is None:
            self.since = time.monotonic()
        self.kind = kind
        self.failures += 1
        delay, self.delay = self.delay, min(self.delay * 2, RETRY_MAX_S)
        return delay

    def ok(self) -> None:
        if self.since is not None:
            log("redis.recovered", worker=self.worker_id, thread=self.thread, problem=self.kind,
                after_s=round(time.monotonic() - self.since, 2), failures=self.failures)
        self.since, self.kind, self.failures, self.delay = None, None, 0, self.first_delay


def _guarded(worker_id: str, target: Any) -> Any:
    """A thread's body that ends the process if it ever raises: a worker never lives on with a dead thread."""
    def run() -> None:
        name_thread(threading.current_thread().name)  # `top -H` and make bench-tax tell the threads apart
        try:
            target()
        except BaseException as exc:
            log("worker.thread_died", level="ERROR", worker=worker_id, thread=threading.current_thread().name,
                error=repr(exc)[:500], next="exit 1 (a supervisor starts a new worker)")
            os._exit(1)
    return run


def _trace(job: dict[str, Any]) -> dict[str, str]:
    """The request's trace id for the job's log lines (imgq/observe/tracing.py), when the web server sent one."""
    return {"trace": job["trace"]} if isinstance(job.get("trace"), str) else {}


class Interrupted(Exception):
    """Raised by the signal handler to leave a blocking pop; never while a batch is being processed."""


class Worker:
    # Set by run(). A batch is _parse()'s dict; a model thread hands on (batch, probabilities, inference_ms).
    _ready: queues.Queue[dict[str, Any] | None]
    _done: queues.Queue[tuple[dict[str, Any], np.ndarray | None, float] | None]
    _state: threading.Condition
    _pending: int
    _unanswered: int
    _model_busy_since: float | None
    _model_s: float | None
    _take_s: float

    def __init__(self, model: Model, client: connection.RedisClient | None = None) -> None:
        self.model = model
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self._beat_now = threading.Event()  # set: the heartbeat thread beats at once (see _on_connect)
        # The read timeout must outlast the blocking pop. Not resent: a take cut short must raise (see run()).
        self.queue = JobQueue(client or connect(socket_timeout=settings.BLOCK_TIMEOUT + 10, resend=False,
                                                redis_connect_func=self._on_connect))
        self.stop_signal: str | None = None
        self._heartbeat_thread: threading.Thread | None = None
        self._blocked = False  # True only while waiting to take and inside take_batch: a signal may interrupt
        self._abandoned: list[bytes] = []   # jobs of batches whose results could not be written (Redis down too long)
        # The writer's outage outlives one batch: a batch given up on leaves it open, the next write closes it.
        self._write_outage = Outage(self.id, "writer")
        self.records = Records(self.queue.redis, self.queue.prefix)
        self.callbacks = Deliverer(self.queue.redis, self.queue.prefix, self.id)
        # The model thread's calls before each batch (cancels and share give-backs; records of asynchronous jobs)
        # answer within a second or are skipped: a stalled Redis must not hold the model, whose results the writer
        # waits out anyway.
        self._quick = client or connect(socket_timeout=1.0)

    # --- signals -----------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # No logging here: the handler runs between two bytecodes of the main thread, which may be inside
        # log() holding its lock or stderr's (a deadlock, or a "reentrant call" error). The loop logs it.
        self.stop_signal = signal.Signals(signum).name
        self.stopping.set()
        if self._blocked:
            raise Interrupted()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # --- heartbeat ---------------------------------------------------------------------------------
    def _on_connect(self, conn: Any) -> None:
        # The loop's connection is new: first start, or Redis is back (perhaps restarted, empty, without
        # this worker's registration). Beat now rather than up to HEARTBEAT_INTERVAL later, so /healthz
        # counts this worker as soon as it can take jobs again.
        conn.on_connect()
        self._beat_now.set()

    def _heartbeat(self) -> None:
        hb_queue = JobQueue(connect(socket_timeout=5), self.queue.prefix)
        outage = Outage(self.id, "heartbeat", first_delay=min(settings.HEARTBEAT_INTERVAL, 0.5))
        announced = None
        while not self.stopping.is_set():
            self._beat_now.clear()
            try:
                self._reap(hb_queue.beat(self.id))
                # The model record for /healthz: after the first beat, after an outage, and once a minute in
                # case Redis restarted between two beats or a /healthz pruned it while this worker stalled.
                if announced is None or outage.since is not None or \
                        time.monotonic() - announced > workers.REFRESH_S:
                    workers.announce(hb_queue.redis, hb_queue.prefix, self.id, self.model.name,
                                     self.model.runtime)
                    announced = time.monotonic()
                outage.ok()
                wait = settings.HEARTBEAT_INTERVAL
            except REDIS_ERRORS as exc:
                outage.failed(exc)
                # While Redis fails, try often (not backing off): the first beat that passes re-registers this
                # worker, and /healthz counts it again.
                wait = outage.first_delay
            self._beat_now.wait(wait)

    def _reap(self, reaped: tuple[int, list[str]]) -> None:
        requeued, dead_lettered = reaped
        if requeued:
            log("worker.recovered", worker=self.id, requeued=requeued, reason="dead worker's jobs")
        for job_id in dead_lettered:
            log("job.dead_lettered", level="ERROR", worker=self.id, id=job_id, attempts=settings.MAX_ATTEMPTS,
                reason="its worker died each time: not retried, client told")

    # --- start -------------------------------------------------------------------------------------
    def wait_for_redis(self) -> str | None:
        """Before the loop: wait, inside this process and with a bounded backoff, until Redis answers (a Redis
        that is down, loading or full is no reason to exit and be restarted again and again), then check that
        it keeps data when full. Returns the line refusing to start (connection.eviction_refusal), or None."""
        outage = Outage(self.id, "start")
        while not self.stopping.is_set():
            try:
                refusal = connection.eviction_refusal(self.queue.redis)
                outage.ok()
                return refusal
            except REDIS_ERRORS as exc:
                self.stopping.wait(outage.failed(exc))
        return None

    # --- the loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        # A model that can start a batch before the last one is done (lanes: LiteRTModel.free_in) gets two
        # model threads, so the next batch is handed in while the last one's final images still run.
        self._overlap = self.model.free_in() is not None
        self._model_threads = 2 if self._overlap else 1
        log("worker.ready", worker=self.id, model=self.model.name, runtime=getattr(self.model, "runtime", None),
            threads=getattr(self.model, "threads", None), model_threads=self._model_threads,
            batch_size=settings.BATCH_SIZE, batch_wait_ms=settings.BATCH_WAIT_MS)
        self._heartbeat_thread = threading.Thread(target=_guarded(self.id, self._heartbeat), name="heartbeat",
                                                  daemon=True)
        self._heartbeat_thread.start()
        # Bounded hand-offs: at most one batch waits for the model, two for the writer, and with two model
        # threads no batch is taken while more than two are unanswered (a Redis outage stalls the writer,
        # which stalls the model, which stops the taking).
        self._ready, self._done = queues.Queue(maxsize=1), queues.Queue(maxsize=2)
        self._state = threading.Condition()
        self._pending = 0               # batches handed to the model threads that none has started
        self._unanswered = 0            # batches handed to the model threads whose results are not written yet
        self._model_busy_since = None   # time.monotonic() the model started its batch; None while idle
        self._model_s = None            # how long the last model call took
        self._take_s = 0.005            # how long taking and parsing a batch has been taking (smoothed)
        self._taken = 0                 # batches taken so far: a batch's number, the order its results are written
        threads = [threading.Thread(target=_guarded(self.id, self._model_loop), name="model", daemon=True)
                   for _ in range(self._model_threads)]
        threads.append(threading.Thread(target=_guarded(self.id, self._writer_loop), name="writer", daemon=True))
        # Callbacks on a thread of their own: a slow receiver holds nothing else. Not joined at shutdown: the
        # schedule is in Redis, and whatever it had claimed comes due again after its lease.
        threading.Thread(target=_guarded(self.id, lambda: self.callbacks.run(self.stopping)), name="callbacks",
                         daemon=True).start()
        for t in threads:
            t.start()
        outage = Outage(self.id, "main")
        orphans = False
        while not self.stopping.is_set():
            try:
                if orphans:
                    self._return_orphans()
                    orphans = False
                self._blocked = True
                self._wait_until_take_is_due()
                if self.stopping.is_set():
                    break
                raws = self.queue.take_batch(self.id, settings.BATCH_SIZE, settings.BLOCK_TIMEOUT,
                                             settings.BATCH_WAIT_MS)
                self._blocked = False
                outage.ok()
            except Interrupted:
                break
            except REDIS_ERRORS as exc:
                self._blocked = False
                self._beat_now.set()  # the heartbeat thread learns of the outage now and retries often
                orphans = True  # a take cut short may have moved jobs that no batch holds
                self.stopping.wait(outage.failed(exc))
                continue
            if raws:
                parse_began = time.monotonic()
                batch = self._parse(raws)
                batch["number"] = self._taken
                self._taken += 1
                with self._state:
                    # A suspect (its worker died holding it) runs with nothing else in flight, before or after
                    # it: if it kills this worker too, no other job is charged an attempt for being beside it.
                    while self.queue.isolated and self._unanswered and not self.stopping.is_set():
                        self._state.wait(1.0)
                    self._pending += 1
                    self._unanswered += 1
                    self._ready.put(batch)  # never blocks: nothing was waiting when the take was due
                    while self.queue.isolated and self._unanswered and not self.stopping.is_set():
                        self._state.wait(1.0)
                if settings.BATCH_WAIT_MS <= 0:
                    # The lead the next take needs: filling the batch once its first job came (the wait for
                    # that first job says nothing about it), and parsing it.
                    took = self.queue.fill_seconds * len(raws) / max(len(raws) - 1, 1) + \
                        (time.monotonic() - parse_began)
                    self._take_s = 0.8 * self._take_s + 0.2 * min(took, 0.05)
        self._blocked = False
        log("worker.stopping", worker=self.id, signal=self.stop_signal)
        self._drain(threads)
        self.shutdown()

    def _return_orphans(self) -> None:
        # A take whose answer never came (BLMOVE done, then a timeout on a hung Redis or a cut connection)
        # may have moved jobs into the in-flight list that no batch holds; left there, they would never be
        # answered. Once every batch handed on is answered, the list holds only those orphans, behind the
        # batches given up on (self._abandoned, at its head): put the orphans back on the queue.
        with self._state:
            while self._unanswered and not self.stopping.is_set():
                self._state.wait(1.0)
        returned = self.queue.return_inflight(self.id, keep=len(self._abandoned))
        if returned:
            log("worker.returned", worker=self.id, returned=returned, reason="a take cut short by Redis")

    def _wait_until_take_is_due(self) -> None:
        """Return when the next batch should be taken: the model is free, or should be within twice the time a
        take needs (a model with lanes says when, free_in(); otherwise the last batch's model time tells). Never
        while a taken batch still waits for a model thread, nor while a model without lanes runs its first
        batch (no estimate yet)."""
        with self._state:
            while not self.stopping.is_set():
                if self._overlap:
                    # At most one batch more than the model threads hold: a stuck image on one lane must not
                    # let the others take job after job that the writer then holds, in order, behind it.
                    if self._pending or self._unanswered > self._model_threads:
                        self._state.wait(1.0)
                        continue
                    remaining = (self.model.free_in() or 0.0) - 2 * self._take_s
                    if remaining <= 0:
                        return
                    self._state.wait(remaining)
                    continue
                if not self._pending:
                    if self._model_busy_since is None:
                        return
                    if self._model_s is not None:
                        remaining = self._model_busy_since + self._model_s - 2 * self._take_s - time.monotonic()
                        if remaining <= 0:
                            return
                        self._state.wait(remaining)
                        continue
                self._state.wait(1.0)

    def _parse(self, raws: list[bytes]) -> dict[str, Any]:
        """Raw jobs → the batch a model thread runs. Bad entries get an error result (or a log line when
        they carry no id); expired ones are dropped; neither stops the rest of the batch."""
        taken = time.time()
        results: dict[str, str]
        good: list[tuple[dict[str, Any], np.ndarray]]
        pixels: np.ndarray | None  # one job's, then the batch's (None: no good job)
        results, good, expired, bad = {}, [], 0, 0
        shares: list[str] = []  # the share key of every job taken: a unit goes back for each (shares.py)
        expired_async: list[dict[str, Any]] = []
        for raw in raws:
            try:
                job, pixels = message.parse_job(raw, self.model.input_size)
            except message.BadJob as exc:
                log("job.bad", level="WARNING", worker=self.id, id=exc.job_id, error=str(exc))
                bad += 1
                if exc.share:
                    shares.append(exc.share)
                if exc.job_id:
                    results[exc.job_id] = message.make_result(exc.job_id, error=str(exc))
                continue
            if isinstance(job.get("share"), str):
                shares.append(job["share"])
            if message.expired(job, taken):
                log("job.expired", worker=self.id, id=job["id"], **_trace(job), reason="its client stopped waiting")
                expired += 1
                if job.get("async"):  # its record says so, and its callback tells (_drop_unwanted)
                    expired_async.append(job)
                continue
            good.append((job, pixels))
        pixels = np.stack([p for _, p in good]) if good else None
        return {"raws": raws, "results": results, "jobs": [job for job, _ in good], "pixels": pixels,
                "taken": taken, "expired": expired, "bad": bad, "shares": shares, "expired_async": expired_async}

    def _model_loop(self) -> None:
        while True:
            batch = self._ready.get()
            if batch is None:
                self._done.put(None)
                return
            self._drop_unwanted(batch)  # before the batch counts as started: free_in() does not see it yet
            with self._state:
                self._pending -= 1
                self._model_busy_since = time.monotonic()
                self._state.notify_all()
            probabilities, inference_ms = None, 0.0
            if batch["jobs"]:
                started = time.perf_counter()
                try:
                    probabilities = self.model.predict(batch["pixels"])
                except Exception as exc:  # a model failure answers the batch with an error, not a dead worker
                    log("batch.failed", level="ERROR", worker=self.id, error=repr(exc))
                elapsed = time.perf_counter() - started
                inference_ms = round(elapsed * 1000, 2)
            with self._state:
                if batch["jobs"]:
                    self._model_s = elapsed
                self._model_busy_since = None
                self._state.notify_all()
            batch["pixels"] = None  # the batch's copy of the pixels is not needed any more
            self._done.put((batch, probabilities, inference_ms))

    def _drop_unwanted(self, batch: dict[str, Any]) -> None:
        """Right before the model runs: drop the jobs whose deadline passed since they were taken and the jobs
        cancelled meanwhile (DELETE /jobs/<id>, or a client that hung up), so neither is ever run; mark the
        asynchronous ones running. One round trip for a batch of synchronous jobs, two with asynchronous ones."""
        jobs = batch["jobs"]
        if not jobs and not batch["shares"] and not batch["expired_async"]:
            return
        now = time.time()
        keep = [not message.expired(job, now) for job in jobs]
        try:  # the jobs taken left the queue: their clients' share units go back in the same call
            cancelled = self.queue.batch_starting([job["id"] for job in jobs], batch["shares"], client=self._quick)
        except REDIS_ERRORS as exc:  # not knowing of a cancel costs one needless classification, nothing else
            log("worker.cancel_check_failed", level="WARNING", worker=self.id, error=str(exc)[:200])
            cancelled = [False] * len(jobs)
        try:
            ended = self._advance_records([(job, alive) for job, alive in zip(jobs, keep) if job.get("async")] +
                                          [(job, False) for job in batch["expired_async"]])
        except REDIS_ERRORS as exc:  # GET /jobs/<id> says queued a little longer; the result settles it
            log("worker.records_lost", level="WARNING", worker=self.id, jobs=len(jobs), error=str(exc)[:200])
            ended = set()
        # A DELETE between the cancel check and the records' advance left no mark to find, but a record
        # that ended already (cancelled): that job is not run either.
        cancelled = [c or job["id"] in ended for job, c in zip(jobs, cancelled)]
        batch["expired"] += keep.count(False)
        batch["cancelled"] = sum(c and k for c, k in zip(cancelled, keep))
        wanted = [k and not c for k, c in zip(keep, cancelled)]
        for job, ok, alive in zip(jobs, wanted, keep):
            if not ok:
                log("job.expired" if not alive else "job.cancelled", worker=self.id, id=job["id"], **_trace(job))
        done_with = [keys.cancel(job["id"], self.queue.prefix) for job, c in zip(jobs, cancelled) if c]
        if done_with:
            try:  # the marks did their work: gone now rather than at their expiry
                self.queue.redis.delete(*done_with)
            except REDIS_ERRORS:
                pass
        if all(wanted):
            return
        batch["jobs"] = [job for job, ok in zip(jobs, wanted) if ok]
        batch["pixels"] = batch["pixels"][np.array(wanted)] if batch["jobs"] else None

    def _advance_records(self, jobs: list[tuple[dict[str, Any], bool]]) -> set[str]:
        """The records of the asynchronous jobs about to run say running (or expired: alive False, and their
        callbacks are scheduled: the job has ended), in one pipeline where the client allows scripts in one.
        Returns the ids of the jobs about to run whose record had ended already (cancelled). Nothing for
        synchronous jobs."""
        if not jobs:
            return set()
        inline = connection.scripts_in_pipelines(self._quick)
        with self._quick.pipeline(transaction=False) as pipe:
            scripts = pipe if inline else self._quick
            direct = [self.records.advance(job["id"], "running" if alive else "expired", pipe=scripts)
                      for job, alive in jobs]
            for job, alive in jobs:
                if not alive and job.get("callback"):
                    callbacks.schedule(pipe, job["id"], self.queue.prefix)
            answers = pipe.execute()
        if any(not alive and job.get("callback") for job, alive in jobs):
            self.callbacks.nudge()
        advanced = answers[:len(jobs)] if inline else direct
        return {job["id"] for (job, alive), answer in zip(jobs, advanced) if alive and answer == -1}

    def _writer_loop(self) -> None:
        # Two model threads may finish batches out of order; results are written in the order taken, which
        # is the order of the in-flight list (complete() drops its oldest jobs).
        held: dict[int, tuple[dict[str, Any], np.ndarray | None, float]] = {}
        following, ended = 0, 0
        while True:
            got = self._done.get()
            if got is None:
                ended += 1
                if ended == self._model_threads:
                    return
                continue
            held[got[0]["number"]] = got
            while following in held:
                self._write_batch(held.pop(following))
                following += 1

    def _write_batch(self, item: tuple[dict[str, Any], np.ndarray | None, float]) -> None:
        try:
            self._answer(*item)
        except Exception as exc:  # never let the writer die: every later batch would wait for it
            log("batch.failed", level="ERROR", worker=self.id, error=repr(exc))
            batch = item[0]
            self._write({job["id"]: message.make_result(job["id"], error="the worker failed on this batch")
                         for job in batch["jobs"]}, batch["raws"],
                        {job["id"]: "failed" for job in batch["jobs"] if job.get("async")})
        finally:
            with self._state:
                self._unanswered -= 1
                self._state.notify_all()

    def _answer(self, batch: dict[str, Any], probabilities: np.ndarray | None, inference_ms: float) -> None:
        results, good = batch["results"], batch["jobs"]
        taken = batch["taken"]
        for i, job in enumerate(good):
            if probabilities is None:
                results[job["id"]] = message.make_result(job["id"], error="the model failed on this batch")
                continue
            queue_ms = round((taken - job.get("enqueued", taken)) * 1000, 2)
            extra: dict[str, str] = {}
            if job.get("outputs") == "probabilities":  # the protocol endpoints want the whole vector
                extra["probabilities"] = message.encode_probabilities(probabilities[i])
            results[job["id"]] = message.make_result(
                job["id"], model=self.model.name, batch=len(good), queue_ms=queue_ms,
                inference_ms=inference_ms,
                predictions=message.top_predictions(probabilities[i], self.model.labels,
                                                    getattr(self.model, "top_k", 5)), **extra)
            log("job.done", level="DEBUG", worker=self.id, id=job["id"], **_trace(job), batch=len(good),
                queue_ms=queue_ms, inference_ms=inference_ms)
        ends = {job["id"]: "done" if probabilities is not None else "failed" for job in good if job.get("async")}
        self._write(results, batch["raws"], ends)
        if any(job.get("callback") for job in good):
            self.callbacks.nudge()
        try:  # the results are written: nothing below may make the writer answer this batch again
            metrics.record_batch(self.queue, self.model.name, len(good), inference_ms / 1000 if good else 0.0,
                                 [max(taken - job.get("enqueued", taken), 0.0) for job in good],
                                 failed=len(good) if good and probabilities is None else 0,
                                 expired=batch["expired"], bad=batch["bad"], cancelled=batch.get("cancelled", 0))
            if good:  # the page's live view: one script call, a record only while a page watches
                activity.batch_done(self.queue, self.id, self.model.name, len(good), inference_ms)
        except Exception as exc:
            log("metrics.lost", level="WARNING", worker=self.id, jobs=len(good), error=repr(exc)[:200])

    def _write(self, results: dict[str, str], raws: list[bytes], ends: dict[str, str] | None = None) -> None:
        # Results are worth a retry while their clients may still wait; the in-flight list keeps the jobs
        # safe meanwhile (a restarted Redis has lost them anyway, and their clients got a 503).
        # A batch given up on stays at the head of the in-flight list; it is dropped with the next batch
        # answered (its clients have had their 504 by then), so the list stays in the order complete() needs.
        taken = self._abandoned + list(raws)
        give_up = time.monotonic() + settings.REQUEST_TIMEOUT
        outage = self._write_outage
        while True:
            try:
                self.queue.complete(self.id, results, taken=taken, ends=ends)
                self._abandoned = []
                outage.ok()
                return
            except REDIS_ERRORS as exc:
                if time.monotonic() > give_up:
                    log("results.lost", level="ERROR", worker=self.id, jobs=len(results), error=str(exc)[:200])
                    self._abandoned = taken
                    return
                time.sleep(outage.failed(exc))

    def _drain(self, threads: list[threading.Thread]) -> None:
        """Stopping: a batch taken but not started stays in the in-flight list (shutdown returns it); the
        model finishes its batch and the writer writes every result it holds, before anything is returned."""
        try:
            self._ready.get_nowait()
        except queues.Empty:
            pass
        for _ in range(self._model_threads):
            self._ready.put(None)
        for t in threads:
            t.join()

    def shutdown(self) -> None:
        self.stopping.set()
        self._beat_now.set()
        # A beat landing after retire() would register this worker again and leave its keys behind.
        if self._heartbeat_thread:
            self._heartbeat_thread.join(timeout=10)
        try:
            connection.disconnect(self.queue.redis)  # a pop cut short leaves its connection unusable
            returned = self.queue.retire(self.id)
            workers.forget(self.queue.redis, self.queue.prefix, self.id)
            log("worker.stopped", worker=self.id, returned=returned)
        except REDIS_ERRORS as exc:
            log("worker.stopped", level="WARNING", worker=self.id, error=f"could not return jobs: {exc}")
