r"""Job → Redis → worker: every operation on the queue, in one place.

The web server pushes with push(); a worker takes a batch with take_batch(), answers it with complete(),
and keeps itself (and dead peers) in order with beat(). Each step that must not be split is one Redis
transaction or Lua script, because with several web servers and several workers anything split in two
is a race: the course's LRANGE + LTRIM pair lets two workers read the same jobs, and the second LTRIM then
drops jobs that nobody ran.

Life of a job:  queue --take_batch--> inflight:{worker} --complete--> result:{id} (trimmed from inflight)
                                            \--beat() of a live worker, when {worker} is dead--> back to queue
                                               (attempts:{id} + 1; at MAX_ATTEMPTS: dead_letter + an error result)
"""
from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any


from imgq import settings
from imgq.errors import QueueFull, TooManyRequests
from imgq.jobs import keys
from imgq.jobs.records import END_FUNCTION
from imgq.jobs.shares import GIVE_BACK_FUNCTION, ClientShare

if TYPE_CHECKING:
    from imgq.jobs.connection import RedisClient

# Refuse the job when the queue is full ({-1}) or its client has its share queued already ({-2}; KEYS[3], the
# share's counter, ARGV[5] its cap, 0 = none; shares.py), else count it and append it: one atomic step, so
# MAX_QUEUE_LENGTH and CLIENT_MAX_QUEUED hold under any number of web servers. Returns {queue length, epoch}: the
# epoch (KEYS[2]) is set here when missing and lives while pushes come, so a waiting request that finds it
# changed or gone knows that Redis lost its data (restarted without persistence, flushed) and looks for its job
# (_LOCATE).
_PUSH = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return {-1} end
if tonumber(ARGV[5]) > 0 then
  local mine = redis.call('INCR', KEYS[3])
  if mine > tonumber(ARGV[5]) then
    redis.call('DECR', KEYS[3])
    return {-2}
  end
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[2], epoch, 'EX', ARGV[4])
else
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return {n, epoch}
"""

# Take a job back off its lane (KEYS[1]) if it is still there, and give its client's unit back (KEYS[2], when
# given) in the same step: a unit is never left counted for a job gone. ARGV[1]: the job as pushed.
_WITHDRAW = GIVE_BACK_FUNCTION + """
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n > 0 and KEYS[2] then give_back(KEYS[2]) end
return n
"""

# Where is this job? 'answered' (its result is waiting), 'queued', 'running' (in a registered worker's in-flight
# list) or nil: gone. KEYS[1]: queue, KEYS[2]: workers set, KEYS[3]: the job's result key, KEYS[4]: the batch
# lane; ARGV[1]: the job as
# pushed, ARGV[2]: the in-flight key prefix. LPOS compares whole values, but two jobs differ within their first
# bytes (the id), so a look costs about one memcmp per job held. Only called when a request has reason to think
# its job is gone (results.py), never per poll.
_LOCATE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 'answered' end
if redis.call('LPOS', KEYS[1], ARGV[1]) or redis.call('LPOS', KEYS[4], ARGV[1]) then return 'queued' end
for _, worker in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('LPOS', ARGV[2] .. worker, ARGV[1]) then return 'running' end
end
return false
"""

# The hash field a job's attempts are counted under: its id, read from the first bytes of the job (no
# decoding of the ~200 KB job, and whatever follows the header may be any bytes); a job without a
# readable id is counted under the SHA-1 of its bytes. Returns id (or nil), field.
_JOB_FIELD = r"""
local function job_field(job)
  local id = string.match(string.sub(job, 1, 512), '"id"%s*:%s*"([%w_%-]+)"')
  return id, id or ('sha1:' .. redis.sha1hex(job))
end
"""

# Write a batch's results (SET result:<id> EX ttl each) and drop the batch from the worker's in-flight list,
# in one atomic step. A pipelined worker holds several batches in that list at once, in the order it took
# them, and answers them in that order, so the batch answered is always the oldest ARGV[3] entries: LTRIM,
# after checking that the first and the last of them start with the bytes the worker took (ARGV[4], ARGV[5]:
# each job's first bytes, its id). A list that does not match (a peer took this worker for dead and
# requeued its jobs meanwhile) is left alone and the script returns -1: the worker then removes its jobs by
# value. ARGV[3] = -1: delete the whole list (a worker holding one batch at a time).
# The answered jobs need no attempt count any more (KEYS[2], the attempts hash: see _BEAT). An asynchronous
# job's record ends in the same step (done or failed, unless it ended already) and its callback is scheduled,
# so no result is ever written without them, whatever becomes of the worker after.
# KEYS[1]: in-flight list, KEYS[2]: attempts, KEYS[3]: callbacks schedule. ARGV: result key prefix, ttl, n,
# first head, last head, record key prefix, now, then (id, result, the record's end status or '') triples.
_COMPLETE = END_FUNCTION + """
for i = 8, #ARGV, 3 do
  redis.call('SET', ARGV[1] .. ARGV[i], ARGV[i + 1], 'EX', ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[i])
  if ARGV[i + 2] ~= '' then end_record(ARGV[6] .. ARGV[i], ARGV[i + 2], KEYS[3], ARGV[7], ARGV[i]) end
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

# The batch just taken is the last ARGV[1] entries of the in-flight list. If one of them was held by a
# worker that died, keep only that one in flight and put the others back at the head of the queue, in
# their order: a job that kills its worker then takes no batch-mates down with it next time, so only
# the poison itself reaches MAX_ATTEMPTS. Returns the 1-based index of the job kept, or 0 (batch as is).
_ISOLATE = _JOB_FIELD + """
local jobs = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
if #jobs < 2 then return 0 end
local pick = 0
for i, job in ipairs(jobs) do
  local _, field = job_field(job)
  if redis.call('HEXISTS', KEYS[3], field) == 1 then pick = i break end
end
if pick == 0 then return 0 end
redis.call('LTRIM', KEYS[1], 0, -(#jobs + 1))
redis.call('RPUSH', KEYS[1], jobs[pick])
for i = #jobs, 1, -1 do
  if i ~= pick then redis.call('LPUSH', KEYS[2], jobs[i]) end
end
return pick
"""

# Right before a batch runs: which of its jobs were cancelled (DELETE /jobs/<id>, a client that hung up), and one
# unit given back to the share of each job taken, in one call: the model waits for it. A script, not a pipeline:
# redis-py asks SCRIPT EXISTS before a pipeline that holds a script, a round trip more. KEYS: the cancel keys,
# then the share keys; ARGV[1]: how many cancel keys. Returns 1 (cancelled) or 0 per cancel key.
_STARTING = GIVE_BACK_FUNCTION + """
local n = tonumber(ARGV[1])
local cancelled = {}
for i = 1, n do cancelled[i] = redis.call('EXISTS', KEYS[i]) end
for i = n + 1, #KEYS do give_back(KEYS[i]) end
return cancelled
"""

# Refresh this worker's heartbeat (registering it when the heartbeat was gone: first beat, a Redis
# restart, or a peer that took it for dead), then deal with the in-flight jobs of every worker whose
# heartbeat has expired, and forget that worker. Each such job counts one more attempt (attempts hash):
# below MAX_ATTEMPTS it goes back at the head of the queue (oldest first); at MAX_ATTEMPTS it goes to the
# dead-letter list (capped) and its client gets an error result at once, through the same SET + keyspace
# notification as any result (an asynchronous job's record says failed, and its callback is scheduled). All
# in one script, so a job is never both requeued and dead-lettered and no count is lost when two live workers
# reap at once. An idle worker beats every HEARTBEAT_INTERVAL and finds no dead peer: then this is SET +
# SMEMBERS + one EXISTS per peer.
# Returns {requeued count, dead-lettered id, ...}.
_BEAT = _JOB_FIELD + END_FUNCTION + """
if not redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2], 'GET') then
  redis.call('SADD', KEYS[1], ARGV[1])
end
local requeued, dead = 0, {}
for _, worker in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if worker ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. worker) == 0 then
    local inflight = ARGV[4] .. worker
    while true do
      local job = redis.call('RPOP', inflight)  -- newest first: LPUSHed back, the oldest ends at the head
      if not job then break end
      local id, field = job_field(job)
      local n = redis.call('HINCRBY', KEYS[4], field, 1)
      if n >= tonumber(ARGV[5]) then
        redis.call('HDEL', KEYS[4], field)
        local reason = 'its model worker died ' .. n .. ' times while classifying it'
        redis.call('LPUSH', KEYS[5], cjson.encode({id = id or field, reason = reason, attempts = n,
                                                   worker = worker, at = tonumber(ARGV[10])}) .. '\\n' .. job)
        redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[6]) - 1)
        if id then
          redis.call('SET', ARGV[7] .. id, cjson.encode({id = id, error = reason, dead_letter = true,
                                                        attempts = n}), 'EX', ARGV[8])
          end_record(ARGV[13] .. id, 'failed', KEYS[8], ARGV[10], id)
        end
        table.insert(dead, id or field)
      else
        redis.call('EXPIRE', KEYS[4], ARGV[9])
        redis.call('LPUSH', KEYS[3], job)
        requeued = requeued + 1
      end
    end
    redis.call('SREM', KEYS[1], worker)
    redis.call('HDEL', KEYS[7], worker)  -- its model record (workers.py): the hash holds live workers only
  end
end
if requeued > 0 then redis.call('HINCRBY', KEYS[6], ARGV[11], requeued) end
if #dead > 0 then redis.call('HINCRBY', KEYS[6], ARGV[12], #dead) end
table.insert(dead, 1, requeued)
return dead
"""



def over_share(cap: int) -> TooManyRequests:
    return TooManyRequests(f"this client already has {cap} jobs waiting (CLIENT_MAX_QUEUED); try again when "
                           "some are answered")


def queue_full() -> QueueFull:
    return QueueFull(f"the queue is full ({settings.MAX_QUEUE_LENGTH} jobs); try again shortly")


class JobQueue:
    def __init__(self, client: RedisClient, prefix: str | None = None) -> None:
        self.redis = client
        self.prefix = prefix or settings.KEY_PREFIX
        self.queue_key = keys.queue(self.prefix)
        self.fill_seconds = 0.0
        self.isolated = False  # the last batch taken is one suspect job, run alone (see _ISOLATE)
        self._waiting_hint = 0  # jobs the interactive lane held after the last take
        self._batch_hint = 0    # and the batch lane
        self.batch_key = keys.lane_queue(keys.LANES[1], self.prefix)
        self._push = client.register_script(_PUSH)
        self._withdraw = client.register_script(_WITHDRAW)
        self._locate = client.register_script(_LOCATE)
        self.epoch_key = keys.epoch(self.prefix)
        self._beat = client.register_script(_BEAT)
        self._isolate = client.register_script(_ISOLATE)
        self._complete = client.register_script(_COMPLETE)
        self._starting = client.register_script(_STARTING)
        self.attempts_key = keys.attempts(self.prefix)

    # --- web server side ---------------------------------------------------------------------------
    def push(self, job_text: bytes, max_length: int | None = None, lane: str = keys.LANES[0]) -> int | None:
        """Append a job. Returns the queue length after it, or None if the queue is full."""
        return self.push_job(job_text, max_length, lane)[0]

    def push_job(self, job_text: bytes, max_length: int | None = None, lane: str = keys.LANES[0],
                 pipe: Any = None, share: ClientShare | None = None) -> tuple[int | None, str | None]:
        """Append a job to its lane (each lane holds at most MAX_QUEUE_LENGTH), counted in its client's `share`.
        Returns (the lane's length after it, or None if it is full; Redis' epoch); raises TooManyRequests when
        the client has its share queued. With `pipe`, the call is queued there and returns (0, None)."""
        if pipe is not None:
            self.push_raw(job_text, lane, share, max_length, pipe)
            return 0, None
        return self.pushed(self.push_raw(job_text, lane, share, max_length), share)

    @staticmethod
    def pushed(out: Any, share: ClientShare | None = None) -> tuple[int | None, str | None]:
        """The push script's answer read: (the lane's length, Redis' epoch), or (None, None) when the lane is full;
        TooManyRequests when the client has its share queued."""
        if out[0] == -2:
            raise over_share(share.cap if share is not None else 0)
        if out[0] < 0:
            return None, None
        return out[0], out[1].decode() if isinstance(out[1], bytes) else out[1]

    def push_raw(self, job_text: bytes, lane: str = keys.LANES[0], share: ClientShare | None = None,
                 max_length: int | None = None, pipe: Any = None) -> Any:
        """The push script's own answer ({-1} full, {-2} over the share, else {length, epoch}); with `pipe`, the
        call queued there."""
        max_length = settings.MAX_QUEUE_LENGTH if max_length is None else max_length
        share_key, cap = (share.key, share.cap) if share is not None else (self.epoch_key, 0)
        return self._push(keys=[keys.lane_queue(lane, self.prefix), self.epoch_key, share_key],
                          args=[job_text, max_length, uuid.uuid4().hex, self.epoch_ttl(), cap, ClientShare.ttl()],
                          client=pipe)

    @staticmethod
    def epoch_ttl() -> int:
        # Longer than any request waits (REQUEST_TIMEOUT after its push), so it never expires under a waiting one.
        return int(2 * settings.REQUEST_TIMEOUT) + 10

    def locate(self, job_id: str, job_text: bytes) -> str | None:
        """'answered', 'queued', 'running', or None when the job is nowhere in Redis (see _LOCATE)."""
        where = self._locate(keys=[self.queue_key, keys.workers(self.prefix), keys.result(job_id, self.prefix),
                                   self.batch_key],
                             args=[job_text, keys.inflight("", self.prefix)])
        return where.decode() if isinstance(where, bytes) else where

    def withdraw(self, job_text: bytes, lane: str = keys.LANES[0], share: ClientShare | None = None) -> bool:
        """Take a job back off its lane if no worker has it yet (the client gave up), giving its client's
        `share` unit back in the same step. True if removed."""
        share_keys = [share.key] if share is not None and share.cap > 0 else []
        return self._withdraw(keys=[keys.lane_queue(lane, self.prefix), *share_keys], args=[job_text]) > 0

    def length(self) -> int:
        return self.redis.llen(self.queue_key)

    def counters(self) -> dict[str, int]:
        """The running counts of requeued and dead-lettered jobs (0 until the first happens)."""
        raw = self.redis.hgetall(keys.counters(self.prefix))
        counts = {keys.COUNTER_REQUEUED: 0, keys.COUNTER_DEAD_LETTERED: 0}
        counts.update({k.decode(): int(v) for k, v in raw.items()})
        return counts

    def dead_letters(self, count: int = 10) -> list[tuple[Any, bytes]]:
        """The newest dead-lettered jobs as (reason dict, raw job bytes), newest first."""
        import json
        out: list[tuple[Any, bytes]] = []
        for entry in self.redis.lrange(keys.dead_letter(self.prefix), 0, count - 1):
            head, _, raw = entry.partition(b"\n")
            out.append((json.loads(head), raw))
        return out

    # --- worker side -------------------------------------------------------------------------------
    def take_batch(self, worker_id: str, batch_size: int, block_timeout: float, wait_ms: float = 0.0) -> list[bytes]:
        """Wait up to block_timeout s for a job, then take up to batch_size jobs into worker_id's
        in-flight list. With wait_ms > 0, keep waiting that long for the batch to fill. Returns raw jobs.
        Sets fill_seconds: how long the batch took to fill after its first job came."""
        inflight = keys.inflight(worker_id, self.prefix)
        first = None
        if self._batch_hint:  # the batch lane had jobs: never block on the interactive one meanwhile
            first = self.redis.lmove(self.queue_key, inflight, "LEFT", "RIGHT") or \
                self.redis.lmove(self.batch_key, inflight, "LEFT", "RIGHT")
            self._batch_hint = int(first is not None)
        if first is None:
            # Blocking pops watch one list: an idle worker looks at the batch lane every LANE_POLL_S.
            first = self.redis.blmove(self.queue_key, inflight, min(block_timeout, settings.LANE_POLL_S),
                                      "LEFT", "RIGHT") or self.redis.lmove(self.batch_key, inflight, "LEFT", "RIGHT")
        if first is None:
            return []
        jobs = [first]
        began = time.monotonic()
        deadline = began + wait_ms / 1000.0
        # How many to ask for: what the queue held after the last take (under load, a full batch; idle,
        # none, and then only its length is asked), then exactly what it holds.
        waiting, batch_waiting = self._waiting_hint, self._batch_hint
        suspects = False  # True if some job's worker died once: then the batch may need isolating
        while True:
            while len(jobs) < batch_size:
                # The interactive lane first; while the batch lane holds jobs, one place of each batch is its
                # (so a bulk backlog moves at least a job a batch, whatever the interactive load).
                room = batch_size - len(jobs)
                from_batch = min(batch_waiting, max(room - waiting, 1 if batch_waiting else 0))
                more, waiting, batch_waiting, suspect = self._take_more(inflight, min(room - from_batch, waiting),
                                                                        from_batch)
                jobs += more
                suspects = suspects or suspect
                if not waiting and not batch_waiting:
                    break
            self._waiting_hint, self._batch_hint = waiting, batch_waiting
            remaining = deadline - time.monotonic()
            if len(jobs) >= batch_size or remaining <= 0:
                break
            more = self.redis.blmove(self.queue_key, inflight, max(remaining, 0.001), "LEFT", "RIGHT")
            if more is None:
                break
            jobs.append(more)
        self.fill_seconds = time.monotonic() - began
        self.isolated = False
        if suspects and len(jobs) > 1:
            kept = self._isolate(keys=[inflight, self.queue_key, self.attempts_key], args=[len(jobs)])
            if kept:
                self.isolated = True  # the worker runs it with nothing else in flight (imgq/worker/loop.py)
                return [jobs[kept - 1]]
        return jobs

    def _take_more(self, inflight: str, n: int, n_batch: int = 0) -> tuple[list[bytes], int, int, bool]:
        """Move up to n jobs from the head of the interactive lane and n_batch from the batch lane's to the
        in-flight list, atomically: one MULTI of LMOVEs (any past the end of a lane answer nil), then both lanes'
        lengths and the number of jobs whose worker died at least once (HLEN attempts: when not 0 the batch may
        hold a suspect, and take_batch runs it alone, see _ISOLATE). Returns (jobs, lengths of both, suspects).
        Not a Lua script: Lua would copy each 150 KB job into a Lua string and back (measured 106-160
        against 56-75 us of Redis CPU per job)."""
        with self.redis.pipeline(transaction=n + n_batch > 0) as pipe:  # nothing to move: reads, no MULTI
            for _ in range(max(n, 0)):
                pipe.lmove(self.queue_key, inflight, "LEFT", "RIGHT")
            for _ in range(max(n_batch, 0)):
                pipe.lmove(self.batch_key, inflight, "LEFT", "RIGHT")
            pipe.llen(self.queue_key)
            pipe.llen(self.batch_key)
            pipe.hlen(self.attempts_key)
            *moved, length, batch_length, suspects = pipe.execute()
        return [job for job in moved if job is not None], length, batch_length, suspects > 0

    def batch_starting(self, job_ids: list[str], share_keys: list[str],
                       client: RedisClient | None = None) -> list[bool]:
        """Before a batch runs: which of `job_ids` were cancelled; a unit given back to each of `share_keys` (the
        shares of the jobs taken, shares.py). One round trip, through `client` (default this queue's)."""
        cancel_keys = [keys.cancel(job_id, self.prefix) for job_id in job_ids]
        answers = self._starting(keys=cancel_keys + share_keys, args=[len(cancel_keys)], client=client)
        return [bool(n) for n in answers]

    def complete(self, worker_id: str, results: dict[str, str], ttl: float | None = None,
                 taken: list[bytes] | None = None, ends: dict[str, str] | None = None) -> None:
        """Write every result (job id → JSON) with a TTL and drop the answered jobs from the in-flight list,
        in one script call. taken: the batch's raw jobs as take_batch returned them, when the worker holds
        more than one batch (only these are dropped; they must be the oldest in the list). Without it the
        whole in-flight list is deleted (a worker that holds one batch at a time). ends: the asynchronous
        jobs' records' end status (job id → done or failed), set and their callbacks scheduled in that call."""
        ttl = settings.RESULT_TTL if ttl is None else ttl
        inflight = keys.inflight(worker_id, self.prefix)
        if taken is None:
            head = [-1, b"", b""]
        elif taken:
            head = [len(taken), taken[0][:HEAD_BYTES], taken[-1][:HEAD_BYTES]]
        else:
            head = [0, b"", b""]
        args = [keys.result("", self.prefix), int(ttl), *head, keys.job("", self.prefix), round(time.time(), 3)]
        for job_id, text in results.items():
            args += (job_id, text, (ends or {}).get(job_id, ""))
        if self._complete(keys=[inflight, self.attempts_key, keys.callbacks(self.prefix)], args=args) == -1:
            # Rare: the list changed under us. Remove exactly our jobs, wherever they are; a crash before this
            # leaves them in flight, to be run again (their results were written: the rerun's are never read).
            with self.redis.pipeline(transaction=False) as pipe:
                # taken is not None here: without it the script deletes the list and never answers -1
                for raw in taken:  # type: ignore[union-attr]
                    pipe.lrem(inflight, 1, raw)
                pipe.execute()

    def return_inflight(self, worker_id: str, keep: int = 0) -> int:
        """Put this worker's untaken in-flight jobs back at the head of the queue, newest first so they keep
        their order, leaving the oldest `keep`. Returns how many."""
        inflight = keys.inflight(worker_id, self.prefix)
        moved = 0
        while (not keep or self.redis.llen(inflight) > keep) and \
                self.redis.lmove(inflight, self.queue_key, "RIGHT", "LEFT") is not None:
            moved += 1
        return moved

    def beat(self, worker_id: str, ttl: float | None = None, max_attempts: int | None = None) -> tuple[int, list[str]]:
        """Refresh worker_id's heartbeat and deal with dead workers' jobs: requeue them, or dead-letter
        those whose worker died max_attempts times. Returns (number requeued, [dead-lettered job ids])."""
        ttl = settings.HEARTBEAT_TTL if ttl is None else ttl
        max_attempts = settings.MAX_ATTEMPTS if max_attempts is None else max_attempts
        # An attempt count matters while its job can still run: until the job's deadline (REQUEST_TIMEOUT, or
        # ASYNC_TIMEOUT, after it was queued); after that the job is dropped on sight. Twice that, to be safe.
        attempts_ttl = int(2 * max(settings.REQUEST_TIMEOUT, settings.ASYNC_TIMEOUT) + ttl) + 1
        out = self._beat(
            keys=[keys.workers(self.prefix), keys.heartbeat(worker_id, self.prefix), self.queue_key,
                  self.attempts_key, keys.dead_letter(self.prefix), keys.counters(self.prefix),
                  keys.worker_models(self.prefix), keys.callbacks(self.prefix)],
            args=[worker_id, int(ttl), keys.heartbeat("", self.prefix), keys.inflight("", self.prefix),
                  max(int(max_attempts), 1), max(settings.DEAD_LETTER_MAX, 1), keys.result("", self.prefix),
                  settings.RESULT_TTL, attempts_ttl, round(time.time(), 3),
                  keys.COUNTER_REQUEUED, keys.COUNTER_DEAD_LETTERED, keys.job("", self.prefix)])
        return out[0], [d.decode() for d in out[1:]]

    def retire(self, worker_id: str) -> int:
        """A worker leaving cleanly: return its jobs, drop its heartbeat and its registration."""
        moved = self.return_inflight(worker_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.heartbeat(worker_id, self.prefix))
            pipe.srem(keys.workers(self.prefix), worker_id)
            pipe.execute()
        return moved
