"""Result → response: how a waiting web request learns that its result is ready.

One listener thread per web process holds one pub/sub connection subscribed to the keyspace
notifications of every result key (`__keyspace@<db>__:<prefix>:result:*`). A request registers its job id
before it pushes the job, then sleeps on an Event; the listener sets that Event when the worker's SET of
`result:<id>` is announced, and the request reads the result with GETEX, which also cuts its life to
read_grace_ms(). Not GETDEL: a read is sent again when its reply is lost (redis-py resends after a cut
connection, wait() after a timeout), and a GETDEL that ran would have left nothing for the second try.

Pub/sub drops events while the subscriber is disconnected, and a managed Redis may refuse CONFIG, so every
request also looks for its result on its own (the backup): every POLL_INTERVAL seconds while the listener is not
known to hear (disconnected, or CONFIG refused and no event heard yet), every BACKUP_POLL_S while it is (at most
half of RESULT_TTL, so a result whose event was switched off is read before it expires). The
listener wakes every waiting request when it loses its connection (they poll faster from then on) and again
each time it (re)subscribes (anything set meanwhile is read at once).

A job can vanish: Redis restarted without persistence (or from an older snapshot), or its data was flushed.
Its request would otherwise wait for REQUEST_TIMEOUT and get 504. So each poll reads the queue's epoch
(keys.epoch, set by the first push into an empty Redis) with the result, in the same round trip; when it has
changed, or the listener had to subscribe again since the job was pushed (every Redis restart cuts it), the
request looks for its job once (JobQueue.locate: queued, in a worker's in-flight list, or answered). Found: it
waits on. Not found, and still not found LOST_GRACE_S later (a worker that held it across the restart may still
write its result): 503 JobLost with Retry-After, about 1-2 s after Redis is back instead of a 504.
"""
from __future__ import annotations

import os
import threading
import time

import redis

from typing import TYPE_CHECKING

from imgq.jobs import keys
from imgq.jobs import connection
from imgq import settings
from imgq.errors import JobLost
from imgq.observe.logutil import log

if TYPE_CHECKING:
    from imgq.jobs.queue import JobQueue

NEEDED_FLAGS = "K$"  # K: keyspace channel; $: string commands (SET). The smallest class that covers SET.
LOST_GRACE_S = 0.5  # a job not found is looked for once more this long after, before its request gets 503
# A waiting request rides out a Redis that fails (restarting, failing over, refusing) for this long, polling
# every OUTAGE_POLL_S, then answers 503: a Redis restarted with its data still answers it, one restarted
# without learns it as JobLost.
OUTAGE_PATIENCE_S = 3.0
OUTAGE_POLL_S = 0.25


def read_grace_ms() -> int:
    """How long a result stays after a read: longer than the latest a lost read is sent again. After a read
    timeout, that is REDIS_WAIT_TIMEOUT + OUTAGE_POLL_S; after a cut connection, the last try within
    OUTAGE_PATIENCE_S, which may spend two connection timeouts (redis-py reconnects once). One second more for
    the clocks of a busy machine."""
    latest = max(settings.REDIS_WAIT_TIMEOUT, OUTAGE_PATIENCE_S + 2 * settings.REDIS_CONNECT_TIMEOUT)
    return int((latest + OUTAGE_POLL_S + 1.0) * 1000)


class Watch:
    """A pushed job as its waiting request knows it: what wait() needs to tell a job that vanished from Redis
    from one that is only slow. epoch: Redis' epoch when it was pushed; generation: the listener's then."""

    def __init__(self, queue: JobQueue, job_text: bytes, epoch: str | None, generation: int) -> None:
        self.queue, self.job_text, self.epoch, self.generation = queue, job_text, epoch, generation

    def suspect(self, epoch: str | None, generation: int) -> bool:
        return epoch != self.epoch or generation != self.generation

    def settle(self, epoch: str | None, generation: int) -> None:
        """The job was found: what is seen now is the new normal (no second look until it changes again)."""
        self.epoch, self.generation = epoch, generation


def enable_notifications(client: connection.RedisClient) -> bool:
    """Turn on the keyspace events result keys need, keeping flags others set. False if CONFIG is refused."""
    try:
        current = client.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
        if isinstance(current, bytes):
            current = current.decode()
        missing = "".join(f for f in NEEDED_FLAGS if f not in current and not (f == "$" and "A" in current))
        if missing:
            client.config_set("notify-keyspace-events", current + missing)
        log("notifications.enabled", flags=current + missing)
        return True
    except redis.ResponseError as exc:
        log("notifications.unavailable", level="WARNING", error=str(exc),
            fallback=f"polling every {settings.POLL_INTERVAL}s")
        return False


class ResultWaiter:
    def __init__(self, client: connection.RedisClient, prefix: str | None = None, notifications: bool | None = None,
                 poll_interval: float | None = None) -> None:
        self.redis = client
        self.prefix = prefix or settings.KEY_PREFIX
        self.notifications = settings.NOTIFICATIONS if notifications is None else notifications
        self.poll_interval = settings.POLL_INTERVAL if poll_interval is None else poll_interval
        # Never more than half of RESULT_TTL: a result whose event was missed must still be there when read.
        self.backup_poll = max(min(settings.BACKUP_POLL_S, settings.RESULT_TTL / 2), self.poll_interval)
        self.read_grace_ms = read_grace_ms()
        self.listening = False  # True while subscribed: requests are woken by notifications
        self.config_ok: bool | None = None   # False when CONFIG was refused: events come only if an admin enabled them
        self.heard = False  # an event has come since the last subscription (events are on, whatever CONFIG said)
        # job id → the Events of the requests waiting for it (several only with DEDUP=1: they share one job)
        self._waiting: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._pid: int | None = None
        # +1 each time the listener subscribes again after losing its connection (a Redis restart always cuts it)
        self.generation = 0

    def register(self, job_id: str) -> threading.Event:
        """Call before pushing the job, so its notification cannot come before anyone listens for it."""
        self.start()
        event = threading.Event()
        with self._lock:
            self._waiting.setdefault(job_id, set()).add(event)
        return event

    def unregister(self, job_id: str, event: threading.Event | None = None) -> None:
        with self._lock:
            events = self._waiting.get(job_id)
            if events is not None:
                if event is None:
                    events.clear()
                else:
                    events.discard(event)
                if not events:
                    del self._waiting[job_id]

    def wait(self, job_id: str, event: threading.Event, deadline: float, watch: Watch | None = None,
             gone: threading.Event | None = None, keep: bool = False) -> bytes | None:
        """Sleep until notified (or the backup poll is due), then read (GETEX); repeat until `deadline`
        (time.monotonic()). Returns the result bytes, or None on timeout. A read that timed out (Redis
        slow, or hung) is tried again OUTAGE_POLL_S later, until the deadline: the job is queued and the worker
        may still answer, so a slow Redis costs this request time, not a 503. Other Redis errors are tried
        again every OUTAGE_POLL_S for OUTAGE_PATIENCE_S, then propagate. With `watch`, raises JobLost (503)
        when the job vanished from Redis (see the module's notes). Returns None at once when `gone` is set (it
        sets `event` too, to wake this). keep: read the result and leave its expiry (DEDUP=1: other requests
        may wait for the same job)."""
        key = keys.result(job_id, self.prefix)
        epoch_key = keys.epoch(self.prefix)
        slow = timed_out = False
        lost_at: float | None = None  # when the job was first found missing
        failing_since: float | None = None  # when Redis began to fail this request's reads
        while True:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0 or (gone is not None and gone.is_set()):
                return None
            if failing_since is not None or timed_out:
                timeout = min(OUTAGE_POLL_S, remaining)
            else:
                timeout = min(self.backup_poll if self.hears() else self.poll_interval, remaining)
            if lost_at is not None:
                timeout = min(timeout, max(lost_at + LOST_GRACE_S - now, 0.0))
            event.wait(timeout)
            event.clear()
            timed_out = False
            try:
                if watch is None:
                    value, epoch = (self.redis.get(key) if keep else self.redis.getex(key, px=self.read_grace_ms)), None
                else:
                    with self.redis.pipeline(transaction=False) as pipe:
                        pipe.get(key) if keep else pipe.getex(key, px=self.read_grace_ms)
                        pipe.get(epoch_key)
                        value, raw_epoch = pipe.execute()
                    epoch = raw_epoch.decode() if isinstance(raw_epoch, bytes) else raw_epoch
            except redis.TimeoutError as exc:
                if not slow:
                    log("result.read_slow", level="WARNING", id=job_id, error=str(exc), retry="until the deadline")
                slow = timed_out = True  # read again soon: the read that timed out may have run
                continue
            except redis.RedisError as exc:
                if failing_since is None:
                    failing_since = time.monotonic()
                    log("result.read_failed", level="WARNING", id=job_id, problem=connection.problem_kind(exc),
                        retry=f"for {OUTAGE_PATIENCE_S:g}s")
                elif time.monotonic() - failing_since > OUTAGE_PATIENCE_S:
                    raise
                continue
            failing_since = None
            if value is not None:
                return value
            if watch is None:
                continue
            generation = self.generation
            if lost_at is None and not watch.suspect(epoch, generation):
                continue
            if lost_at is not None and time.monotonic() < lost_at + LOST_GRACE_S:
                continue
            where = watch.queue.locate(job_id, watch.job_text)
            if where is not None:
                if lost_at is not None:
                    log("request.job_found", id=job_id, where=where)
                watch.settle(epoch, generation)
                lost_at = None
            elif lost_at is None:
                lost_at = time.monotonic()
            else:
                log("request.job_lost", level="WARNING", id=job_id, reason="not in Redis any more (restarted or "
                    "flushed without it)", next="503, send it again")
                raise JobLost("the job was lost when Redis restarted; send it again")

    def hears(self) -> bool:
        """Subscribed, with events known to be on: waiting requests may poll at the slow BACKUP_POLL_S."""
        return self.listening and (self.config_ok is True or self.heard)

    # --- the listener thread -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the listener thread (enabling notifications in Redis) once per process: call it in the
        process that serves, i.e. after gunicorn forks; register() calls it too."""
        if not self.notifications or self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._listen, name="result-listener", daemon=True).start()

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._waiting.values():
                for event in events:
                    event.set()

    def _listen(self) -> None:
        # The keyspace events of a key are published on the node that holds it; Sentinel's current primary is
        # asked for again on every reconnect (connection.subscriber).
        sample_key = keys.result("x", self.prefix)
        backoff = 0.1
        subscribed_before = False
        while True:
            pubsub = None
            try:
                client, db = connection.subscriber(self.redis, sample_key)
                channel = f"__keyspace@{db}__:{keys.result_pattern(self.prefix)}"
                prefix = f"__keyspace@{db}__:"
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                self.config_ok, self.heard = enable_notifications(client), False
                pubsub.psubscribe(channel)
                pubsub.get_message(timeout=1.0)  # wait for the subscription to be confirmed
                if subscribed_before:
                    self.generation += 1  # waiting requests look for their jobs once (see wait())
                self.listening, backoff, subscribed_before = True, 0.1, True
                log("listener.subscribed", channel=channel)
                self._wake_all()  # anything set while we were not subscribed is fetched now
                for message in pubsub.listen():
                    if message.get("type") != "pmessage" or message.get("data") != b"set":
                        continue
                    self.heard = True
                    job_id = keys.job_id_from_result(message["channel"].decode()[len(prefix):], self.prefix)
                    with self._lock:
                        # job_id None (not a result key) finds nothing, as any unknown id does
                        events = list(self._waiting.get(job_id, ()))  # type: ignore[arg-type]
                    for event in events:
                        event.set()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if self.listening:
                    log("listener.disconnected", level="WARNING", error=str(exc), fallback="polling")
                self.listening = False
                self._wake_all()  # each waiting request reads once, then polls every POLL_INTERVAL
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as exc:  # never let the listener die: polling alone would hide it
                self.listening = False
                self._wake_all()
                log("listener.error", level="ERROR", error=repr(exc))
                time.sleep(1.0)
            finally:
                if pubsub is not None:
                    pubsub.close()
