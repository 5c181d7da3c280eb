"""Each client's share of the queue: at most CLIENT_MAX_QUEUED jobs waiting or running per client.

A client is an API key (by its id, imgq/web/auth.py) or, without keys, the request's address. A request takes
one unit per job before it pushes it and gives it back when its wait ends (answered, failed, timed out or
withdrawn), so one client flooding the queue gets 429 + Retry-After while the others still get in.

The count lives in Redis (one counter key per client), so the cap holds across every web process. INCR and
EXPIRE go in one round trip; a web process killed while holding units leaks them only until the key expires
(twice REQUEST_TIMEOUT after that client's last job), never for good.
"""
from __future__ import annotations

from typing import Any

import redis

from imgq import settings
from imgq.errors import TooManyRequests
from imgq.jobs import keys


# Give one unit back; the key goes when its count does (no zero left behind per client ever seen).
_GIVE_BACK = """
if redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end
"""


class ClientShare:
    """One request's handle on its client's share. take() per job, give_back() per job taken."""

    def __init__(self, client: Any, prefix: str, client_id: str, cap: int | None = None) -> None:
        self.redis, self.key = client, keys.share(client_id, prefix)
        self.cap = settings.CLIENT_MAX_QUEUED if cap is None else cap

    def take(self) -> None:
        """Count one more job for this client; raises TooManyRequests (429) past the cap. No-op with cap 0."""
        if self.cap <= 0:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(self.key)
            pipe.expire(self.key, int(2 * settings.REQUEST_TIMEOUT) + 1)
            count, _ = pipe.execute()
        if count > self.cap:
            self.give_back()
            raise TooManyRequests(f"this client already has {self.cap} jobs waiting (CLIENT_MAX_QUEUED); "
                                  "try again when some are answered")

    def give_back(self) -> None:
        if self.cap <= 0:
            return
        try:
            self.redis.eval(_GIVE_BACK, 1, self.key)
        except redis.RedisError:  # the key expires by itself; the answer the client waits for matters more
            pass
