"""Each client's share of the queue: at most CLIENT_MAX_QUEUED of its jobs waiting at once.

A client is an API key (by its id, imgq/web/auth.py) or, without keys, the request's address. The count costs
no round trip of its own: the push script (queue.py) counts the job in the same call that queues it, and
refuses it past the cap (429 + Retry-After), so one client flooding the queue is turned away while the others
still get in; the job carries its share's key, and the worker that takes it gives the unit back in the
script it runs for every batch anyway (JobQueue.batch_starting). A request that takes its job back off the queue
(timed out, client gone) gives it back itself.

The counts live in Redis, so the cap holds across every web process. Each key expires twice REQUEST_TIMEOUT
after its client's last push, so a unit lost with a crashed process is not lost for good.
"""
from __future__ import annotations

from typing import Any

import redis

from imgq import settings
from imgq.jobs import keys

# Give one unit back; the key goes when its count does (no zero left behind per client ever seen).
GIVE_BACK_FUNCTION = """
local function give_back(key)
  if redis.call('DECR', key) <= 0 then redis.call('DEL', key) end
end
"""
GIVE_BACK = GIVE_BACK_FUNCTION + "give_back(KEYS[1])\n"


def carried(share: ClientShare | None) -> str | None:
    """The share key a job carries, so that the worker that takes it gives the unit back (none without a cap)."""
    return share.key if share is not None and share.cap > 0 else None


class ClientShare:
    """One client's share: its counter's key and cap, for the push script and the give-backs."""

    def __init__(self, client: Any, prefix: str, client_id: str, cap: int | None = None) -> None:
        self.redis, self.key = client, keys.share(client_id, prefix)
        self.cap = settings.CLIENT_MAX_QUEUED if cap is None else cap

    @staticmethod
    def ttl() -> int:
        return int(2 * settings.REQUEST_TIMEOUT) + 1

    def give_back(self) -> None:
        """For a job taken back off the queue by its request (a worker gives back the jobs it takes)."""
        if self.cap <= 0:
            return
        try:
            self.redis.eval(GIVE_BACK, 1, self.key)
        except redis.RedisError:  # the key expires by itself; the answer the client waits for matters more
            pass
