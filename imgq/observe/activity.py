"""What the service is doing, for the page's live view: recorded cheaply, and only while someone watches.

Where it sits: beside the flow (upload → job → Redis → worker → result → response), never in its way.

    worker, after a batch's results are written:   batch_done(queue, worker_id, model, size, inference_ms)
    web process, after each POST is answered:      request_log.add(status, seconds)    (no I/O: a list append)
    web process, GET /activity (imgq/web/page.py):          snapshot(client) → dict for the page

While a page is open, its refreshes keep the key live:watched alive (TTL a few LIVE_INTERVALs). Writers
record only while that key exists:
- a worker adds one compact JSON record per batch to the capped list live:batches (one script call:
  EXISTS + LPUSH + LTRIM + EXPIRE). Unwatched, it looks again at most once per LIVE_INTERVAL and only when
  it has a batch, so an idle worker sends nothing and a busy one one script call (EXISTS) a second;
- a web process keeps its answers (status, latency) in memory; a thread sends them once per LIVE_INTERVAL,
  as one record (count per status, latency histogram), to the capped list live:requests, and only when
  there were answers. The request itself does no Redis work for the live view.
A snapshot is one script call that reads everything the page shows (7 commands + 2 per registered worker).
Records are JSON, never evaluated; the lists expire LIVE_WINDOW s after their last write.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from imgq.jobs import keys
from imgq import settings
from imgq.observe.logutil import log

if TYPE_CHECKING:
    from imgq.jobs.connection import RedisClient
    from imgq.jobs.queue import JobQueue

REDIS_ERRORS = (redis.RedisError, OSError)
# Latency histogram: bucket b holds [STEP^b, STEP^(b+1)) ms, so p50/p95 are right within ±2.5 %.
STEP = 1.05
BATCHES_SHOWN = 50  # batch records a snapshot reads (the page lists the newest of them)


def watch_ttl() -> int:
    """How long live:watched outlives the last refresh of an open page (then recording stops)."""
    return max(3, math.ceil(3 * settings.LIVE_INTERVAL))


# KEYS: watched flag, capped list. ARGV: cap, ttl, record... Returns 1 if written (someone watches), else 0.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], unpack(ARGV, 3))
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[1]) - 1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# One consistent read of everything the page shows, and the refresh of the watched flag (keeping the time
# it was first set). KEYS: watched, queue, workers, batches, requests, worker models (workers.py's records), the
# batch lane.
# ARGV: now, watch ttl, heartbeat key prefix, in-flight key prefix, batch records to read, request records.
_SNAPSHOT = """
local since = redis.call('GET', KEYS[1]) or ARGV[1]
redis.call('SET', KEYS[1], since, 'EX', ARGV[2])
local workers = {}
for _, w in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  table.insert(workers, {w, redis.call('PTTL', ARGV[3] .. w), redis.call('LLEN', ARGV[4] .. w),
                         redis.call('HGET', KEYS[6], w) or ''})
end
return {since, redis.call('LLEN', KEYS[2]), workers,
        redis.call('LRANGE', KEYS[4], 0, tonumber(ARGV[5]) - 1),
        redis.call('LRANGE', KEYS[5], 0, tonumber(ARGV[6]) - 1), redis.call('LLEN', KEYS[7])}
"""


class _Gate:
    """Writes records while watched; unwatched, tries again at most once per LIVE_INTERVAL."""

    def __init__(self, client: RedisClient, list_key: str, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix
        self.list_key = list_key
        self._record = client.register_script(_RECORD)
        self._next_try = 0.0
        self._healthy = True

    def write(self, *texts: str) -> bool:
        now = time.monotonic()
        if now < self._next_try:
            return False
        try:
            watched = self._record(keys=[keys.live_watched(self.prefix), self.list_key],
                                   args=[settings.LIVE_RECORDS, settings.LIVE_WINDOW, *texts])
            self._healthy = True
        except REDIS_ERRORS as exc:  # the live view is never worth an error anywhere else
            if self._healthy:
                log("live.unrecorded", level="WARNING", error=str(exc))
            self._healthy, watched = False, 0
        if not watched:
            self._next_try = now + settings.LIVE_INTERVAL
        return bool(watched)


class BatchLog:
    """The worker's side: one record per batch, while a page watches."""

    def __init__(self, client: RedisClient, prefix: str | None = None) -> None:
        prefix = prefix or settings.KEY_PREFIX
        self._gate = _Gate(client, keys.live_batches(prefix), prefix)

    def done(self, worker_id: str, model: str, size: int, inference_ms: float) -> bool:
        record = {"t": round(time.time(), 3), "w": worker_id, "m": model, "n": size, "ms": inference_ms}
        return self._gate.write(json.dumps(record, separators=(",", ":")))


_batch_logs: dict[int, BatchLog] = {}  # id(queue) → its BatchLog


def batch_done(queue: JobQueue, worker_id: str, model: str, size: int, inference_ms: float) -> bool:
    """The worker's one call per batch (queue: its imgq.jobs.queue.JobQueue). True if recorded (a page watches)."""
    log_ = _batch_logs.get(id(queue))
    if log_ is None:
        log_ = _batch_logs[id(queue)] = BatchLog(queue.redis, queue.prefix)
    return log_.done(worker_id, model, size, inference_ms)


def bucket(ms: float) -> int:
    return int(math.floor(math.log(max(ms, 0.1)) / math.log(STEP)))


def bucket_ms(b: float) -> float:
    """The middle of bucket b, in ms."""
    return STEP ** (b + 0.5)


class RequestLog:
    """A web process's side: answers kept in memory, sent once per LIVE_INTERVAL by a thread of its own."""

    def __init__(self, client: RedisClient, prefix: str | None = None, thread: bool = True) -> None:
        prefix = prefix or settings.KEY_PREFIX
        self._gate = _Gate(client, keys.live_requests(prefix), prefix)
        self._answers: list[tuple[int, float]] = []  # (status, seconds)
        self._lock = threading.Lock()
        self._pid: int | None = None if thread else os.getpid()  # thread=False: the caller calls flush() itself

    def add(self, status: int, seconds: float) -> None:
        if self._pid != os.getpid():  # gunicorn forks after import: one thread per process
            self._start()
        with self._lock:
            self._answers.append((status, seconds))

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._answers = []
        threading.Thread(target=self._run, name="live-requests", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(max(settings.LIVE_INTERVAL, 0.1))
            self.flush()

    def flush(self) -> bool:
        with self._lock:
            answers, self._answers = self._answers, []
        if not answers:
            return False
        statuses: dict[str, int]
        histogram: dict[str, int]
        statuses, histogram = {}, {}
        for status, seconds in answers:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status == 200:
                b = str(bucket(seconds * 1000))
                histogram[b] = histogram.get(b, 0) + 1
        record = {"t": round(time.time(), 3), "n": len(answers), "s": statuses, "h": histogram}
        return self._gate.write(json.dumps(record, separators=(",", ":")))


def _percentile(histogram: dict[int, int], fraction: float) -> float | None:
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = fraction * total, 0
    for b in sorted(histogram):
        seen += histogram[b]
        if seen >= rank:
            return round(bucket_ms(b), 1)
    return None  # not reached for fraction <= 1 (the implicit return, made explicit)


def _records(raws: list[bytes]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for raw in raws:
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("t"), (int, float)):
            out.append(record)
    return out


def snapshot_script(client: RedisClient) -> Any:
    return client.register_script(_SNAPSHOT)


def snapshot(client: RedisClient, prefix: str | None = None, now: float | None = None,
             script: Any = None) -> dict[str, Any]:
    """Everything the live view shows, read in one script call (which also keeps live:watched alive)."""
    prefix = prefix or settings.KEY_PREFIX
    now = time.time() if now is None else now
    script = script or snapshot_script(client)
    since, queue_length, workers, batch_raws, request_raws, batch_lane = script(
        keys=[keys.live_watched(prefix), keys.queue(prefix), keys.workers(prefix), keys.live_batches(prefix),
              keys.live_requests(prefix), keys.worker_models(prefix), keys.lane_queue(keys.LANES[1], prefix)],
        args=[round(now, 3), watch_ttl(), keys.heartbeat("", prefix), keys.inflight("", prefix), BATCHES_SHOWN,
              settings.LIVE_RECORDS])
    since = float(since)
    window_start = max(now - settings.LIVE_WINDOW, since)
    covered = max(now - window_start, settings.LIVE_INTERVAL)

    batches = [b for b in _records(batch_raws) if b["t"] >= now - settings.LIVE_WINDOW]
    models: dict[str, str] = {}
    for b in reversed(batches):  # oldest first: the newest record of each worker wins
        models[b.get("w")] = b.get("m")
    worker_rows: list[dict[str, Any]] = []
    for worker_id, heartbeat_ms, inflight, record in workers:
        worker_id = worker_id.decode() if isinstance(worker_id, bytes) else worker_id
        try:  # what the worker recorded it serves (known from its start, before its first batch)
            recorded = json.loads(record).get("model") if record else None
        except (ValueError, AttributeError):
            recorded = None
        alive = heartbeat_ms != -2
        worker_rows.append({"id": worker_id, "alive": alive, "inflight": inflight,
                            "state": ("busy" if inflight else "idle") if alive else "dead",
                            "model": models.get(worker_id) or recorded})
    worker_rows.sort(key=lambda w: (not w["alive"], w["id"]))

    requests = [r for r in _records(request_raws) if r["t"] >= window_start]
    statuses: dict[str, int]
    histogram: dict[int, int]
    statuses, histogram, recent = {}, {}, 0
    for r in requests:
        for status, n in (r.get("s") or {}).items():
            statuses[status] = statuses.get(status, 0) + n
        for b, n in (r.get("h") or {}).items():
            histogram[int(b)] = histogram.get(int(b), 0) + n
        if r["t"] >= now - 5:
            recent += r.get("n", 0)
    count = sum(statuses.values())
    sizes = [b.get("n", 0) for b in batches]
    return {
        "time": round(now, 3),
        "interval": settings.LIVE_INTERVAL,
        "window_s": round(covered, 1),
        "queue_length": queue_length + batch_lane,
        "lanes": {keys.LANES[0]: queue_length, keys.LANES[1]: batch_lane},
        "max_queue_length": settings.MAX_QUEUE_LENGTH,
        "live_workers": sum(w["alive"] for w in worker_rows),
        "workers": worker_rows,
        "batches": [{"t": b["t"], "worker": b.get("w"), "model": b.get("m"), "size": b.get("n"),
                     "inference_ms": b.get("ms")} for b in batches[:20]],
        # Over the newest BATCHES_SHOWN records of the window (all of the window's batches if fewer).
        "batch_sizes": {"count": len(sizes), "limit": BATCHES_SHOWN,
                        "mean": round(sum(sizes) / len(sizes), 2) if sizes else None,
                        "max": max(sizes) if sizes else None},
        "requests": {"count": count, "per_second": round(count / covered, 2),
                     "per_second_5s": round(recent / min(5.0, covered), 2),
                     "statuses": statuses, "p50_ms": _percentile(histogram, 0.50),
                     "p95_ms": _percentile(histogram, 0.95)},
    }
