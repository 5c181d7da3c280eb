"""Where every Redis client comes from: one URL, three shapes of Redis.

    redis://:secret@host:6379/0                        one Redis (or a primary addressed directly); rediss:// for TLS
    redis+sentinel://:secret@s1:26379,s2:26379,s3:26379/mymaster/0
                                                       Sentinel: ask the sentinels for the current primary of the
                                                       service `mymaster`, and ask again after every lost connection,
                                                       so a failover is followed without a restart
    redis+cluster://:secret@node1:7000,node2:7001/     Redis Cluster: any reachable nodes; the client learns the rest.
                                                       Every key must sit in one hash slot: KEY_PREFIX needs a hash
                                                       tag, e.g. KEY_PREFIX={imgq} (keys become {imgq}:queue, ...)

The password in the URL is the data nodes' password; sentinels that need one of their own take it as
`?sentinel_password=...`. Everything else in the service (queue.py, results.py, activity.py) uses the
client it is given and never looks at the URL, except for the two things a shape changes: the pub/sub
connection of the result listener (subscriber(): it must reach the node that holds the result keys) and
closing a client's connections (disconnect()).
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel, SentinelConnectionPool

from imgq import settings
from imgq.errors import RedisUnavailable

# A client of any of the three shapes: redis.Redis, a Sentinel-managed redis.Redis or a RedisCluster. They share
# the commands the service uses but no common type in redis-py's hints.
RedisClient = Any

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


class BadRedisURL(ValueError):
    """REDIS_URL (or KEY_PREFIX with it) cannot work; the message says what to write instead."""


def default_url() -> str:
    """REDIS_URL; unset: the embedded Redis on EMBEDDED_REDIS_PORT, logged in as `make run` / `make redis`
    published it for this user (imgq/embedded_redis.py), else without a password."""
    if settings.REDIS_URL:
        return settings.REDIS_URL
    from imgq.embedded_redis import published_url
    return published_url(settings.EMBEDDED_REDIS_PORT) or f"redis://127.0.0.1:{settings.EMBEDDED_REDIS_PORT}/0"


def shape(url: str | None = None) -> str:
    """'single', 'sentinel' or 'cluster', from the URL's scheme."""
    scheme = urlsplit(url or default_url()).scheme
    if scheme in SENTINEL_SCHEMES:
        return "sentinel"
    if scheme in CLUSTER_SCHEMES:
        return "cluster"
    return "single"


def _hosts(netloc: str, default_port: int) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """'user:pw@h1:1,h2:2' → (username, password, [(h1, 1), (h2, 2)])."""
    auth, _, hosts = netloc.rpartition("@")
    username, _, password = auth.partition(":") if auth else ("", "", "")
    found: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "")
        host = host.strip("[]") or part.strip()
        if not host:
            continue
        try:
            found.append((host, int(port) if port else default_port))
        except ValueError:
            raise BadRedisURL(f"REDIS_URL: port {port!r} of {part!r} is not a number") from None
    if not found:
        raise BadRedisURL("REDIS_URL names no host")
    return unquote(username) or None, unquote(password) or None, found


def has_hash_tag(prefix: str) -> bool:
    """True if every key built on `prefix` hashes to one slot (a non-empty {...} in it)."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1)
    return start >= 0 and end > start + 1


def connect(url: str | None = None, resend: bool = True, **options: Any) -> RedisClient:
    """The one way to get a Redis client: for `url` (default REDIS_URL; one Redis, Sentinel or Cluster), failing
    fast when Redis is down. Options are redis-py connection options (timeouts, retry, ...).

    resend=False: a command whose connection broke is not sent again; the caller gets the error. For a worker's
    take, which may have moved jobs in Redis before its answer was lost: sent again, it would leave those jobs
    in the in-flight list of a worker that lives on and never runs them (the error makes it put them back)."""
    options.setdefault("socket_connect_timeout", settings.REDIS_CONNECT_TIMEOUT)
    # One quick retry covers a connection cut between the pool's check and the command; more would turn
    # an outage into a slow answer instead of a fast 503. Connection errors only: a read that timed out
    # is not sent again, because a hung Redis would double the wait, and a slow one may already have run
    # the first (a second push would queue the job twice).
    options.setdefault("retry", redis.retry.Retry(redis.backoff.NoBackoff(), 1 if resend else 0,
                                                  supported_errors=(redis.ConnectionError,)))
    url = url or default_url()
    kind = shape(url)
    if kind == "single":
        return redis.Redis.from_url(url, **options)
    parts = urlsplit(url)
    tls = parts.scheme.startswith("rediss")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if kind == "sentinel":
        username, password, sentinels = _hosts(parts.netloc, 26379)
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise BadRedisURL("REDIS_URL: a redis+sentinel:// URL needs the service name as its path, "
                              "e.g. redis+sentinel://host:26379/mymaster/0")
        service, db = path[0], int(path[1]) if len(path) > 1 else 0
        sentinel_kwargs: dict[str, Any] = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout")
                                           if k in options}
        if query.get("sentinel_password"):
            sentinel_kwargs["password"] = query["sentinel_password"]
        sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, ssl=tls)
        return sentinel.master_for(service, username=username, password=password, db=db, **options)
    username, password, nodes = _hosts(parts.netloc, 6379)
    if not has_hash_tag(settings.KEY_PREFIX):
        raise BadRedisURL(f"Redis Cluster keeps one deployment's keys in one hash slot, so KEY_PREFIX needs a hash "
                          f"tag: KEY_PREFIX={{{settings.KEY_PREFIX}}} instead of {settings.KEY_PREFIX}")
    options.pop("retry", None)  # the cluster client retries (and follows MOVED) on its own
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], username=username, password=password,
                        ssl=tls, **options)


def subscriber(client: RedisClient, key: str) -> tuple[redis.Redis, int]:
    """A client of its own for the pub/sub connection that hears keyspace events of `key`: no read timeout
    (an idle subscriber sends nothing) and no silent reconnect (the listener must see a lost connection,
    because events published meanwhile are gone). Returns (client, db number).

    Keyspace events are published on the node that holds the key: in a cluster, the primary of the key's
    slot; with Sentinel, the current primary (asked again each time this is called)."""
    quiet: dict[str, Any] = dict(socket_timeout=None, socket_keepalive=True,
                                 retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)
        kwargs = dict(client.nodes_manager.connection_kwargs)
        for drop in ("host", "port", "retry", "socket_timeout", "socket_keepalive"):
            kwargs.pop(drop, None)
        return redis.Redis(host=node.host, port=node.port, **kwargs, **quiet), 0
    pool = client.connection_pool
    if issubclass(pool.connection_class, redis.UnixDomainSocketConnection):
        del quiet["socket_keepalive"]  # a TCP option: a unix:// connection refuses it
    kwargs = dict(pool.connection_kwargs, **quiet)
    if isinstance(pool, SentinelConnectionPool):
        return redis.Redis(connection_pool=SentinelConnectionPool(
            pool.service_name, pool.sentinel_manager, **kwargs)), kwargs.get("db", 0)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)), \
        kwargs.get("db", 0)


def disconnect(client: RedisClient) -> None:
    """Close every pooled connection of `client` (a blocking pop cut short by a signal leaves one unusable)."""
    if isinstance(client, RedisCluster):
        client.disconnect_connection_pools()
    else:
        client.connection_pool.disconnect()


# Redis' answers that say it cannot do the work now but may later, by the code that starts them (a script's
# error carries the code inside its own text, so the text is searched too), in words a client may see.
_REFUSALS = (
    ("OOM", "full (maxmemory reached)"),
    ("READONLY", "read-only (a replica, e.g. during a failover)"),
    ("MISCONF", "refusing writes (it cannot save its data: MISCONF)"),
    ("NOPERM", "denying a command to our user (NOPERM)"),
    ("LOADING", "loading its data"),
    ("BUSY", "busy (a long script or command is running)"),
    ("UNBLOCKED", "changing role (a blocking wait was cut short)"),
    ("MASTERDOWN", "without its primary (MASTERDOWN)"),
    ("EXECABORT", "refusing a transaction"),
)


def _refusal(exc: BaseException) -> tuple[str, str] | None:
    text, code = str(exc), getattr(exc, "status_code", None)
    for known, words in _REFUSALS:
        if code == known or text.startswith(known) or re.search(rf"\b{known}\b", text):
            return known, words
    return None


def scripts_in_pipelines(client: RedisClient) -> bool:
    """False for Redis Cluster, whose client refuses EVALSHA inside a pipeline: call scripts one by one there."""
    return not isinstance(client, RedisCluster)


def describe_problem(exc: BaseException) -> str:
    """A Redis error in words a client may see: never its text, which names the host, port or user."""
    if isinstance(exc, redis.TimeoutError):
        return f"not answering (no reply within {settings.REDIS_SOCKET_TIMEOUT:g}s)"
    if isinstance(exc, redis.AuthenticationError):
        return "refusing our credentials"
    refusal = _refusal(exc)
    if refusal:
        return refusal[1]
    if isinstance(exc, redis.ConnectionError):
        return "unreachable"
    return "unavailable (it answered with an error)"


def problem_kind(exc: BaseException) -> str:
    """One word for a Redis error in log lines: oom, readonly, misconf, noperm, loading, busy, timeout,
    auth, connection ... or error."""
    if isinstance(exc, redis.TimeoutError):
        return "timeout"
    if isinstance(exc, redis.AuthenticationError):
        return "auth"
    refusal = _refusal(exc)
    if refusal:
        return refusal[0].lower()
    return "connection" if isinstance(exc, (redis.ConnectionError, OSError)) else "error"


def unavailable(exc: redis.RedisError) -> RedisUnavailable:
    """The 503 a request answers when Redis fails it."""
    return RedisUnavailable(f"the queue (Redis) is {describe_problem(exc)}; try again shortly")


def eviction_refusal(client: RedisClient) -> str | None:
    """At start: the one line that refuses a Redis which evicts keys when full (its maxmemory-policy is not
    noeviction: it would drop queued jobs, results and worker heartbeats, and requests would end in 504), or None
    (noeviction, ALLOW_EVICTION=1, or the policy cannot be read: CONFIG refused, which is logged). A Redis that
    cannot be reached raises its redis error: the caller decides whether to wait."""
    if settings.ALLOW_EVICTION:
        return None
    try:
        reply = client.config_get("maxmemory-policy")
    except redis.ResponseError as exc:  # NOPERM, or a managed Redis that renamed or disabled CONFIG
        from imgq.observe.logutil import log
        log("redis.policy_unchecked", level="WARNING", reason="CONFIG GET maxmemory-policy refused",
            problem=problem_kind(exc), note="make sure it is noeviction")
        return None
    policy = reply.get("maxmemory-policy", reply.get(b"maxmemory-policy")) if isinstance(reply, dict) else None
    if isinstance(policy, bytes):
        policy = policy.decode()
    if not isinstance(policy, str) or policy == "noeviction":
        return None
    return (f"Redis' maxmemory-policy is {policy}: when full it would evict queued jobs, results and worker "
            f"heartbeats (requests would end in 504); set it to noeviction (CONFIG SET maxmemory-policy "
            f"noeviction), or set ALLOW_EVICTION=1 to run anyway")


def check_at_start(program: str, wait_s: float, client: RedisClient | None = None) -> None:
    """A server's start: refuse a Redis that evicts (eviction_refusal) with one line on stderr and exit 2. A Redis
    that does not answer within wait_s is no reason to stop: a warning says the policy was not checked (the
    workers check it once Redis answers)."""
    import sys
    import time
    from imgq.observe.logutil import log
    deadline = time.monotonic() + wait_s
    own = client is None
    client = client or connect(socket_timeout=max(wait_s, 1.0))
    try:
        while True:
            try:
                refusal = eviction_refusal(client)
                break
            except redis.RedisError as exc:
                if time.monotonic() >= deadline:
                    log("redis.policy_unchecked", level="WARNING", reason=f"Redis is {describe_problem(exc)}",
                        note="the workers check it once Redis answers")
                    return
                time.sleep(0.2)
    finally:
        if own:
            disconnect(client)  # a forking server's children must not share its socket
    if refusal:
        print(f"{program}: {refusal}", file=sys.stderr)
        sys.stderr.flush()
        raise SystemExit(2)
