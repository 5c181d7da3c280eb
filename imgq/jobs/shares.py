"""Each client's share of the queue: at most CLIENT_MAX_QUEUED of its jobs waiting at once.

A client is an API key (by its id, imgq/web/auth.py) or, without keys, the request's address. The count costs
no round trip of its own: the push script (queue.py) counts the job in the same call that queues it, and
refuses it past the cap (429 + Retry-After), so one client flooding the queue is turned away while the others
still get in; the job carries its share's key, and the worker that takes it gives the unit back in the
script it runs for every batch anyway (JobQueue.batch_starting). A request that takes its job back off the queue
(timed out, client gone) gives it back in the same script (JobQueue.withdraw).

The counts live in Redis, so the cap holds across every web process. Each key expires twice the longest a job
may wait (REQUEST_TIMEOUT, or ASYNC_TIMEOUT for asynchronous jobs) after its client's last accepted push, so a
unit lost with a crashed process is not lost for good; a refused push does not keep it alive.
"""
from __future__ import annotations

from imgq import settings
from imgq.jobs import keys

# Give one unit back; the key goes when its count does (no zero left behind per client ever seen).
GIVE_BACK_FUNCTION = """
local function give_back(key)
  if redis.call('DECR', key) <= 0 then redis.call('DEL', key) end
end
"""


def carried(share: ClientShare | None) -> str | None:
    """The share key a job carries, so that the worker that takes it gives the unit back (none without a cap)."""
    return share.key if share is not None and share.cap > 0 else None


class ClientShare:
    """One client's share: its counter's key and cap, for the push script and the give-backs."""

    def __init__(self, prefix: str, client_id: str, cap: int | None = None) -> None:
        self.key = keys.share(client_id, prefix)
        self.cap = settings.CLIENT_MAX_QUEUED if cap is None else cap

    @staticmethod
    def ttl() -> int:
        return int(2 * max(settings.REQUEST_TIMEOUT, settings.ASYNC_TIMEOUT)) + 1
