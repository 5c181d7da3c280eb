"""Every Redis key the service uses is named here, and nowhere else.

    {prefix}:queue               list    jobs waiting for a worker, lane `interactive` (web RPUSHes, workers pop
                                         from the left)
    {prefix}:queue:{lane}        list    the same for every other lane (`batch`): workers fill a batch from
                                         the interactive lane first (queue.py)
    {prefix}:inflight:{worker}   list    jobs one worker has taken and not yet answered
    {prefix}:workers             set     ids of the workers that have registered
    {prefix}:heartbeat:{worker}  string  exists while the worker is alive (refreshed, with a TTL)
    {prefix}:worker_models       hash    worker id → JSON {model, runtime, since}: what each worker serves
    {prefix}:result:{job id}     string  the JSON result of one job, SET ... EX RESULT_TTL, read with GETEX PX
    {prefix}:attempts            hash    job id → how many workers died holding it (deleted when it is answered)
    {prefix}:dead_letter         list    jobs that killed MAX_ATTEMPTS workers: a JSON reason line, newline, the job
    {prefix}:counters            hash    running counts for /metrics: requeued, dead_lettered (never expire)
    {prefix}:epoch               string  a random value set by the first push into an empty Redis: a waiting
                                         request that finds it changed knows Redis lost its data (results.py)
    {prefix}:share:{client}      string  jobs one client (API key id, else address) has waiting on the queue
                                         (shares.py; expires if a web process dies holding some)
    {prefix}:job:{id}            hash    an asynchronous job's record: status, owner, lane, callback (records.py)
    {prefix}:cancel:{id}         string  exists while a cancelled job must not be run (records.py)
    {prefix}:callbacks           zset    job id → when its callback is due (callbacks.py)
    {prefix}:dedup:{hash}        string  the job in flight for these exact pixels and model (DEDUP=1)
    {prefix}:cached:{hash}       string  a recent result for these exact pixels and model (RESULT_CACHE_TTL)
    {prefix}:live:watched        string  exists while a browser page shows the live view (value: since when)
    {prefix}:live:batches        list    one compact record per batch, newest first, capped (only while watched)
    {prefix}:live:requests       list    one record per web process per second of answers, capped (ditto)
    {prefix}:stats:metrics       hash    the workers' Prometheus counters and histogram buckets
                                         (imgq/observe/metrics.py)

The prefix (KEY_PREFIX) lets several deployments, or several test runs, share one Redis.
"""
from __future__ import annotations

from imgq import settings


def _k(*parts: str, prefix: str | None = None) -> str:
    return ":".join((prefix or settings.KEY_PREFIX,) + parts)


def model_prefix(name: str) -> str:
    """The prefix of one of MODELS' models: its own queue, results and workers under KEY_PREFIX:name."""
    return _k(name)


def queue(prefix: str | None = None) -> str:
    return _k("queue", prefix=prefix)


def inflight(worker_id: str, prefix: str | None = None) -> str:
    return _k("inflight", worker_id, prefix=prefix)


def workers(prefix: str | None = None) -> str:
    return _k("workers", prefix=prefix)


def heartbeat(worker_id: str, prefix: str | None = None) -> str:
    return _k("heartbeat", worker_id, prefix=prefix)


def worker_models(prefix: str | None = None) -> str:
    return _k("worker_models", prefix=prefix)


def result(job_id: str, prefix: str | None = None) -> str:
    return _k("result", job_id, prefix=prefix)


def attempts(prefix: str | None = None) -> str:
    return _k("attempts", prefix=prefix)


def dead_letter(prefix: str | None = None) -> str:
    return _k("dead_letter", prefix=prefix)


def counters(prefix: str | None = None) -> str:
    return _k("counters", prefix=prefix)


def epoch(prefix: str | None = None) -> str:
    """Which life of Redis' data the queue is in: set when missing by a push, expires when pushes stop."""
    return _k("epoch", prefix=prefix)


# Fields of counters(): jobs a live worker put back on the queue after their worker died, and jobs it
# moved to the dead-letter list instead (HGET/HGETALL them; HINCRBY inside jobqueue's heartbeat script).
COUNTER_REQUEUED = "requeued"
COUNTER_DEAD_LETTERED = "dead_lettered"
# Callbacks delivered (a 2xx) and given up on (CALLBACK_MAX_ATTEMPTS refused), counted by callbacks.py.
COUNTER_CALLBACKS_DELIVERED = "callbacks_delivered"
COUNTER_CALLBACKS_FAILED = "callbacks_failed"

LANES = ("interactive", "batch")  # highest first


def lane_queue(lane: str, prefix: str | None = None) -> str:
    """The list of one lane: `interactive` is queue(), the course's one queue, so a client or worker that
    knows only that list still works."""
    return queue(prefix) if lane == LANES[0] else _k("queue", lane, prefix=prefix)


def job(job_id: str, prefix: str | None = None) -> str:
    return _k("job", job_id, prefix=prefix)


def cancel(job_id: str, prefix: str | None = None) -> str:
    return _k("cancel", job_id, prefix=prefix)


def callbacks(prefix: str | None = None) -> str:
    return _k("callbacks", prefix=prefix)


def dedup(digest: str, prefix: str | None = None) -> str:
    return _k("dedup", digest, prefix=prefix)


def cached(digest: str, prefix: str | None = None) -> str:
    return _k("cached", digest, prefix=prefix)


def share(client: str, prefix: str | None = None) -> str:
    """How many jobs one client (an API key's id, else an address) has waiting on the queue (shares.py)."""
    return _k("share", client, prefix=prefix)


def live_watched(prefix: str | None = None) -> str:
    return _k("live", "watched", prefix=prefix)


def live_batches(prefix: str | None = None) -> str:
    return _k("live", "batches", prefix=prefix)


def live_requests(prefix: str | None = None) -> str:
    return _k("live", "requests", prefix=prefix)


def metrics(prefix: str | None = None) -> str:
    """Hash of the workers' counters and histogram buckets, fields "model|series" (imgq/observe/metrics.py).
    Never expires: counters must outlive the processes that add to them."""
    return _k("stats", "metrics", prefix=prefix)


def result_pattern(prefix: str | None = None) -> str:
    """Glob matching every result key (for the keyspace-notification subscription)."""
    return _k("result", "*", prefix=prefix)


def job_id_from_result(key: str, prefix: str | None = None) -> str | None:
    """The job id at the end of a result key, or None if the key is not one."""
    head = _k("result", "", prefix=prefix)
    return key[len(head):] if key.startswith(head) else None
