"""The worker registry: which workers are alive, what each serves, and so whether the service is ready.

A worker registers itself with its first heartbeat (queue.py's beat script), records its model and runtime
once registered (announce: after its first beat, after Redis comes back, and every REFRESH_S) and deletes
both when it retires (queue.retire, forget). A worker that dies without retiring is reaped by a live peer's
next beat, which also drops its model record, so the hash holds live workers only and reading it writes
nothing.

readiness() is the one answer to "can this service classify now?": /healthz, /readyz, /v2/health/ready and
the protocols' model-ready endpoints all ask it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from imgq.jobs import keys

REFRESH_S = 60  # a lost record (Redis restarted between two beats) is back within this; one HSET a minute


def announce(client: Any, prefix: str, worker_id: str, model_name: str, runtime: str) -> None:
    record = {"model": model_name, "runtime": runtime, "since": round(time.time(), 3)}
    client.hset(keys.worker_models(prefix), worker_id, json.dumps(record))


def forget(client: Any, prefix: str, worker_id: str) -> None:
    client.hdel(keys.worker_models(prefix), worker_id)


def serving(client: Any, prefix: str) -> list[dict[str, Any]]:
    """[{"id", "model", "runtime"}] of every live worker (registered, heartbeat present), sorted by id; model
    None if it has no record yet. Read-only: two round trips whatever the number of workers."""
    members = sorted(m.decode() for m in client.smembers(keys.workers(prefix)))
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.worker_models(prefix))
        for worker_id in members:
            pipe.exists(keys.heartbeat(worker_id, prefix))
        records, *alive = pipe.execute()
    records = {k.decode(): v for k, v in records.items()}
    out = []
    for worker_id, exists in zip(members, alive):
        if not exists:
            continue
        try:
            record = json.loads(records[worker_id])
        except (KeyError, ValueError, TypeError):
            record = {}
        out.append({"id": worker_id, "model": record.get("model"), "runtime": record.get("runtime")})
    return out


@dataclass
class Readiness:
    """What the probes report. `problem` is None when ready; it never quotes Redis' own error text."""

    redis_ok: bool
    workers: list[dict[str, Any]] = field(default_factory=list)
    queue_length: int | None = None
    problem: str | None = None
    redis_error: redis.RedisError | None = field(default=None, repr=False)
    # Why a Redis that answers reads cannot take work ("full (maxmemory reached)", "a read-only replica"), or None
    redis_condition: str | None = None

    @property
    def ready(self) -> bool:
        return self.problem is None

    @property
    def models(self) -> list[str]:
        """The models the live workers say they serve (MODEL=auto picks at each worker's start)."""
        return sorted({w["model"] for w in self.workers if w["model"]})


def redis_condition(client: Any) -> str | None:
    """Why a Redis that answers reads cannot take work, from INFO: full (used_memory at maxmemory, policy
    noeviction: every write but a delete is refused, so new jobs get 503 and workers can neither beat nor
    answer), or a read-only replica. None when neither, or when INFO is refused (a managed Redis may)."""
    try:
        info = client.info()
    except redis.ResponseError:
        return None
    if not isinstance(info, dict) or "used_memory" not in info:
        return None  # a cluster client's per-node answer: not judged here
    maxmemory = int(info.get("maxmemory") or 0)
    if maxmemory and int(info["used_memory"]) >= maxmemory and info.get("maxmemory_policy") == "noeviction":
        return "full (maxmemory reached)"
    if info.get("role") == "slave":
        return "a read-only replica"
    return None


def readiness(client: Any, prefix: str) -> Readiness:
    """Ready = Redis answers, can take work (not full, not a replica) and at least one model worker has a live
    heartbeat. When Redis cannot take work, that is the problem named, whatever the workers' state (a full Redis
    also stops their heartbeats)."""
    try:
        length = client.llen(keys.queue(prefix))
        live = serving(client, prefix)
        condition = redis_condition(client)
    except redis.RedisError as exc:
        from imgq.jobs.connection import describe_problem
        return Readiness(redis_ok=False, problem=f"Redis is {describe_problem(exc)}", redis_error=exc)
    if condition:
        problem: str | None = f"Redis is {condition}: new jobs are refused and model workers cannot write; " \
            "they retry until it can"
    else:
        problem = None if live else "no live model worker"
    return Readiness(redis_ok=True, workers=live, queue_length=length, problem=problem, redis_condition=condition)
