r"""Job → Redis → worker: every operation on the queue, in one place.

The web server pushes with push(); a worker takes a batch with take_batch(), answers it with complete(),
and keeps itself (and dead peers) in order with beat(). Each step that must not be split is one Redis
transaction or Lua script, because with several web servers and several workers anything split in two
is a race: the course's LRANGE + LTRIM pair lets two workers read the same jobs, and the second LTRIM then
drops jobs that nobody ran.

Life of a job:  queue --take_batch--> inflight:{worker} --complete--> result:{id} (trimmed from inflight)
                                            \--beat() of a live worker, when {worker} is dead--> back to queue
"""
import time

import redis

import keys
import settings

# Refuse the job when the queue is full, else append it: one atomic step, so MAX_QUEUE_LENGTH holds
# under any number of web servers.
_PUSH = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return -1 end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""

# Write a batch's results (SET result:<id> EX ttl each) and drop the batch from the worker's in-flight list,
# in one atomic step. A pipelined worker holds several batches in that list at once, in the order it took
# them, and answers them in that order, so the batch answered is always the oldest ARGV[3] entries: LTRIM,
# after checking that the first and the last of them start with the bytes the worker took (ARGV[4], ARGV[5]:
# each job's first bytes, its id). A list that does not match (a peer took this worker for dead and
# requeued its jobs meanwhile) is left alone and the script returns -1: the worker then removes its jobs by
# value. ARGV[3] = -1: delete the whole list (a worker holding one batch at a time).
# KEYS[1]: in-flight list. ARGV: result key prefix, ttl, n, first head, last head, then id, result pairs.
_COMPLETE = """
for i = 6, #ARGV, 2 do
  redis.call('SET', ARGV[1] .. ARGV[i], ARGV[i + 1], 'EX', ARGV[2])
end
local n = tonumber(ARGV[3])
if n < 0 then return redis.call('DEL', KEYS[1]) end
if n == 0 then return 0 end
local first = redis.call('LINDEX', KEYS[1], 0)
local last = redis.call('LINDEX', KEYS[1], n - 1)
if first and last and string.sub(first, 1, #ARGV[4]) == ARGV[4] and string.sub(last, 1, #ARGV[5]) == ARGV[5] then
  redis.call('LTRIM', KEYS[1], n, -1)
  return n
end
return -1
"""
HEAD_BYTES = 48  # the first bytes of a job that _COMPLETE compares: the id and then some

# Refresh this worker's heartbeat (registering it when the heartbeat was gone: first beat, a Redis
# restart, or a peer that took it for dead), then put the in-flight jobs of every worker whose heartbeat
# has expired back at the head of the queue (oldest first) and forget that worker. Returns jobs put back.
# An idle worker beats every HEARTBEAT_INTERVAL, so this runs as few commands as it can.
_BEAT = """
if not redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2], 'GET') then
  redis.call('SADD', KEYS[1], ARGV[1])
end
local requeued = 0
for _, worker in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if worker ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. worker) == 0 then
    while redis.call('LMOVE', ARGV[4] .. worker, KEYS[3], 'RIGHT', 'LEFT') do
      requeued = requeued + 1
    end
    redis.call('SREM', KEYS[1], worker)
  end
end
return requeued
"""


def connect(url=None, **options):
    """A Redis client for REDIS_URL (redis://, rediss://, with password) that fails fast when Redis is down."""
    url = url or settings.REDIS_URL or f"redis://127.0.0.1:{settings.EMBEDDED_REDIS_PORT}/0"
    options.setdefault("socket_connect_timeout", settings.REDIS_CONNECT_TIMEOUT)
    # One quick retry covers a pooled connection that went stale when Redis restarted; more would turn
    # an outage into a slow answer instead of a fast 503.
    options.setdefault("retry", redis.retry.Retry(redis.backoff.NoBackoff(), 1))
    return redis.Redis.from_url(url, **options)


class JobQueue:
    def __init__(self, client, prefix=None):
        self.redis = client
        self.prefix = prefix or settings.KEY_PREFIX
        self.queue_key = keys.queue(self.prefix)
        self.fill_seconds = 0.0
        self._waiting_hint = 0
        self._push = client.register_script(_PUSH)
        self._beat = client.register_script(_BEAT)
        self._complete = client.register_script(_COMPLETE)

    # --- web server side ---------------------------------------------------------------------------
    def push(self, job_text, max_length=None):
        """Append a job. Returns the queue length after it, or None if the queue is full."""
        max_length = settings.MAX_QUEUE_LENGTH if max_length is None else max_length
        length = self._push(keys=[self.queue_key], args=[job_text, max_length])
        return None if length < 0 else length

    def withdraw(self, job_text):
        """Take a job back off the queue if no worker has it yet (the client gave up). True if removed."""
        return self.redis.lrem(self.queue_key, 1, job_text) > 0

    def length(self):
        return self.redis.llen(self.queue_key)

    def live_workers(self):
        members = [m.decode() for m in self.redis.smembers(keys.workers(self.prefix))]
        if not members:
            return 0
        return self.redis.exists(*[keys.heartbeat(m, self.prefix) for m in members])

    # --- worker side -------------------------------------------------------------------------------
    def take_batch(self, worker_id, batch_size, block_timeout, wait_ms=0.0):
        """Wait up to block_timeout s for a job, then take up to batch_size jobs into worker_id's
        in-flight list. With wait_ms > 0, keep waiting that long for the batch to fill. Returns raw jobs.
        Sets fill_seconds: how long the batch took to fill after its first job came."""
        inflight = keys.inflight(worker_id, self.prefix)
        first = self.redis.blmove(self.queue_key, inflight, block_timeout, "LEFT", "RIGHT")
        if first is None:
            return []
        jobs = [first]
        began = time.monotonic()
        deadline = began + wait_ms / 1000.0
        # How many to ask for: what the queue held after the last take (under load, a full batch; idle,
        # none, and then only its length is asked), then exactly what it holds.
        waiting = self._waiting_hint
        while True:
            while len(jobs) < batch_size:
                more, waiting = self._take_more(inflight, min(batch_size - len(jobs), waiting))
                jobs += more
                if not waiting:
                    break
            self._waiting_hint = waiting
            remaining = deadline - time.monotonic()
            if len(jobs) >= batch_size or remaining <= 0:
                self.fill_seconds = time.monotonic() - began
                return jobs
            more = self.redis.blmove(self.queue_key, inflight, max(remaining, 0.001), "LEFT", "RIGHT")
            if more is None:
                self.fill_seconds = time.monotonic() - began
                return jobs
            jobs.append(more)

    def _take_more(self, inflight, n):
        """Move up to n jobs from the head of the queue to the in-flight list, atomically: one MULTI of n
        LMOVEs (any past the end of the queue answer nil), then the queue's length. Returns (jobs, length).
        Not a Lua script: Lua would copy each 150 KB job into a Lua string and back (measured 106-160
        against 56-75 us of Redis CPU per job)."""
        if n <= 0:
            return [], self.redis.llen(self.queue_key)
        with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(n):
                pipe.lmove(self.queue_key, inflight, "LEFT", "RIGHT")
            pipe.llen(self.queue_key)
            *moved, length = pipe.execute()
        return [job for job in moved if job is not None], length

    def complete(self, worker_id, results, ttl=None, taken=None):
        """Write every result (job id → JSON) with a TTL and drop the answered jobs from the in-flight list,
        in one script call. taken: the batch's raw jobs as take_batch returned them, when the worker holds
        more than one batch (only these are dropped; they must be the oldest in the list). Without it the
        whole in-flight list is deleted (a worker that holds one batch at a time)."""
        ttl = settings.RESULT_TTL if ttl is None else ttl
        inflight = keys.inflight(worker_id, self.prefix)
        if taken is None:
            head = [-1, b"", b""]
        elif taken:
            head = [len(taken), taken[0][:HEAD_BYTES], taken[-1][:HEAD_BYTES]]
        else:
            head = [0, b"", b""]
        args = [keys.result("", self.prefix), int(ttl), *head]
        for job_id, text in results.items():
            args += (job_id, text)
        if self._complete(keys=[inflight], args=args) == -1:
            # Rare: the list changed under us. Remove exactly our jobs, wherever they are; a crash before this
            # leaves them in flight, to be run again (their results were written: the rerun's are never read).
            with self.redis.pipeline(transaction=False) as pipe:
                for raw in taken:
                    pipe.lrem(inflight, 1, raw)
                pipe.execute()

    def return_inflight(self, worker_id):
        """Put this worker's untaken in-flight jobs back at the head of the queue. Returns how many."""
        inflight = keys.inflight(worker_id, self.prefix)
        moved = 0
        while self.redis.lmove(inflight, self.queue_key, "RIGHT", "LEFT") is not None:
            moved += 1
        return moved

    def beat(self, worker_id, ttl=None):
        """Refresh worker_id's heartbeat and requeue dead workers' jobs. Returns the number requeued."""
        ttl = settings.HEARTBEAT_TTL if ttl is None else ttl
        return self._beat(
            keys=[keys.workers(self.prefix), keys.heartbeat(worker_id, self.prefix), self.queue_key],
            args=[worker_id, int(ttl), keys.heartbeat("", self.prefix), keys.inflight("", self.prefix)])

    def retire(self, worker_id):
        """A worker leaving cleanly: return its jobs, drop its heartbeat and its registration."""
        moved = self.return_inflight(worker_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.heartbeat(worker_id, self.prefix))
            pipe.srem(keys.workers(self.prefix), worker_id)
            pipe.execute()
        return moved
