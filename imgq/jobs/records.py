"""The record of an asynchronous job: what GET /jobs/<id> reports while the job is queued, running or done.

A job submitted with `Prefer: respond-async` gets a hash `{prefix}:job:{id}` beside its entry on the queue:

    status     queued → running → done | failed | expired | cancelled
    owner      the client that submitted it (an API key's id, else an address): only it may read or cancel it
    created    Unix time of the submission
    lane       the queue lane it was put on
    callback   the URL to POST the result to when it ends (empty: none)
    callback_status, callback_attempts   pending | delivered | failed, and how many POSTs were tried

The result itself is the worker's `result:{id}` key, as for every job, written by the same script that ends
the record (queue.py's _COMPLETE); GET /jobs/<id> reads it without deleting it, so it answers until
RESULT_TTL. The record lives until then too (its TTL is set at submission: the job's deadline plus
RESULT_TTL). Status changes only ever go forward, and only on a record that exists
(a script checks), so a late worker never brings back a record that expired or a job that was cancelled.

A cancel is a key `{prefix}:cancel:{id}` the worker looks for before it runs a job (queued or taken ahead);
synchronous requests whose client hung up use it too (imgq/web/classify.py).
"""
from __future__ import annotations

import time
from typing import Any

from imgq import settings
from imgq.jobs import keys

FINAL = ("done", "failed", "expired", "cancelled")

# Move a record to a new status if it exists and is not final yet. KEYS[1]: record. ARGV[1]: status.
# Returns 1 if moved, 0 if no record, -1 if it was final already (its status is left as it was).
_ADVANCE = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
if %s then return -1 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
return 1
""" % " or ".join(f"current == '{status}'" for status in FINAL)

# Cancel a queued job: only a record still `queued` (a running one is left to finish). KEYS[1]: record,
# KEYS[2]: cancel key. ARGV[1]: the cancel key's ttl. Returns the status the record had (nil: no record).
_CANCEL = """
local current = redis.call('HGET', KEYS[1], 'status')
if current == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled')
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
end
return current
"""


# For the worker's scripts (queue.py): end an asynchronous job's record, unless it has ended already or there
# is none (a synchronous job), and schedule its callback when it has one. Every script that ends a job uses it.
END_FUNCTION = """
local function end_record(record, status, schedule, now, id)
  local current = redis.call('HGET', record, 'status')
  if current == 'queued' or current == 'running' then
    redis.call('HSET', record, 'status', status)
    if (redis.call('HGET', record, 'callback') or '') ~= '' then redis.call('ZADD', schedule, now, id) end
  end
end
"""


def decoded(raw: dict[bytes, bytes]) -> dict[str, str]:
    """A record as HGETALL answers it, in text."""
    return {k.decode(): v.decode() for k, v in raw.items()}


class Records:
    def __init__(self, client: Any, prefix: str | None = None) -> None:
        self.redis, self.prefix = client, prefix or settings.KEY_PREFIX
        self._advance = client.register_script(_ADVANCE)
        self._cancel = client.register_script(_CANCEL)

    def create(self, pipe: Any, job_id: str, owner: str, ttl: float, lane: str, callback: str = "") -> None:
        """Queue the commands that create a job's record on `pipe` (the caller pushes the job in the same
        pipeline, so no job is ever on the queue without its record)."""
        key = keys.job(job_id, self.prefix)
        pipe.hset(key, mapping={"status": "queued", "owner": owner, "created": round(time.time(), 3), "lane": lane,
                                "callback": callback, "callback_status": "pending" if callback else "",
                                "callback_attempts": 0})
        pipe.expire(key, int(ttl) + 1)

    def advance(self, job_id: str, status: str, pipe: Any = None) -> Any:
        return self._advance(keys=[keys.job(job_id, self.prefix)], args=[status], client=pipe)

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job. Returns the status it had (None: unknown)."""
        before = self._cancel(keys=[keys.job(job_id, self.prefix), keys.cancel(job_id, self.prefix)],
                              args=[cancel_ttl()])
        return before.decode() if before else None


def cancel_ttl() -> int:
    """How long a cancel mark must last: until the job's deadline has passed (workers drop it then anyway)."""
    return int(max(settings.REQUEST_TIMEOUT, settings.ASYNC_TIMEOUT)) + 60
